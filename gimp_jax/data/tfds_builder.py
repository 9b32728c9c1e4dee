"""TFDS builder for image-omic cohorts: CLAM `.h5` + expression + labels -> ArrayRecord shards.

`python -m gimp_jax.data.tfds_builder --config=configs/nsclc.py --out=DIR [--manual_dir=M]`
loads the cohort exactly as `cohort.load_cohort(CohortSpec.from_mapping(config.data,
seed=config.seed))` does (same patients, splits, gene list and normalisation fitted on train) and
writes the dataset `image_omic_cohort` into the TFDS data_dir DIR, two configs (layout in
`tfds_source`): `patients` (one record per patient: normalised and raw expression, label, IDs,
split) and `patches` (one record per chunk of `chunk_size` consecutive bag rows: features, coords).
Features are chunked because a 150,000-patch bag is 600 MB: a chunk of 1,024 x 1,024 float32 is
4 MiB, and a pre-training window of L = 6,000 contiguous patches reads 6-7 chunks. Chunks are
stored uncompressed by default (`--compression`). `--features_dtype=float16` halves the size
(config `patches_float16`); float32 is exact.

Inputs come from the config's `data.labels`, `data.features_dir`, `data.expression`; empty or
relative ones are looked up in the TFDS manual folder (`--manual_dir`, default
`DIR/downloads/manual`): `labels.csv`, `features/`, `expression.tsv` (or .csv/.txt/.gz, or a folder
`expression/` of GDC per-sample files).

No TensorFlow: the builder is a `tfds.core.ShardBasedBuilder`, which writes each shard straight
from its generator in order. (`GeneratorBasedBuilder` cannot be used without TensorFlow beyond
1 GB per split: its shuffler spills to temporary files through `tf.io.gfile`.) A shard holds at
most `shard_bytes` of records (TFDS's shard writer keeps a shard's examples until it is written,
so this bounds the build's memory).
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import functools
import os
import sys

from absl import app
from absl import flags
from absl import logging
from array_record.python import array_record_module
from ml_collections import config_flags
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import writer as tfds_writer
from tqdm import tqdm

from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import labels as labels_lib
from gimp_jax.data import expression as expr
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import tfds_source as src
from gimp_jax.errors import DataError

DEFAULT_CHUNK_SIZE = 1024
DEFAULT_SHARD_BYTES = 512 << 20
COMPRESSIONS = ('uncompressed', 'snappy', 'zstd:1', 'zstd:3', 'brotli:6')
_EXPRESSION_NAMES = ('expression.tsv', 'expression.csv', 'expression.txt', 'expression.tsv.gz',
                     'expression.csv.gz', 'expression')


@dataclasses.dataclass
class CohortConfig(tfds.core.BuilderConfig):
  """A config: `kind` 'patients' or 'patches'; `features_dtype` of the patches."""
  kind: str = src.PATIENTS
  features_dtype: str = 'float32'


def _patient_features() -> tfds.features.FeaturesDict:
  text, vector = tfds.features.Text(), tfds.features.Tensor
  return tfds.features.FeaturesDict({
      'index': tfds.features.Scalar(np.int64, doc='position in the cohort'),
      'patient_id': text, 'label': tfds.features.Scalar(np.int64, doc='class index'),
      'split': text, 'expression_id': text,
      'slide_ids': tfds.features.Sequence(text), 'slide_paths': tfds.features.Sequence(text),
      'slide_patches': vector(shape=(None,), dtype=np.int64),
      'num_patches': tfds.features.Scalar(np.int64),
      'genes': vector(shape=(None,), dtype=np.float32, encoding='bytes', doc='normalised [G]'),
      'genes_raw': vector(shape=(None,), dtype=np.float32, encoding='bytes',
                          doc='raw values aligned to the gene list [G]'),
      'chunk_start': tfds.features.Scalar(np.int64, doc='first chunk record in the split'),
      'num_chunks': tfds.features.Scalar(np.int64)})


def _patch_features(dtype: str) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'patient_index': tfds.features.Scalar(np.int64), 'patient_id': tfds.features.Text(),
      'chunk': tfds.features.Scalar(np.int64, doc='chunk k holds bag rows [k C, k C + rows)'),
      'features': tfds.features.Tensor(shape=(None, None), dtype=np.dtype(dtype),
                                       encoding='bytes', doc='[rows, D]'),
      'coords': tfds.features.Tensor(shape=(None, 2), dtype=np.int32, encoding='bytes',
                                     doc='[rows, 2] level-0 (x, y)')})


def resolve_inputs(spec: cohort_lib.CohortSpec, manual_dir: Callable | str | None
                   ) -> cohort_lib.CohortSpec:
  """The spec with empty or relative input paths taken from the manual folder.

  Args:
    spec: the cohort spec.
    manual_dir: the folder, or a function returning it (so it is only asked for when needed).
  """
  names = {'labels': 'labels.csv', 'features_dir': 'features', 'expression': None}
  paths = {}
  for field, default in names.items():
    path = getattr(spec, field)
    if path and os.path.isabs(path):
      paths[field] = path
      continue
    folder = os.fspath(manual_dir() if callable(manual_dir) else manual_dir or '')
    if not folder:
      raise DataError(f'data.{field}: {path!r} is not an absolute path and no manual folder given')
    if path:
      paths[field] = os.path.join(folder, path)
    elif default:
      paths[field] = os.path.join(folder, default)
    else:
      found = [n for n in _EXPRESSION_NAMES if os.path.exists(os.path.join(folder, n))]
      if not found:
        raise DataError(f'{folder}: expression: none of {", ".join(_EXPRESSION_NAMES)} found')
      paths[field] = os.path.join(folder, found[0])
  return dataclasses.replace(spec, **paths)


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> str:
  """The TFDS manual folder, or DataError when it is missing or empty."""
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError as e:
    raise DataError(f'manual_dir: {e}') from e


def raw_expression(spec: cohort_lib.CohortSpec, cohort: cohort_lib.Cohort) -> np.ndarray:
  """[P, G] float32 raw values of the patients' matched samples, aligned to the gene list."""
  source = expr.open_expression(spec.expression, spec.value_column, spec.manifest)
  columns = [p.expression_id for p in cohort.patients]
  table = source.read(sorted(set(columns)))
  values = genes_lib.align_genes(table.genes, table.values, cohort.normalizer.genes,
                                 cohort.normalizer.strip_versions, spec.expression)
  rows = {s: i for i, s in enumerate(table.samples)}
  return values[[rows[c] for c in columns]]


def _split_source(spec: cohort_lib.CohortSpec) -> str:
  """'column' when the labels CSV fixes the splits, else 'seed'."""
  return 'column' if labels_lib.read_labels(spec.labels)[0].split is not None else 'seed'


def _group(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
  """Consecutive items [lo, hi) grouped so each group's size is at most `limit` (or one item)."""
  groups, lo, total = [], 0, 0
  for i, size in enumerate(sizes):
    if i > lo and total + size > limit:
      groups.append((lo, i))
      lo, total = i, 0
    total += size
  if lo < len(sizes):
    groups.append((lo, len(sizes)))
  return groups


class ImageOmicCohort(tfds.core.ShardBasedBuilder):
  """An image-omic cohort (CLAM features, expression, labels) as ArrayRecord shards."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Patients and chunked patches configs.'}
  BUILDER_CONFIGS = [
      CohortConfig(name=src.PATIENTS, kind=src.PATIENTS,
                   description='One record per patient: expression, label, IDs, split.'),
      CohortConfig(name=src.patches_config('float32'), kind='patches',
                   description='Chunks of consecutive float32 patch features and coords.'),
      CohortConfig(name=src.patches_config('float16'), kind='patches', features_dtype='float16',
                   description='Chunks of consecutive float16 patch features and coords.')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the three inputs of a gimp_jax run into the manual folder: `labels.csv`
  (patient_id,slide_id,label[,split]), `features/` (CLAM `<slide_id>.h5` files) and
  `expression.tsv` (Xena-style matrix) or `expression/` (GDC per-sample files); or give their
  absolute paths in the spec (config.data.labels, .features_dir, .expression).
  """

  def __init__(self, *, spec: cohort_lib.CohortSpec | None = None,
               normalizer: genes_lib.GeneNormalizer | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE, features_dtype: str | None = None,
               shard_bytes: int = DEFAULT_SHARD_BYTES, compression: str = 'uncompressed',
               **kwargs):
    """Builds the builder.

    Args:
      spec: the cohort to build (not needed to read a prepared dataset).
      normalizer: a stored gene list and statistics to use instead of fitting them on train.
      chunk_size: C, bag rows per patches record.
      features_dtype: dtype of the stored features, 'float32' or 'float16': the patches config's
        own, or for the `patients` config the patches config it goes with (default float32).
      shard_bytes: largest shard (records are grouped into shards up to this size).
      compression: of the ArrayRecord chunks; patch features barely compress (a few to ~20 %)
        and decompression slows reading, so the default is none.
      **kwargs: `tfds.core.DatasetBuilder` arguments (data_dir, config, version).
    """
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)
    if chunk_size < 1:
      raise DataError(f'chunk_size: {chunk_size} must be >= 1')
    if compression not in COMPRESSIONS:
      raise DataError(f'compression: {compression!r}, expected one of {", ".join(COMPRESSIONS)}')
    self._compression = compression
    self._spec = spec
    self._normalizer = normalizer
    self._chunk_size = int(chunk_size)
    self._shard_bytes = int(shard_bytes)
    config = self.builder_config
    if config.kind != src.PATIENTS and features_dtype not in (None, config.features_dtype):
      raise DataError(f'features_dtype: {features_dtype} but config {config.name} stores '
                      f'{config.features_dtype}')
    self._features_dtype = ((features_dtype or 'float32') if config.kind == src.PATIENTS
                            else config.features_dtype)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    features = (_patient_features() if config.kind == src.PATIENTS
                else _patch_features(config.features_dtype))
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _example_writer(self) -> tfds_writer.ExampleWriter:
    return _ArrayRecordWriter(self._compression)

  def _shard_iterators_per_split(self, dl_manager) -> dict[str, list['_Shard']]:
    """Loads the cohort, records the metadata, and plans the shards of each split."""
    if self._spec is None:
      raise DataError(f'{self.name}: building needs a CohortSpec (spec=...)')
    spec = resolve_inputs(self._spec, functools.partial(_manual_dir, dl_manager))
    cohort = cohort_lib.load_cohort(spec, self._normalizer)
    layout = _Layout.of(cohort, self._chunk_size)
    self.info.metadata.update(self._metadata(spec, cohort, layout))
    if self.builder_config.kind == src.PATIENTS:
      self.info.metadata['normalizer'] = cohort.normalizer.to_dict()
      units, make, cost = self._patient_records(spec, cohort, layout)
    else:
      units, make, cost = self._chunk_records(cohort, layout)
    progress = tqdm(total=sum(map(len, units.values())), desc=self.builder_config.name,
                    unit=' records', mininterval=1.0)
    shards = {}
    for s, us in units.items():
      if us:  # TFDS has no empty splits; a split without patients is simply absent
        groups = _group([cost(*u) for u in us], self._shard_bytes)
        shards[s] = [_Shard(us[lo:hi], make, progress) for lo, hi in groups]
        logging.info('%s/%s: %d records in %d shards', self.builder_config.name, s, len(us),
                     len(groups))
    return shards

  def _metadata(self, spec: cohort_lib.CohortSpec, cohort: cohort_lib.Cohort,
                layout: '_Layout') -> dict:
    """metadata.json of either config (what `tfds_source` checks and needs)."""
    return {
        'format_version': src.FORMAT_VERSION,
        'fingerprint': src.fingerprint([p.patient_id for p in cohort.patients],
                                       list(layout.split), layout.num_patches, self._chunk_size),
        'patches_config': src.patches_config(self._features_dtype),
        'class_names': list(cohort.class_names), 'feature_dim': cohort.feature_dim,
        'num_genes': cohort.num_genes, 'chunk_size': self._chunk_size,
        'features_dtype': self._features_dtype, 'split_source': _split_source(spec),
        'splits': {k: int(v.size) for k, v in cohort.splits.items()},
        'spec': src.spec_record(spec),
        'inputs': {'labels': spec.labels, 'features_dir': spec.features_dir,
                   'expression': spec.expression}}

  def _patient_records(self, spec: cohort_lib.CohortSpec, cohort: cohort_lib.Cohort,
                       layout: '_Layout') -> tuple[dict, Callable, Callable]:
    """(split -> units (i,), unit -> (key, patient record), unit -> bytes)."""
    raw = raw_expression(spec, cohort)

    def make(i: int) -> tuple[str, dict]:
      p = cohort.patients[i]
      return p.patient_id, {
          'index': i, 'patient_id': p.patient_id, 'label': p.label, 'split': layout.split[i],
          'expression_id': p.expression_id, 'slide_ids': list(p.slide_ids),
          'slide_paths': list(p.slide_paths),
          'slide_patches': np.asarray(p.slide_patches, np.int64), 'num_patches': p.num_patches,
          'genes': cohort.genes[i], 'genes_raw': raw[i],
          'chunk_start': int(layout.chunk_start[i]), 'num_chunks': int(layout.num_chunks[i])}

    units = {s: [(int(i),) for i in cohort.split(s)] for s in cohort_lib.SPLITS}
    return units, make, lambda i: 8 * cohort.num_genes + 1024

  def _chunk_records(self, cohort: cohort_lib.Cohort, layout: '_Layout'
                     ) -> tuple[dict, Callable, Callable]:
    """(split -> units (i, k), unit -> (key, chunk record read from the .h5 files), bytes)."""
    dtype, size = self._features_dtype, self._chunk_size

    def make(i: int, k: int) -> tuple[str, dict]:
      p = cohort.patients[i]
      rows = np.arange(k * size, min((k + 1) * size, p.num_patches))
      bag = cohort.bag(i)  # check_finite: a NaN/Inf feature fails the build, naming the file
      return f'{p.patient_id}/{k}', {
          'patient_index': i, 'patient_id': p.patient_id, 'chunk': k,
          'features': bag.features(rows).astype(dtype), 'coords': bag.coords(rows)}

    units = {s: [(int(i), k) for i in cohort.split(s) for k in range(layout.num_chunks[i])]
             for s in cohort_lib.SPLITS}
    row_bytes = cohort.feature_dim * np.dtype(dtype).itemsize + 8
    return units, make, lambda i, k: row_bytes * min(size, layout.num_patches[i] - k * size)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where each patient's records go.

  Attributes:
    split: [P] split name of each patient.
    num_patches: [P] bag sizes N.
    num_chunks: [P] chunk records per patient, ceil(N / C).
    chunk_start: [P] index of the patient's first chunk record in its split (records are
      written in cohort order within a split).
  """
  split: np.ndarray
  num_patches: np.ndarray
  num_chunks: np.ndarray
  chunk_start: np.ndarray

  @classmethod
  def of(cls, cohort: cohort_lib.Cohort, chunk_size: int) -> '_Layout':
    num_patches = cohort.bag_sizes
    num_chunks = -(-num_patches // chunk_size)
    split = np.empty(len(cohort.patients), object)
    chunk_start = np.zeros_like(num_chunks)
    for name in cohort_lib.SPLITS:
      idx = cohort.split(name)  # sorted
      split[idx] = name
      chunk_start[idx] = np.cumsum(num_chunks[idx]) - num_chunks[idx]
    return cls(split, num_patches, num_chunks, chunk_start)


class _ArrayRecordWriter(tfds_writer.ExampleWriter):
  """Writes a shard with one record per ArrayRecord chunk (random access) and `compression`.

  (TFDS's own ArrayRecord writer always uses the library's default compression.)
  """

  def __init__(self, compression: str):
    super().__init__(file_format=tfds.core.FileFormat.ARRAY_RECORD)
    self.options = f'group_size:1,{compression}'

  def write(self, path, examples: Iterable[tuple[str, bytes]]) -> None:
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), self.options)
    for _, serialized in examples:
      writer.write(serialized)
    writer.close()


class _Shard:
  """One shard's example generator: `make(*unit)` -> (key, example) for each unit, in order."""

  def __init__(self, units: list[tuple], make: Callable[..., tuple[str, dict]], progress: tqdm):
    self.units, self.make, self.progress = units, make, progress

  def __call__(self) -> Iterator[tuple[str, dict]]:
    for unit in self.units:
      yield self.make(*unit)
      self.progress.update()
      if self.progress.n >= self.progress.total:
        self.progress.close()


def build(spec: cohort_lib.CohortSpec, data_dir: str, *, manual_dir: str | None = None,
          normalizer: genes_lib.GeneNormalizer | None = None,
          chunk_size: int = DEFAULT_CHUNK_SIZE, features_dtype: str = 'float32',
          shard_bytes: int = DEFAULT_SHARD_BYTES, compression: str = 'uncompressed',
          overwrite: bool = False) -> cohort_lib.Cohort:
  """Builds (or reuses) both configs of a cohort's dataset in `data_dir`, then loads it back.

  The `patients` config is always rebuilt (it is small and records which patches config goes
  with it); an existing patches config is reused unless `overwrite`.

  Args:
    spec: the cohort (`CohortSpec.from_mapping(config.data, seed=config.seed)`).
    data_dir: the TFDS data_dir to write into.
    manual_dir: where empty or relative input paths are looked up (default
      `data_dir/downloads/manual`).
    normalizer: a stored gene list and statistics instead of fitting them on train.
    chunk_size: bag rows per patches record.
    features_dtype: 'float32' (exact) or 'float16'.
    shard_bytes: largest shard.
    compression: ArrayRecord compression of the patches (one of `COMPRESSIONS`).
    overwrite: rebuild an existing patches config.

  Returns:
    The cohort read back from the dataset (which checks that the two configs belong together and
    that the dataset holds `spec`'s settings).
  """
  gen = tfds.download.GenerateMode
  for config in (src.PATIENTS, src.patches_config(features_dtype)):
    builder = ImageOmicCohort(config=config, data_dir=data_dir, spec=spec,
                              normalizer=normalizer, chunk_size=chunk_size,
                              features_dtype=features_dtype, shard_bytes=shard_bytes,
                              compression=compression)
    mode = (gen.FORCE_REDOWNLOAD if overwrite or config == src.PATIENTS
            else gen.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=mode))
    logging.info('%s: prepared in %s', config, builder.data_dir)
  return src.load_cohort_from_tfds(data_dir, spec, normalizer)


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command line's flags (defined only when run as a program)."""
  return {
      'config': config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                                lock_config=True),
      'out': flags.DEFINE_string('out', None, 'TFDS data_dir to write (default: '
                                 'config.data.tfds_dir).'),
      'manual_dir': flags.DEFINE_string('manual_dir', None, 'Folder holding the inputs named by '
                                        'empty or relative config paths (default: '
                                        'OUT/downloads/manual).'),
      'chunk_size': flags.DEFINE_integer('chunk_size', DEFAULT_CHUNK_SIZE, 'Bag rows per record.'),
      'features_dtype': flags.DEFINE_enum('features_dtype', 'float32', ['float32', 'float16'],
                                          'Stored dtype of the patch features.'),
      'shard_mb': flags.DEFINE_integer('shard_mb', DEFAULT_SHARD_BYTES >> 20,
                                       'Largest shard in MiB.'),
      'compression': flags.DEFINE_enum('compression', 'uncompressed', list(COMPRESSIONS),
                                       'ArrayRecord compression.'),
      'normalizer': flags.DEFINE_string('normalizer', None, 'Stored gene normaliser (.npz/.json) '
                                        'to use instead of fitting one on the training split.'),
      'overwrite': flags.DEFINE_bool('overwrite', False, 'Rebuild an existing patches config.')}


def main(argv: Sequence[str], args: dict[str, flags.FlagHolder]) -> None:
  """Command line: builds the dataset and prints where it is and its split sizes."""
  del argv
  config = args['config'].value
  out = args['out'].value or config.data.get('tfds_dir', '')
  try:
    if not out:
      raise DataError('--out: required (or set config.data.tfds_dir)')
    spec = cohort_lib.CohortSpec.from_mapping(config.data, seed=config.seed)
    path = args['normalizer'].value
    cohort = build(spec, out, manual_dir=args['manual_dir'].value,
                   normalizer=genes_lib.GeneNormalizer.load(path) if path else None,
                   chunk_size=args['chunk_size'].value,
                   features_dtype=args['features_dtype'].value,
                   shard_bytes=args['shard_mb'].value << 20,
                   compression=args['compression'].value, overwrite=args['overwrite'].value)
  except DataError as e:
    print(f'gimp_jax: error: {e}', file=sys.stderr)
    sys.exit(2)
  sizes = {k: int(v.size) for k, v in cohort.splits.items()}
  print(f'{out}: {src.NAME} ({len(cohort.patients)} patients, splits {sizes}); train with '
        f'--config.data.source=tfds --config.data.tfds_dir={out}')


if __name__ == '__main__':
  _ARGS = _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(lambda argv: main(argv, _ARGS))
