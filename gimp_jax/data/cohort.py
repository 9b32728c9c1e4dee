"""A cohort: patients with slides, an expression vector and a label, split into train/val/test.

Inputs: the labels CSV (`labels.py`: several rows per patient = several slides, concatenated in
row order), a folder of CLAM `<slide_id>.h5` files, and an expression matrix or GDC folder
(`expression.py`). For `task="survival"` each case's label is its time bin, fitted on the
training split (`survival.py`).

Splits: the `split` column (train/val/test) when present; a `splits_<fold>.csv` file of
`splits_dir` (MCAT's); otherwise a seeded patient-level stratified split or k folds (`splits.py`;
survival cases are stratified by censorship). The gene list and the normalisation are fitted on the
training split only (`genes.py`), or taken from a stored `GeneNormalizer`.

Every problem is one line naming the file, the patient and the field. `load_cohort` raises all of
them at once as one `DataError`; `scan_cohort` returns them after reading every feature file in
full (`gimp_jax.preflight`).
With `drop_incomplete`, patients with problems of their own (a missing modality, a broken slide
file, NaN in their expression) are dropped with a warning instead.

With `allow_missing` (off by default), a patient without expression (no matching column) and a
patient with an empty label are data: the first gets a NaN expression row, the second label -1;
unlabelled patients join the training split (they can only serve pre-training) and the automatic
split stratifies the labelled ones. `gimp_jax.train.partial` says which stage uses whom.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import os

from absl import logging
import numpy as np

from gimp_jax.data import clam
from gimp_jax.data import expression as expr
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import labels as labels_lib
from gimp_jax.data import source
from gimp_jax.data import splits as splits_lib
from gimp_jax.data import survival
from gimp_jax.errors import DataError

SPLITS = splits_lib.SPLITS
_SHOW = 5


@dataclasses.dataclass(frozen=True)
class CohortSpec:
  """Where a cohort's inputs are and how to read them (mirrors `config.data`).

  Attributes:
    labels: the labels CSV.
    features_dir: folder of `<slide_id>.h5` CLAM feature files.
    expression: expression matrix file or folder of GDC per-sample files.
    feature_dim: expected feature width D (None: any, the same for all slides).
    class_names: label strings in class-index order; empty = sorted unique labels.
    seed: seed of the automatic split.
    split_fractions: train/val/test fractions of the automatic stratified split.
    num_folds: k > 1 switches the automatic split to k folds; `fold` is the test fold.
    fold: test fold index in [0, k) (-1, "every fold" for the fold driver, reads fold 0).
    splits_dir: folder of `splits_<fold>.csv` files (columns train, val[, test] of case IDs).
    task: "classification" or "survival".
    num_bins: survival time bins (k of NLL-surv).
    drop_incomplete: drop patients with problems of their own instead of failing.
    allow_missing: keep patients without expression (NaN row) and with an empty label (-1); with
      a stored gene list and no `expression` at all, every patient is slide-only.
    listed_only: the labels CSV names the patients wanted from a shared `features_dir`: its other
      slide files are ignored (their number logged) instead of refused (prediction).
    num_genes: length G of the gene list fitted on the training table (0: all genes; fewer: the
      most variable on the training split; more: padded with constant genes).
    strip_gene_versions: match genes without Ensembl version suffixes.
    log_transform: apply log2(x + 1) before standardising (off for tables already in log2).
    std_floor: per-gene standard deviations below this count as zero (the gene is only centred).
    value_column: per-sample files: 0-based column index or header name (None: see expression.py).
    manifest: per-sample files: CSV/TSV mapping file names to sample IDs.
    preferred_sample_types: TCGA sample type codes accepted when matching by barcode prefix.
    compute_dtype: the model's compute dtype: features must be finite once cast to it.
  """
  labels: str
  features_dir: str
  expression: str
  feature_dim: int | None = 1024
  class_names: tuple[str, ...] = ()
  seed: int = 0
  split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
  num_folds: int = 0
  fold: int = 0
  splits_dir: str = ''
  task: str = 'classification'
  num_bins: int = 4
  drop_incomplete: bool = False
  allow_missing: bool = False
  num_genes: int = 0
  strip_gene_versions: bool = True
  log_transform: bool = True
  std_floor: float = 1e-6
  value_column: int | str | None = None
  manifest: str | None = None
  preferred_sample_types: tuple[str, ...] | None = ('01',)
  compute_dtype: str = 'float32'
  listed_only: bool = False

  @classmethod
  def from_mapping(cls, m: Mapping, **overrides) -> 'CohortSpec':
    """Builds a spec from a dict or ConfigDict (e.g. `config.data`, seed=config.seed).

    Keys that are not fields (e.g. `source`, `bucket_sizes`) are ignored.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: m[k] for k in m if k in names}
    kw.update(overrides)
    for k in ('class_names', 'split_fractions', 'preferred_sample_types'):
      if kw.get(k) is not None:
        kw[k] = tuple(kw[k])
    return cls(**kw)

  @classmethod
  def from_config(cls, config: Mapping) -> 'CohortSpec':
    """The spec of a run's config: `config.data` with its seed, task and survival bins."""
    survival = config.get('survival') or {}
    return cls.from_mapping(config.data, seed=config.seed,
                            compute_dtype=config.get('compute_dtype', 'float32'),
                            task=config.get('task', 'classification'),
                            num_bins=survival.get('num_bins', 4))


@dataclasses.dataclass(frozen=True)
class Patient:
  """A patient of a loaded cohort.

  Attributes:
    patient_id: ID from the labels CSV.
    label: class index (-1: unlabelled, `allow_missing`).
    slide_ids: the slides, in bag order.
    slide_paths: their `.h5` files.
    slide_patches: their patch counts.
    expression_id: the matched expression sample/column ('' when it has none, `allow_missing`).
  """
  patient_id: str
  label: int
  slide_ids: tuple[str, ...]
  slide_paths: tuple[str, ...]
  slide_patches: tuple[int, ...]
  expression_id: str

  @property
  def num_patches(self) -> int:
    return int(sum(self.slide_patches))


@dataclasses.dataclass(frozen=True)
class Cohort:
  """Patients, their normalised expression, and the splits.

  Attributes:
    patients: [P] patients.
    class_names: [C] label strings, index = class.
    splits: 'train'/'val'/'test' -> sorted int64 patient indices (disjoint).
    genes: [P, G] float32 normalised expression (row p = patients[p]; NaN without expression).
    normalizer: the gene list and the statistics (fitted on train, or the stored ones).
    feature_dim: D.
    bags: where the bags are read from, `bags[p]` the lazy bag of patients[p]: the slides' CLAM
      `.h5` files (`clam.H5Source`, the default) or the chunk records of a prepared TFDS dataset
      (`tfds_source.RecordSource`).
    times: [P] float32 follow-up times (survival cohorts; None for classification).
    censorship: [P] int32, 1 = censored (survival cohorts; None for classification).
  """
  patients: tuple[Patient, ...]
  class_names: tuple[str, ...]
  splits: dict[str, np.ndarray]
  genes: np.ndarray
  normalizer: genes_lib.GeneNormalizer
  feature_dim: int
  bags: source.PatientSource = dataclasses.field(default=None, compare=False, repr=False)
  times: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
  censorship: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  def __post_init__(self):
    if self.bags is None:
      object.__setattr__(self, 'bags', clam.H5Source([p.slide_paths for p in self.patients],
                                                     [p.slide_patches for p in self.patients],
                                                     self.feature_dim))

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def task(self) -> str:
    return 'classification' if self.times is None else 'survival'

  @property
  def num_genes(self) -> int:
    return self.genes.shape[1]

  @property
  def gene_names(self) -> tuple[str, ...]:
    """[G] the gene list the model is built on: symbols where known, else IDs."""
    return self.normalizer.names

  @property
  def labels(self) -> np.ndarray:
    """[P] int32 class indices."""
    return np.asarray([p.label for p in self.patients], np.int32)

  @property
  def bag_sizes(self) -> np.ndarray:
    """[P] int64 patches per patient (all of its slides)."""
    return np.asarray([p.num_patches for p in self.patients], np.int64)

  def split(self, name: str | np.ndarray) -> np.ndarray:
    """Patient indices of a split ('train', 'val', 'test'), or of all patients ('all'); an index
    array (a stage's own selection, `train.partial`) is returned as is."""
    if isinstance(name, np.ndarray):
      return name
    if name == 'all':
      return np.arange(len(self.patients))
    if name not in self.splits:
      raise DataError(f'split {name!r}: expected one of {SPLITS} or all')
    return self.splits[name]

  def bag(self, index: int) -> source.Bag:
    """The lazy bag of patient `index` (nothing is read until asked)."""
    return self.bags[index]


def _slides(spec: CohortSpec, by_patient: dict[str, list[labels_lib.LabelRow]], scan: bool
            ) -> tuple[dict[str, list[clam.SlideInfo]], dict[str, list[str]], list[str]]:
  """Inspects (or fully checks) every slide: (patient -> infos, patient -> problems, global)."""
  if not os.path.isdir(spec.features_dir):
    return {}, {}, [f'{spec.features_dir}: features_dir: no such folder']
  infos: dict[str, list[clam.SlideInfo]] = {}
  problems: dict[str, list[str]] = {}
  with_ext = [r.slide_id for rows in by_patient.values() for r in rows
              if r.slide_id.endswith('.h5') and os.path.isfile(os.path.join(spec.features_dir,
                                                                            r.slide_id))]
  if with_ext:  # one line for the cause instead of one per slide
    return {}, {}, [f'{spec.labels}: slide_id: {len(with_ext)} slide ID(s) end in .h5 (first: '
                    f'{", ".join(with_ext[:_SHOW])}); write them without the extension']
  for pid, rows in by_patient.items():
    for r in rows:
      path = clam.slide_path(spec.features_dir, r.slide_id)
      where = f'{path}: patient {pid}, slide {r.slide_id}: '
      if not os.path.isfile(path):
        problems.setdefault(pid, []).append(where + 'feature file missing (no image modality)')
        continue
      found = clam.check_bag(path, spec.feature_dim, spec.compute_dtype) if scan else []
      if not found:
        try:
          infos.setdefault(pid, []).append(clam.inspect_slide(path, spec.feature_dim))
        except DataError as e:
          found = str(e).split('\n')
      problems.setdefault(pid, []).extend(where + p.replace(f'{path}: ', '', 1) for p in found)
  problems = {k: v for k, v in problems.items() if v}
  labelled = {r.slide_id for rows in by_patient.values() for r in rows}
  unlabelled = sorted(n[:-3] for n in os.listdir(spec.features_dir)
                      if n.endswith('.h5') and n[:-3] not in labelled)
  extra = []
  if unlabelled:
    msg = (f'{spec.features_dir}: {len(unlabelled)} slide file(s) have no row in {spec.labels} '
           f'(first: {", ".join(unlabelled[:_SHOW])})')
    if spec.listed_only:
      logging.info('%s: ignored, only the %d listed patient(s) are used', msg, len(by_patient))
    elif spec.drop_incomplete:
      logging.warning('%s; ignored', msg)
    else:
      extra.append(msg)
  return infos, problems, extra


def _expression(spec: CohortSpec, by_patient: dict[str, list[labels_lib.LabelRow]],
                gene_list: Sequence[str] | None, strip: bool, log: bool
                ) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, str],
                           dict[str, list[str]], list[str], tuple[str, ...]]:
  """Matches and reads expression (`log`: values must be >= 0 for log2(x + 1)).

  Returns:
    (patient -> raw values [G] aligned to `gene_list` (default: all the table's genes), the gene
    IDs of those values, patient -> column, patient -> problems, global problems, the genes'
    symbols [G] when the table has them (STAR's gene_name) else ()).
  """
  if not spec.expression and spec.allow_missing and gene_list is not None:
    return {}, tuple(gene_list), {}, {}, [], ()  # no table: every patient is slide-only
  try:
    source = expr.open_expression(spec.expression, spec.value_column, spec.manifest)
  except DataError as e:
    return {}, (), {}, {}, [str(e)], ()
  explicit = {pid: rows[0].expression_id for pid, rows in by_patient.items()
              if rows[0].expression_id}
  matched, unmatched = expr.match_samples(list(by_patient), source.sample_ids, explicit=explicit,
                                          preferred_types=spec.preferred_sample_types)
  if not matched and isinstance(source, expr.MatrixSource) and _transposed(source, by_patient):
    return {}, (), {}, {}, [f'{spec.expression}: the matrix looks transposed: patient IDs are in '
                            'its first column; expected one row per gene and one column per '
                            'sample (first column the gene IDs)'], ()
  problems = {pid: [f'{spec.expression}: patient {pid}: column: {msg} (no expression modality)']
              for pid, msg in unmatched.items()}
  users: dict[str, list[str]] = {}
  for pid, s in matched.items():
    users.setdefault(s, []).append(pid)
  shared = [f'{spec.expression}: column {s}: matched by several patients ({", ".join(p)})'
            for s, p in users.items() if len(p) > 1]
  if shared:
    return {}, (), matched, problems, shared, ()
  try:
    table = source.read(list(users))
    genes = tuple(gene_list or genes_lib.gene_keys(table.genes, strip))
    values = genes_lib.align_genes(table.genes, table.values, genes, strip, spec.expression)
  except DataError as e:
    return {}, (), matched, problems, [str(e)], ()
  symbol = dict(zip(genes_lib.gene_keys(table.genes, strip), table.symbols))
  symbols = tuple(symbol.get(g, '') for g in genes) if symbol else ()
  rows = {s: i for i, s in enumerate(table.samples)}
  out = {}
  for pid, s in matched.items():
    v = values[rows[s]]
    bad = np.flatnonzero(~np.isfinite(v))
    if s in table.bad:
      where, cells = table.bad[s]
      problems.setdefault(pid, []).append(
          f'{where}: patient {pid}: values: column {s}: {expr.describe_bad_cells(cells)}')
    elif not bad.size and log and (v < 0).any():
      neg = np.flatnonzero(v < 0)
      problems.setdefault(pid, []).append(
          f'{spec.expression}: patient {pid}: values: column {s} has {neg.size} negative values '
          f'(first gene {genes[neg[0]]}: {v[neg[0]]:g}), so log2(x + 1) is undefined; if the '
          'table is already log-transformed set data.log_transform=False')
    elif bad.size:
      problems.setdefault(pid, []).append(
          f'{spec.expression}: patient {pid}: values: column {s} has {bad.size} NaN/Inf values '
          f'(first gene {genes[bad[0]]})')
    else:
      out[pid] = v
  return out, genes, matched, problems, [], symbols


def _transposed(source: expr.MatrixSource, by_patient: Mapping[str, list[labels_lib.LabelRow]]) -> bool:
  """Whether the patients are found in the matrix's first column (the genes' place)."""
  try:
    rows = source.gene_ids()
  except DataError:
    return False
  return bool(expr.match_samples(list(by_patient), rows, preferred_types=None)[0])


def _normalise(spec: CohortSpec, raw: np.ndarray, genes: tuple[str, ...], train: np.ndarray,
               normalizer: genes_lib.GeneNormalizer | None, symbols: tuple[str, ...] = ()
               ) -> tuple[np.ndarray, genes_lib.GeneNormalizer]:
  """Fits the gene list (with the `symbols` of `genes`, or ()) and statistics on `train` rows
  unless given; -> ([P, G], normaliser). Rows of NaN (no expression) stay NaN and take no part in
  the fit."""
  present = np.isfinite(raw).all(1)
  train = train[present[train]]
  if normalizer is None:
    if train.size == 0:
      raise DataError(f'{spec.labels}: split: no training patients to fit the normalisation on')
    scores = genes_lib.log_variance(raw[train], spec.log_transform, spec.expression)
    selected = genes_lib.select_genes(genes, spec.num_genes, scores)
    raw = genes_lib.align_genes(genes, raw, selected, False, spec.expression)
    symbol = dict(zip(genes, symbols))
    normalizer = genes_lib.GeneNormalizer.fit(
        raw[train], selected, log_transform=spec.log_transform,
        strip_versions=spec.strip_gene_versions, std_floor=spec.std_floor,
        symbols=tuple(symbol.get(g, '') for g in selected) if symbol else (),
        source=spec.expression)
  out = np.full((raw.shape[0], normalizer.num_genes), np.nan, np.float32)
  out[present] = normalizer.transform(raw[present], spec.expression)
  return out, normalizer


def _assemble(spec: CohortSpec, normalizer: genes_lib.GeneNormalizer | None, scan: bool
              ) -> tuple[Cohort | None, list[str]]:
  """Builds the cohort; returns (cohort or None, every problem found)."""
  try:
    rows = labels_lib.read_labels(spec.labels, spec.task, spec.allow_missing)
  except DataError as e:
    return None, str(e).split('\n')
  by_patient, class_names, problems = labels_lib.group(rows, spec.labels, spec.class_names)
  if normalizer is not None and spec.num_genes and spec.num_genes != normalizer.num_genes:
    problems.append(f'{spec.expression}: genes: the stored gene list has {normalizer.num_genes} '
                    f'genes but num_genes is {spec.num_genes}')
  infos, patient_problems, extra = _slides(spec, by_patient, scan)
  problems += extra
  strip = normalizer.strip_versions if normalizer else spec.strip_gene_versions
  values, genes, matched, expr_problems, extra, symbols = _expression(
      spec, by_patient, normalizer.genes if normalizer else None, strip,
      normalizer.log_transform if normalizer else spec.log_transform)
  problems += extra
  if spec.allow_missing:  # a patient without expression is a slide-only patient, not a problem
    expr_problems = {pid: ps for pid, ps in expr_problems.items()
                     if not all(p.endswith('(no expression modality)') for p in ps)}
  for pid, ps in expr_problems.items():
    patient_problems.setdefault(pid, []).extend(ps)
  dims = {i.feature_dim for v in infos.values() for i in v}
  if len(dims) > 1:
    problems.append(f'{spec.features_dir}: features: slides differ in width ({sorted(dims)}); '
                    'set feature_dim')
  if problems or (patient_problems and not spec.drop_incomplete):
    return None, problems + [p for ps in patient_problems.values() for p in ps]
  if patient_problems:
    logging.warning('drop_incomplete: dropping %d patient(s):\n%s', len(patient_problems),
                    '\n'.join(p for ps in patient_problems.values() for p in ps))
  kept = [pid for pid in by_patient if pid not in patient_problems]
  if not kept:
    return None, [f'{spec.labels}: no patient left with both modalities']

  def label_of(pid: str) -> int:
    """Class index; -1 unlabelled (allow_missing); 0 for survival (its time bin is set below)."""
    label = by_patient[pid][0].label
    if not class_names:
      return 0
    return class_names.index(label) if label else -1

  patients = tuple(Patient(
      pid, label_of(pid),
      tuple(r.slide_id for r in by_patient[pid]), tuple(i.path for i in infos[pid]),
      tuple(i.num_patches for i in infos[pid]), matched[pid] if pid in values else '')
      for pid in kept)
  missing = np.full(len(genes), np.nan, np.float32)
  times = censorship = None
  if spec.task == 'survival':
    times = np.asarray([by_patient[pid][0].time for pid in kept], np.float32)
    censorship = np.asarray([by_patient[pid][0].censorship for pid in kept], np.int32)
  try:
    # Drawn over every listed patient, then the dropped ones left out: dropping a patient does
    # not move the others to another split.
    everyone = list(by_patient)
    strata = np.asarray([label_of(pid) for pid in everyone]
                        if times is None else
                        [by_patient[pid][0].censorship for pid in everyone])
    drawn = splits_lib.patient_splits(spec, [by_patient[pid][0].split for pid in everyone],
                                      strata, everyone)
    position = {pid: i for i, pid in enumerate(kept)}
    splits = {k: np.asarray(sorted(position[everyone[j]] for j in v if everyone[j] in position),
                            np.int64) for k, v in drawn.items()}
    if times is not None:  # labels = time bins fitted on the training split
      bins, class_names = survival.label_bins(
          times, censorship, splits, spec.num_bins,
          spec.splits_dir and splits_lib.split_file(spec.splits_dir, max(spec.fold, 0)),
          spec.labels)
      patients = tuple(dataclasses.replace(p, label=int(b)) for p, b in zip(patients, bins))
    normalised, normalizer = _normalise(spec, np.stack([values.get(pid, missing) for pid in kept]),
                                        genes, splits['train'], normalizer, symbols)
  except DataError as e:
    return None, str(e).split('\n')
  return Cohort(patients, class_names, splits, normalised, normalizer, dims.pop(),
                times=times, censorship=censorship), []


def load_cohort(spec: CohortSpec, normalizer: genes_lib.GeneNormalizer | None = None) -> Cohort:
  """Loads a cohort (slide headers are checked; features are read later, lazily).

  Args:
    spec: the inputs.
    normalizer: a stored gene list and statistics (fine-tuning / prediction); None fits them on the
      training split.

  Returns:
    The cohort.

  Raises:
    DataError: listing every problem, one per line.
  """
  cohort, problems = _assemble(spec, normalizer, scan=False)
  if problems:
    raise DataError('\n'.join(problems))
  logging.info('cohort: %d patients, %d classes, %d genes, splits %s', len(cohort.patients),
               cohort.num_classes, cohort.num_genes,
               {k: int(v.size) for k, v in cohort.splits.items()})
  return cohort


def scan_cohort(spec: CohortSpec, normalizer: genes_lib.GeneNormalizer | None = None
                ) -> tuple[Cohort | None, list[str]]:
  """Reads every feature file in full (NaN/Inf, truncation) as well as the headers.

  Returns:
    (the cohort, or None when a problem stops it; every problem found, one line each: empty when
    `load_cohort(spec, normalizer)` would succeed). With `drop_incomplete` the cohort leaves out
    the patients whose feature data is broken.
  """
  return _assemble(spec, normalizer, scan=True)

