"""Reads a cohort written by `tfds_builder` back without TensorFlow, through `tfds.data_source`.

The dataset `image_omic_cohort` has two configs in `data_dir` (see `tfds_builder`):
- `patients`: one record per patient, TFDS splits train/val/test, in cohort order within a split:
  {'index': position in the cohort, 'patient_id', 'label', 'split', 'expression_id', 'slide_ids',
   'slide_paths' (the `.h5` files read at build time, provenance only), 'slide_patches',
   'num_patches', 'genes': [G] float32 normalised, 'genes_raw': [G] float32 aligned raw values,
   'chunk_start', 'num_chunks'}.
- `patches` (or `patches_float16`): one record per chunk of at most `chunk_size` consecutive rows
  of a patient's bag, same splits: {'patient_index', 'patient_id', 'chunk', 'features':
  [rows, D], 'coords': [rows, 2] int32}; patient p's chunks are records
  [chunk_start, chunk_start + num_chunks) of its split, chunk k holding bag rows [k C, k C + rows).

`load_cohort_from_tfds` returns a `Cohort` with the same patients, order, splits, genes and
normaliser as `cohort.load_cohort` on the inputs the dataset was built from, whose bags are read
from the chunk records (`RecordSource`, the TFDS backend of `source.PatientSource`). The batch
functions of `pipeline` therefore yield identical batches from either source.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import splits as splits_lib
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import source
from gimp_jax.errors import DataError

NAME = 'image_omic_cohort'
PATIENTS = 'patients'
FORMAT_VERSION = 1
# CohortSpec fields that change what the dataset holds (the input paths do not).
CONTENT_FIELDS = ('feature_dim', 'class_names', 'seed', 'split_fractions', 'num_folds', 'fold',
                  'drop_incomplete', 'num_genes', 'strip_gene_versions', 'log_transform',
                  'std_floor', 'value_column', 'preferred_sample_types')
_SPLIT_FIELDS = ('seed', 'split_fractions', 'num_folds', 'fold')
_BUILD = 'rebuild it with `python -m gimp_jax.data.tfds_builder --config=... --out=DIR`'


def patches_config(features_dtype: str) -> str:
  """Name of the patches config storing features as `features_dtype` ('float32' or 'float16')."""
  if features_dtype not in ('float32', 'float16'):
    raise DataError(f'features_dtype: {features_dtype!r}, expected float32 or float16')
  return 'patches' if features_dtype == 'float32' else 'patches_float16'


def spec_record(spec: cohort_lib.CohortSpec) -> dict:
  """The content fields of a spec as JSON values (stored in, and compared with, the metadata)."""
  return json.loads(json.dumps({k: getattr(spec, k) for k in CONTENT_FIELDS}))


def fingerprint(patient_ids: Sequence[str], splits: Sequence[str], num_patches: Sequence[int],
                chunk_size: int) -> str:
  """sha256 of what ties the two configs together: patients, their splits, sizes and chunking."""
  text = json.dumps([list(patient_ids), list(splits), [int(n) for n in num_patches],
                     int(chunk_size)])
  return hashlib.sha256(text.encode()).hexdigest()


def _text(x) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _sources(data_dir: str, builder_config: str) -> tuple[dict, Mapping, str]:
  """(split -> `tfds.data_source` of `NAME/builder_config` (a TFDS builder config: PATIENTS or a
  patches config), its metadata, its folder) for messages."""
  where = os.path.join(data_dir, NAME, builder_config)
  missing = f'{where}: no prepared TFDS dataset; {_BUILD}'
  try:
    sources = tfds.data_source(f'{NAME}/{builder_config}', data_dir=data_dir, download=False)
  except (AssertionError, FileNotFoundError, ValueError) as e:  # DatasetNotFoundError, ...
    raise DataError(missing) from e
  if not sources:  # a registered builder without prepared files gives no splits
    raise DataError(missing)
  info = next(iter(sources.values())).dataset_info
  where = os.fspath(info.data_dir)
  meta = dict(info.metadata or {})
  if meta.get('format_version') != FORMAT_VERSION:
    raise DataError(f'{where}: metadata.json: format_version {meta.get("format_version")!r}, '
                    f'expected {FORMAT_VERSION}; {_BUILD}')
  return sources, meta, where


def check_spec(meta: Mapping, spec: cohort_lib.CohortSpec, where: str) -> None:
  """Raises DataError listing every content field where `spec` differs from the built dataset."""
  built, wanted = meta['spec'], spec_record(spec)
  skip = {'class_names', 'feature_dim'}
  if meta['split_source'] == 'column':
    skip.update(_SPLIT_FIELDS)  # the labels CSV's split column fixed the splits
  problems = [f'{k}: built with {built[k]!r}, the config has {wanted[k]!r}'
              for k in CONTENT_FIELDS if k not in skip and built.get(k) != wanted[k]]
  if spec.class_names and list(spec.class_names) != meta['class_names']:
    problems.append(f'class_names: the dataset has {meta["class_names"]}, the config has '
                    f'{list(spec.class_names)}')
  if spec.feature_dim is not None and spec.feature_dim != meta['feature_dim']:
    problems.append(f'feature_dim: the dataset has {meta["feature_dim"]}, the config has '
                    f'{spec.feature_dim}')
  if problems:
    raise DataError('\n'.join(f'{where}: metadata.json: spec field {p}; {_BUILD}'
                              for p in problems))


def _same_normalizer(a: genes_lib.GeneNormalizer, b: genes_lib.GeneNormalizer) -> bool:
  return (a.genes == b.genes and np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)
          and (a.log_transform, a.strip_versions, a.std_floor)
          == (b.log_transform, b.strip_versions, b.std_floor))


@dataclasses.dataclass(frozen=True)
class PatchChunks:
  """Where each patient's chunk records are.

  Attributes:
    where: the patches config folder (for messages).
    sources: split -> `tfds.data_source` of chunk records.
    split: [P] split name of each patient.
    chunk_start: [P] index of each patient's first chunk record in its split.
    num_chunks: [P] chunk records per patient.
    chunk_size: C, bag rows per chunk (the last chunk of a bag may hold fewer).
  """
  where: str
  sources: Mapping[str, Sequence]
  split: tuple[str, ...]
  chunk_start: np.ndarray
  num_chunks: np.ndarray
  chunk_size: int


class RecordSource(source.PatientSource):
  """The TFDS backend of a `source.PatientSource`: patient p's segments are its chunk records."""

  def __init__(self, chunks: PatchChunks, patients: Sequence[cohort_lib.Patient],
               feature_dim: int, check_finite: bool = True):
    """Builds the source (nothing is read until asked)."""
    self.chunks = chunks
    self.patient_ids = tuple(p.patient_id for p in patients)
    self.num_patches = np.asarray([p.num_patches for p in patients], np.int64)
    self.feature_dim = int(feature_dim)
    self.check_finite = check_finite

  def __len__(self) -> int:
    return len(self.patient_ids)

  def segment_sizes(self, index: int) -> np.ndarray:
    n, size = int(self.num_patches[index]), self.chunks.chunk_size
    return np.minimum(size, n - size * np.arange(int(self.chunks.num_chunks[index]), dtype=np.int64))

  def where(self, index: int, field: str) -> str:
    return f'{self.chunks.where}: patient {self.patient_ids[index]}: {field}'

  def _read(self, index: int, k: int) -> dict:
    """Chunk record k of patient `index`'s bag, checked against the patient."""
    c = self.chunks
    try:
      r = c.sources[c.split[index]][int(c.chunk_start[index]) + k]
    except Exception as e:  # array_record raises assorted errors on truncated/corrupt shards
      raise DataError(f'{self.where(index, "chunks")}: cannot read records ({e})') from e
    rows = min(c.chunk_size, int(self.num_patches[index]) - k * c.chunk_size)
    if (int(r['patient_index']) != index or int(r['chunk']) != k
        or r['features'].shape != (rows, self.feature_dim) or r['coords'].shape != (rows, 2)):
      raise DataError(f'{self.where(index, "chunk")} {k}: record of patient {r["patient_index"]} '
                      f'chunk {r["chunk"]} with features {r["features"].shape}, expected patient '
                      f'{index} chunk {k} with ({rows}, {self.feature_dim}); {_BUILD}')
    if self.check_finite and not np.isfinite(r['features']).all():
      raise DataError(f'{self.where(index, "features")}: chunk {k} contains NaN/Inf')
    return r

  def read_rows(self, index: int, segment: int, field: str, rows: np.ndarray) -> np.ndarray:
    return self._read(index, segment)[field][rows]

  def read_segment_into(self, index: int, segment: int, features_out: np.ndarray,
                        coords_out: np.ndarray) -> None:
    r = self._read(index, segment)
    features_out[:] = r['features']
    coords_out[:] = r['coords']


def _patient_records(sources: Mapping, where: str) -> list[dict]:
  """Every patient record, sorted by cohort index (which must be 0..P-1)."""
  records = []
  for split, src in sources.items():
    for r in src.__getitems__(list(range(len(src)))):
      if _text(r['split']) != split:
        raise DataError(f'{where}: split {split}: patient {_text(r["patient_id"])}: split field '
                        f'says {_text(r["split"])}')
      records.append(r)
  records.sort(key=lambda r: int(r['index']))
  if [int(r['index']) for r in records] != list(range(len(records))):
    raise DataError(f'{where}: index: patient indices are not 0..{len(records) - 1}; {_BUILD}')
  return records


def load_cohort_from_tfds(data_dir: str, spec: cohort_lib.CohortSpec | None = None,
                          normalizer: genes_lib.GeneNormalizer | None = None) -> cohort_lib.Cohort:
  """Loads a cohort prepared by `tfds_builder` (patient records now, chunks lazily).

  Args:
    data_dir: the TFDS data_dir (`config.data.tfds_dir`), local or a bucket path.
    spec: the run's `CohortSpec`; its content fields (seed, split, gene settings, feature_dim,
      ...) must match those the dataset was built with. None skips the check.
    normalizer: a stored gene list and statistics (resume, fine-tuning). None or the dataset's
      own: the stored normalised genes; same gene list, other statistics: re-normalised from the
      stored raw values; another gene list: DataError.

  Returns:
    The cohort, patient order, splits, genes and normaliser identical to
    `cohort.load_cohort(spec, normalizer)` on the dataset's inputs.

  Raises:
    DataError: dataset missing, built with other settings, or inconsistent.
  """
  if not data_dir:
    raise DataError('data.tfds_dir: empty; set it to the data_dir the dataset was built into')
  patient_sources, meta, where = _sources(data_dir, PATIENTS)
  chunk_sources, chunk_meta, chunk_where = _sources(data_dir, meta['patches_config'])
  if chunk_meta.get('fingerprint') != meta['fingerprint']:
    raise DataError(f'{chunk_where}: metadata.json: fingerprint differs from {where} (the two '
                    f'configs come from different builds); {_BUILD}')
  if spec is not None:
    check_spec(meta, spec, where)
  records = _patient_records(patient_sources, where)
  patients = tuple(cohort_lib.Patient(
      _text(r['patient_id']), int(r['label']), tuple(_text(s) for s in r['slide_ids']),
      tuple(_text(s) for s in r['slide_paths']), tuple(int(n) for n in r['slide_patches']),
      _text(r['expression_id'])) for r in records)
  split = tuple(_text(r['split']) for r in records)
  if fingerprint([p.patient_id for p in patients], split, [p.num_patches for p in patients],
                 meta['chunk_size']) != meta['fingerprint']:
    raise DataError(f'{where}: records do not match metadata.json (fingerprint); {_BUILD}')
  stored = genes_lib.GeneNormalizer.from_dict(meta['normalizer'], f'{where}: metadata.json')
  if normalizer is None or _same_normalizer(normalizer, stored):
    genes, normalizer = np.stack([r['genes'] for r in records]).astype(np.float32), stored
  elif normalizer.genes == stored.genes:
    genes = normalizer.transform(np.stack([r['genes_raw'] for r in records]), where)
  else:
    raise DataError(f'{where}: genes: the given gene list ({normalizer.num_genes} genes) differs '
                    f'from the dataset\'s ({stored.num_genes}); rebuild with '
                    '`python -m gimp_jax.data.tfds_builder --normalizer=...`')
  chunks = PatchChunks(chunk_where, chunk_sources, split,
                       np.asarray([int(r['chunk_start']) for r in records], np.int64),
                       np.asarray([int(r['num_chunks']) for r in records], np.int64),
                       int(meta['chunk_size']))
  return cohort_lib.Cohort(patients, tuple(meta['class_names']),
                           splits_lib.from_column(split), genes, normalizer,
                           int(meta['feature_dim']),
                           RecordSource(chunks, patients, int(meta['feature_dim'])))
