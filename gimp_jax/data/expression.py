"""TCGA-style gene expression: readers, gene alignment, sample matching, normalisation.

Two layouts are read (see formats_and_algorithms.md section 5):
- a matrix file (TSV/CSV, optionally .gz): a header row whose first field names the gene column
  (`Ensembl_ID` in UCSC Xena tables) followed by sample or patient IDs, then one row per gene;
- a folder of GDC per-sample files: two or more columns (gene ID, value, ...), `#` comment lines,
  an optional header line (STAR's `gene_id gene_name ... fpkm_unstranded`), and summary rows whose
  ID starts with `__` (HTSeq) or `N_` (STAR), which are skipped. The sample ID of a file is its name
  up to the first dot, or what a manifest (e.g. the GDC sample sheet) maps its file name to.

Gene order is fixed by an ordered gene list (fitted from the training table or stored with a model).
`GeneNormalizer` applies log2(x + 1) (optional) then per-gene standardisation fitted on the training
split only, and is saved as `.npz` or JSON without pickle.
"""

from collections.abc import Sequence
import dataclasses
import gzip
import json
import os
import re
from typing import TextIO

from absl import logging
import numpy as np

from gimp_jax.errors import DataError

# Ensembl IDs with a version suffix, keeping GENCODE's `_PAR_Y` tag (ENSG00000228572.7_PAR_Y).
_ENSEMBL_VERSION = re.compile(r'^(ENS[A-Z]*\d{6,})\.\d+(_PAR_Y)?$')
_TCGA_PATIENT = re.compile(r'^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}', re.IGNORECASE)
_SUMMARY_PREFIXES = ('__', 'N_')
# STAR's FPKM column, used when a per-sample file has a header and no value column is configured.
_STAR_FPKM = 'fpkm_unstranded'
# Files of a GDC download folder that are not expression files.
_GDC_EXTRAS = ('MANIFEST.txt', 'annotations.txt')
_SHOW = 5  # how many items an error message lists


@dataclasses.dataclass(frozen=True)
class ExpressionTable:
  """Expression values of some samples.

  Attributes:
    path: where they were read from (for messages).
    genes: [G] gene IDs as in the file.
    samples: [S] sample IDs.
    values: [S, G] float32, raw (not normalised).
  """
  path: str
  genes: tuple[str, ...]
  samples: tuple[str, ...]
  values: np.ndarray


def strip_version(gene_id: str) -> str:
  """'ENSG00000000003.13' -> 'ENSG00000000003'; '...7_PAR_Y' keeps '_PAR_Y'; other IDs unchanged."""
  m = _ENSEMBL_VERSION.match(gene_id)
  return m.group(1) + (m.group(2) or '') if m else gene_id


def gene_keys(genes: Sequence[str], strip_versions: bool) -> list[str]:
  """The IDs genes are matched on: the IDs, or the IDs without Ensembl versions."""
  return [strip_version(g) for g in genes] if strip_versions else list(genes)


def _open_text(path: str) -> TextIO:
  """Opens a text file, gzip-compressed when the name ends in .gz."""
  try:
    if path.endswith('.gz'):
      return gzip.open(path, 'rt', encoding='utf-8', newline='')
    return open(path, 'r', encoding='utf-8', newline='')
  except OSError as e:
    raise DataError(f'{path}: cannot open ({e})') from e


def _unquote(field: str) -> str:
  return field.strip().strip('"').strip("'")


def _delimiter(line: str) -> str | None:
  """Tab, then comma, then any whitespace (None)."""
  if '\t' in line:
    return '\t'
  return ',' if ',' in line else None


def _data_lines(path: str):
  """Yields (line number, line without newline) of non-blank, non-`#` lines; DataError on bad bytes."""
  with _open_text(path) as f:
    try:
      for n, line in enumerate(f, 1):
        line = line.rstrip('\r\n')
        if line.strip() and not line.startswith('#'):
          yield n, line
    except (UnicodeDecodeError, OSError, EOFError) as e:  # binary junk, truncated .gz
      raise DataError(f'{path}: not a readable text table ({e})') from e


def _check_unique(ids: Sequence[str], path: str, what: str) -> None:
  seen, dups = set(), []
  for i in ids:
    if i in seen:
      dups.append(i)
    seen.add(i)
  if dups:
    raise DataError(f'{path}: {what}: {len(dups)} duplicated IDs (first: {", ".join(dups[:_SHOW])})')
  if any(not i for i in ids):
    raise DataError(f'{path}: {what}: empty ID')


class MatrixSource:
  """A genes x samples matrix file (UCSC Xena layout: first column `Ensembl_ID`)."""

  def __init__(self, path: str):
    self.path = path
    lines = _data_lines(path)
    try:
      self._header_line, header = next(lines)
    except StopIteration:
      raise DataError(f'{path}: header: file is empty') from None
    finally:
      lines.close()
    self._delim = _delimiter(header)
    fields = [_unquote(x) for x in header.split(self._delim)]
    if len(fields) < 2:
      raise DataError(f'{path}: header: expected a gene column then sample IDs, got {fields}')
    self.sample_ids = tuple(fields[1:])
    _check_unique(self.sample_ids, path, 'header (sample IDs)')

  def gene_ids(self) -> tuple[str, ...]:
    """The first column of every row below the header, checking each row's field count."""
    genes = []
    width = len(self.sample_ids) + 1
    for n, line in _data_lines(self.path):
      if n <= self._header_line:
        continue
      parts = line.split(self._delim)
      if len(parts) != width:
        raise DataError(f'{self.path}: line {n}: {len(parts)} fields, the header has {width}')
      genes.append(_unquote(parts[0]))
    if not genes:
      raise DataError(f'{self.path}: no gene rows')
    _check_unique(genes, self.path, 'gene IDs')
    return tuple(genes)

  def read(self, samples: Sequence[str] | None = None) -> ExpressionTable:
    """Reads the values of `samples` (default all) -> ExpressionTable with values [S, G]."""
    samples = tuple(self.sample_ids if samples is None else samples)
    index = {s: i for i, s in enumerate(self.sample_ids)}
    missing = [s for s in samples if s not in index]
    if missing:
      raise DataError(f'{self.path}: header: samples not found: {", ".join(missing[:_SHOW])}')
    genes = self.gene_ids()
    if not samples:
      return ExpressionTable(self.path, genes, (), np.zeros((0, len(genes)), np.float32))
    try:
      values = np.loadtxt(self.path, dtype=np.float32, delimiter=self._delim,
                          skiprows=self._header_line, usecols=[index[s] + 1 for s in samples],
                          ndmin=2, encoding='utf-8', quotechar='"', comments='#')
    except Exception as e:  # ValueError for non-numbers, with numpy's row and column
      raise DataError(f'{self.path}: values: {e}') from e
    return ExpressionTable(self.path, genes, samples, np.ascontiguousarray(values.T))


def _read_manifest(path: str) -> dict[str, str]:
  """File name -> sample ID, from a CSV/TSV with `file_name`/`File Name` and `sample_id`/`Sample ID`."""
  lines = list(_data_lines(path))
  if not lines:
    raise DataError(f'{path}: manifest: file is empty')
  delim = _delimiter(lines[0][1])
  norm = [_unquote(h).lower().replace(' ', '_') for h in lines[0][1].split(delim)]
  try:
    fcol = next(norm.index(c) for c in ('file_name', 'filename', 'file') if c in norm)
    scol = next(norm.index(c) for c in ('sample_id', 'sample', 'sample_barcode') if c in norm)
  except StopIteration:
    raise DataError(f'{path}: manifest header: needs a file_name and a sample_id column, '
                    f'got {norm}') from None
  mapping = {}
  for n, line in lines[1:]:
    parts = [_unquote(p) for p in line.split(delim)]
    if len(parts) <= max(fcol, scol) or not parts[fcol] or not parts[scol]:
      raise DataError(f'{path}: line {n}: missing file name or sample ID')
    mapping[parts[fcol]] = parts[scol]
  return mapping


def _value_column(parts: list[str], value_column: int | str | None,
                  path: str) -> tuple[int, bool]:
  """Returns (value column index, whether `parts` is a header line) from a file's first line."""
  probe = value_column if isinstance(value_column, int) else 1
  try:
    float(parts[probe])
    is_header = False
  except (ValueError, IndexError):
    is_header = True
  names = [_unquote(p) for p in parts]
  if isinstance(value_column, str):
    if not is_header or value_column not in names:
      raise DataError(f'{path}: header: value column {value_column!r} not found (columns: '
                      f'{names if is_header else "no header line"})')
    return names.index(value_column), True
  if value_column is None and is_header and _STAR_FPKM in names:
    return names.index(_STAR_FPKM), True
  return probe, is_header


def read_sample_file(path: str, value_column: int | str | None = None
                     ) -> tuple[tuple[str, ...], np.ndarray]:
  """Reads one GDC per-sample file.

  Args:
    path: the file (.gz allowed).
    value_column: 0-based column index or header name; None = `fpkm_unstranded` when the file has a
      header with that column, else column 1 (the second).

  Returns:
    (gene IDs [G], values [G] float32), summary rows (`__*`, `N_*`) and `#` lines skipped.
  """
  genes, values = [], []
  col = None
  for n, line in _data_lines(path):
    parts = line.split(_delimiter(line))
    if col is None:
      col, is_header = _value_column(parts, value_column, path)
      if is_header:
        continue
    gid = _unquote(parts[0])
    if gid.startswith(_SUMMARY_PREFIXES):
      continue
    if len(parts) <= col:
      raise DataError(f'{path}: line {n}: gene {gid}: no value column {col}')
    try:
      values.append(float(parts[col]))
    except ValueError:
      raise DataError(f'{path}: line {n}: gene {gid}: value {parts[col]!r} is not a number') from None
    genes.append(gid)
  if not genes:
    raise DataError(f'{path}: no gene rows')
  _check_unique(genes, path, 'gene IDs')
  return tuple(genes), np.asarray(values, np.float32)


class FolderSource:
  """A folder (searched recursively, as gdc-client nests files) of GDC per-sample files."""

  def __init__(self, path: str, value_column: int | str | None = None,
               manifest: str | None = None):
    self.path = path
    self.value_column = value_column
    mapping = _read_manifest(manifest) if manifest else None
    files: dict[str, list[str]] = {}
    for root, dirs, names in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d != 'logs')
      for name in sorted(names):
        full = os.path.join(root, name)
        if name.startswith('.') or name in _GDC_EXTRAS or (
            manifest and os.path.abspath(full) == os.path.abspath(manifest)):
          continue
        if mapping is not None:
          if name not in mapping:
            continue
          sample = mapping[name]
        else:
          sample = name.split('.', 1)[0]
        files.setdefault(sample, []).append(full)
    if not files:
      raise DataError(f'{path}: no per-sample expression files found'
                      + (f' matching manifest {manifest}' if manifest else ''))
    self._files = files
    self.sample_ids = tuple(sorted(files))

  def _file(self, sample: str) -> str:
    if sample not in self._files:
      raise DataError(f'{self.path}: sample {sample}: no file')
    if len(self._files[sample]) > 1:
      raise DataError(f'{self.path}: sample {sample}: several files '
                      f'({", ".join(self._files[sample][:_SHOW])})')
    return self._files[sample][0]

  def gene_ids(self) -> tuple[str, ...]:
    """Gene IDs of the first sample's file."""
    return read_sample_file(self._file(self.sample_ids[0]), self.value_column)[0]

  def read(self, samples: Sequence[str] | None = None) -> ExpressionTable:
    """Reads `samples` (default all) on the gene order of the first one read."""
    samples = tuple(self.sample_ids if samples is None else samples)
    genes, rows = None, []
    for s in samples:
      path = self._file(s)
      g, v = read_sample_file(path, self.value_column)
      if genes is None:
        genes, index = g, {x: i for i, x in enumerate(g)}
      elif g != genes:
        if set(g) != set(genes):
          raise DataError(f'{path}: gene IDs differ from those of {self._file(samples[0])} '
                          f'({len(set(genes) - set(g))} missing, {len(set(g) - set(genes))} extra)')
        v = v[np.argsort([index[x] for x in g])]
      rows.append(v)
    if genes is None:
      genes = self.gene_ids()
    values = np.stack(rows) if rows else np.zeros((0, len(genes)), np.float32)
    return ExpressionTable(self.path, genes, samples, values)


def open_expression(path: str, value_column: int | str | None = None,
                    manifest: str | None = None) -> MatrixSource | FolderSource:
  """A matrix file or a folder of per-sample files, by what `path` is."""
  if os.path.isdir(path):
    return FolderSource(path, value_column, manifest)
  if not os.path.isfile(path):
    raise DataError(f'{path}: expression: no such file or folder')
  return MatrixSource(path)


def read_gene_ids(path: str, *, strip_versions: bool = False, value_column: int | str | None = None,
                  manifest: str | None = None) -> tuple[str, ...]:
  """The ordered gene list of an expression source (G = its length), without reading values."""
  return tuple(gene_keys(open_expression(path, value_column, manifest).gene_ids(), strip_versions))


def align_genes(table: ExpressionTable, genes: Sequence[str], strip_versions: bool) -> np.ndarray:
  """Reorders a table's columns to an ordered gene list.

  Args:
    table: values [S, G_file].
    genes: the target gene list [G] (already version-stripped when `strip_versions`).
    strip_versions: match on IDs without Ensembl version suffixes.

  Returns:
    [S, G] float32; genes of the table not in the list are dropped (and logged).

  Raises:
    DataError: genes of the list missing from the table (how many, and the first few), or IDs that
      collide once versions are stripped.
  """
  keys = gene_keys(table.genes, strip_versions)
  _check_unique(keys, table.path, 'gene IDs' + (' without versions' if strip_versions else ''))
  index = {k: i for i, k in enumerate(keys)}
  missing = [g for g in genes if g not in index]
  if missing:
    raise DataError(f'{table.path}: genes: {len(missing)} of {len(genes)} genes of the gene list '
                    f'are missing (first: {", ".join(missing[:_SHOW])})')
  if len(keys) > len(genes):
    logging.info('%s: %d genes not in the gene list are ignored', table.path,
                 len(keys) - len(genes))
  return np.ascontiguousarray(table.values[:, [index[g] for g in genes]])


def _sample_type(sample: str) -> str:
  """TCGA sample type code, barcode characters 14-15 ('01' primary tumour, '11' normal)."""
  return sample[13:15]


def match_samples(patient_ids: Sequence[str], sample_ids: Sequence[str], *,
                  explicit: dict[str, str] | None = None,
                  preferred_types: Sequence[str] | None = ('01',)
                  ) -> tuple[dict[str, str], dict[str, str]]:
  """Finds each patient's expression column.

  An explicit sample ID (e.g. a labels column) must exist. Otherwise an exact match of the patient
  ID wins; else, for TCGA patient IDs, the samples whose barcode shares the first 12 characters
  (`TCGA-XX-XXXX`): one of a preferred sample type (default '01', primary tumour) is taken; none of
  those, or several, is a problem (map it explicitly).

  Args:
    patient_ids: [P] patient IDs.
    sample_ids: the expression source's sample IDs.
    explicit: patient ID -> sample ID, for patients whose column is given.
    preferred_types: acceptable TCGA sample type codes; None accepts a single candidate of any type.

  Returns:
    (patient -> sample ID, patient -> problem), each patient in exactly one of the two.
  """
  explicit = explicit or {}
  exact = set(sample_ids)
  by_prefix: dict[str, list[str]] = {}
  for s in sample_ids:
    if _TCGA_PATIENT.match(s):
      by_prefix.setdefault(s[:12].upper(), []).append(s)
  matched, problems = {}, {}
  for pid in patient_ids:
    if pid in explicit:
      if explicit[pid] in exact:
        matched[pid] = explicit[pid]
      else:
        problems[pid] = f'expression column {explicit[pid]!r} not found'
      continue
    if pid in exact:
      matched[pid] = pid
      continue
    candidates = by_prefix.get(pid[:12].upper(), []) if _TCGA_PATIENT.match(pid) else []
    if preferred_types is not None:
      kept = [s for s in candidates if _sample_type(s) in preferred_types]
    else:
      kept = candidates
    if len(kept) == 1:
      matched[pid] = kept[0]
    elif not candidates:
      problems[pid] = 'no expression column'
    elif not kept:
      problems[pid] = (f'no expression column of sample type {"/".join(preferred_types)} '
                       f'(found {", ".join(candidates[:_SHOW])}); map it with an expression_id column')
    else:
      problems[pid] = (f'ambiguous expression columns {", ".join(kept[:_SHOW])}; '
                       'choose one with an expression_id column')
  return matched, problems


@dataclasses.dataclass(frozen=True)
class GeneNormalizer:
  """log2(x + 1) (optional) then per-gene standardisation, fitted on the training split.

  Attributes:
    genes: [G] the ordered gene list (version-stripped when `strip_versions`).
    mean: [G] float32 per-gene mean of the (logged) training values.
    std: [G] float32 per-gene standard deviation (ddof 0), floored at `std_floor`.
    log2p1: whether log2(x + 1) is applied first (off for tables already in log2).
    strip_versions: whether genes are matched without Ensembl version suffixes.
    std_floor: the floor applied to `std`.
  """
  genes: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  log2p1: bool = True
  strip_versions: bool = True
  std_floor: float = 1e-6

  @property
  def num_genes(self) -> int:
    return len(self.genes)

  @classmethod
  def fit(cls, values: np.ndarray, genes: Sequence[str], *, log2p1: bool = True,
          strip_versions: bool = True, std_floor: float = 1e-6,
          source: str = 'expression') -> 'GeneNormalizer':
    """Fits mean/std on training values [S_train, G] (raw, aligned to `genes`)."""
    if values.ndim != 2 or values.shape[1] != len(genes) or values.shape[0] == 0:
      raise DataError(f'{source}: cannot fit normalisation on values of shape {values.shape} '
                      f'for {len(genes)} genes')
    x = _log(values, log2p1, source).astype(np.float64)
    return cls(tuple(genes), x.mean(0).astype(np.float32),
               np.maximum(x.std(0), std_floor).astype(np.float32), log2p1, strip_versions,
               float(std_floor))

  def transform(self, values: np.ndarray, source: str = 'expression') -> np.ndarray:
    """values [S, G] raw, aligned to `genes` -> [S, G] float32 normalised."""
    if values.ndim != 2 or values.shape[1] != self.num_genes:
      raise DataError(f'{source}: values of shape {values.shape}, expected [S, {self.num_genes}]')
    return ((_log(values, self.log2p1, source) - self.mean) / self.std).astype(np.float32)

  def to_dict(self) -> dict:
    """JSON-serialisable form (float32 values round-trip exactly)."""
    return {'genes': list(self.genes), 'mean': [float(x) for x in self.mean],
            'std': [float(x) for x in self.std], 'log2p1': self.log2p1,
            'strip_versions': self.strip_versions, 'std_floor': self.std_floor}

  @classmethod
  def from_dict(cls, d: dict, source: str = 'normalizer') -> 'GeneNormalizer':
    try:
      genes = tuple(str(g) for g in d['genes'])
      mean = np.asarray(d['mean'], np.float32).reshape(-1)
      std = np.asarray(d['std'], np.float32).reshape(-1)
      out = cls(genes, mean, std, bool(d['log2p1']), bool(d['strip_versions']),
                float(d['std_floor']))
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(f'{source}: not a gene normaliser ({e!r})') from e
    if not len(genes) == mean.size == std.size or not (np.isfinite(mean).all() and (std > 0).all()):
      raise DataError(f'{source}: inconsistent gene normaliser (genes {len(genes)}, mean '
                      f'{mean.size}, std {std.size}, or non-finite/non-positive values)')
    return out

  def save(self, path: str) -> None:
    """Writes `.npz` (no pickle) or, for a `.json` path, JSON."""
    if path.endswith('.json'):
      with open(path, 'w', encoding='utf-8') as f:
        json.dump(self.to_dict(), f)
      return
    np.savez(path, genes=np.asarray(self.genes, dtype=np.str_), mean=self.mean, std=self.std,
             log2p1=np.asarray(self.log2p1), strip_versions=np.asarray(self.strip_versions),
             std_floor=np.asarray(self.std_floor))

  @classmethod
  def load(cls, path: str) -> 'GeneNormalizer':
    """Reads what `save` wrote (np.load with allow_pickle=False)."""
    try:
      if path.endswith('.json'):
        with open(path, encoding='utf-8') as f:
          return cls.from_dict(json.load(f), path)
      with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
      d = {k: (v.tolist() if v.ndim == 0 else v) for k, v in d.items()}
    except DataError:
      raise
    except Exception as e:  # missing file, bad zip, object arrays refused without pickle
      raise DataError(f'{path}: cannot read gene normaliser ({e})') from e
    return cls.from_dict(d, path)


def _log(values: np.ndarray, log2p1: bool, source: str) -> np.ndarray:
  """log2(x + 1) when asked; negative raw values are an error then (already logged input?)."""
  values = np.asarray(values, np.float32)
  if not log2p1:
    return values
  if (values < 0).any():
    raise DataError(f'{source}: negative expression values, so log2(x + 1) is undefined; '
                    'if the table is already log-transformed set log2p1=False')
  return np.log2(values + np.float32(1.0))
