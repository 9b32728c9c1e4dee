"""TCGA-style gene expression tables: readers and matching of patients to samples.

Two layouts are read (see formats_and_algorithms.md section 5):
- a matrix file (TSV/CSV, optionally .gz): a header row whose first field names the gene column
  (`Ensembl_ID` in UCSC Xena tables), optionally a `gene_name` column of gene symbols (as STAR
  files merged into one table have), then sample or patient IDs; then one row per gene;
- a folder of GDC per-sample files: two or more columns (gene ID, value, ...), `#` comment lines,
  an optional header line (STAR's `gene_id gene_name ... fpkm_unstranded`; its `gene_name` column
  gives the genes' symbols), and summary rows whose ID starts with `__` (HTSeq) or `N_` (STAR),
  which are skipped. The sample ID of a file is its name
  up to the first dot, or what a manifest (e.g. the GDC sample sheet) maps its file name to.

Gene lists, alignment and normalisation are in `genes.py`.
"""

from collections.abc import Sequence
import dataclasses
import gzip
import os
import re
from typing import TextIO

import numpy as np

from gimp_jax.data import genes as genes_lib
from gimp_jax.errors import DataError

_TCGA_PATIENT = re.compile(r'^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}', re.IGNORECASE)
_SUMMARY_PREFIXES = ('__', 'N_')
# STAR's FPKM column, used when a per-sample file has a header and no value column is configured.
_STAR_FPKM = 'fpkm_unstranded'
_STAR_SYMBOL = 'gene_name'  # STAR's gene symbol column
# Files of a GDC download folder that are not expression files.
_GDC_EXTRAS = ('MANIFEST.txt', 'annotations.txt')
_SHOW = 5  # how many items an error message lists
# Cells read as NaN (missing values, as R and pandas write them); the cohort then treats the
# sample as having NaN values (refused, or dropped with drop_incomplete).
_MISSING = ('', 'na', 'n/a', 'nan', 'null', 'none')


@dataclasses.dataclass(frozen=True)
class ExpressionTable:
  """Expression values of some samples.

  Attributes:
    path: where they were read from (for messages).
    genes: [G] gene IDs as in the file.
    samples: [S] sample IDs.
    values: [S, G] float32, raw (not normalised); NaN where a cell is missing or not a number.
    bad: sample -> (file, ((line, gene, text), ...)) of its cells that are not numbers.
    symbols: [G] gene symbols (STAR's `gene_name` column), or () when the input has none.
  """
  path: str
  genes: tuple[str, ...]
  samples: tuple[str, ...]
  values: np.ndarray
  bad: dict[str, tuple[str, tuple[tuple[int, str, str], ...]]] = dataclasses.field(
      default_factory=dict)
  symbols: tuple[str, ...] = ()


def _cell(text: str) -> float | None:
  """A cell's value: a float, NaN for a missing value (`NA`, empty, ...), None if not a number."""
  text = _unquote(text)
  try:
    return float(text)
  except ValueError:
    return float('nan') if text.lower() in _MISSING else None


def describe_bad_cells(cells: Sequence[tuple[int, str, str]]) -> str:
  """'2 values are not numbers: line 3: gene G2: value 'abc' is not a number; ...' (capped)."""
  shown = '; '.join(f'line {n}: gene {g}: value {t!r} is not a number' for n, g, t in cells[:_SHOW])
  more = f'; and {len(cells) - _SHOW} more' if len(cells) > _SHOW else ''
  return f'{len(cells)} value(s) are not numbers: {shown}{more}'


def _open_text(path: str) -> TextIO:
  """Opens a text file, gzip-compressed when the name ends in .gz."""
  try:
    if path.endswith('.gz'):
      return gzip.open(path, 'rt', encoding='utf-8-sig', newline='')
    return open(path, 'r', encoding='utf-8-sig', newline='')  # -sig: a BOM (Excel) is dropped
  except OSError as e:
    raise DataError(f'{path}: cannot open ({e})') from e


def _unquote(field: str) -> str:
  return field.strip().strip('"').strip("'")


def _delimiter(line: str) -> str | None:
  """Tab, then comma, then any whitespace (None)."""
  if '\t' in line:
    return '\t'
  return ',' if ',' in line else None


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _data_lines(path: str):
  """Yields (line number, line) of non-blank, non-`#` lines; DataError on undecodable bytes."""
  with _open_text(path) as f:
    try:
      for n, line in enumerate(f, 1):
        line = line.rstrip('\r\n')
        if line.strip() and not line.startswith('#'):
          yield n, line
    except (UnicodeDecodeError, OSError, EOFError) as e:  # binary junk, truncated .gz
      raise DataError(f'{path}: not a readable text table ({e})') from e


def _all_data_lines(path: str) -> list[tuple[int, str]]:
  """`_data_lines` of a small file, read at once (several times faster than line by line)."""
  with _open_text(path) as f:
    try:
      text = f.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:
      raise DataError(f'{path}: not a readable text table ({e})') from e
  return [(n, line) for n, line in enumerate(text.splitlines(), 1)
          if line.strip() and line[0] != '#']


def _check_unique(ids: Sequence[str], path: str, what: str) -> None:
  seen, dups = set(), []
  for i in ids:
    if i in seen:
      dups.append(i)
    seen.add(i)
  if dups:
    raise DataError(f'{path}: {what}: {len(dups)} duplicated IDs '
                    f'(first: {", ".join(dups[:_SHOW])})')
  if any(not i for i in ids):
    raise DataError(f'{path}: {what}: empty ID')


class MatrixSource:
  """A genes x samples matrix file (UCSC Xena layout: first column `Ensembl_ID`; a second column
  named `gene_name` holds symbols)."""

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
    self._first = 2 if fields[1].lower() == _STAR_SYMBOL else 1  # the first sample's column
    self.sample_ids = tuple(fields[self._first:])
    if all(_is_number(x) for x in self.sample_ids):
      raise DataError(f'{path}: header: no sample IDs in the first line (a per-sample file? put '
                      'per-sample files in a folder and pass the folder)')
    _check_unique(self.sample_ids, path, 'header (sample IDs)')

  def gene_ids(self) -> tuple[str, ...]:
    """The first column of every row below the header, checking each row's field count."""
    return self._gene_columns()[0]

  def _gene_columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(gene IDs [G], their symbols [G] from a `gene_name` column, or ())."""
    genes, symbols = [], []
    width = len(self.sample_ids) + self._first
    for n, line in _data_lines(self.path):
      if n <= self._header_line:
        continue
      parts = line.split(self._delim)
      if len(parts) != width:
        raise DataError(f'{self.path}: line {n}: {len(parts)} fields, the header has {width}')
      genes.append(_unquote(parts[0]))
      symbols.append(_unquote(parts[1]))
    if not genes:
      raise DataError(f'{self.path}: no gene rows')
    _check_unique(genes, self.path, 'gene IDs')
    return tuple(genes), tuple(symbols) if self._first == 2 else ()

  def read(self, samples: Sequence[str] | None = None) -> ExpressionTable:
    """Reads the values of `samples` (default all) -> ExpressionTable with values [S, G]."""
    samples = tuple(self.sample_ids if samples is None else samples)
    index = {s: i for i, s in enumerate(self.sample_ids)}
    missing = [s for s in samples if s not in index]
    if missing:
      raise DataError(f'{self.path}: header: samples not found: {", ".join(missing[:_SHOW])}')
    genes, symbols = self._gene_columns()
    if not samples:
      return ExpressionTable(self.path, genes, (), np.zeros((0, len(genes)), np.float32),
                             symbols=symbols)
    try:
      values = np.loadtxt(self.path, dtype=np.float32, delimiter=self._delim,
                          skiprows=self._header_line,
                          usecols=[index[s] + self._first for s in samples],
                          ndmin=2, encoding='utf-8-sig', quotechar='"', comments='#')
    except ValueError:  # a cell that is not a number: read again, finding every one
      return dataclasses.replace(self._read_cells(genes, samples, index), symbols=symbols)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'{self.path}: values: {e}') from e
    if values.shape != (len(genes), len(samples)):
      raise DataError(f'{self.path}: values: read {values.shape[0]} rows for {len(genes)} gene IDs '
                      '(a "#" inside a line?)')
    return ExpressionTable(self.path, genes, samples, np.ascontiguousarray(values.T),
                           symbols=symbols)

  def _read_cells(self, genes: tuple[str, ...], samples: tuple[str, ...],
                  index: dict[str, int]) -> ExpressionTable:
    """`read` cell by cell: missing cells are NaN, the others that are not numbers are listed."""
    cols = [index[s] + self._first for s in samples]
    values = np.empty((len(samples), len(genes)), np.float32)
    bad: dict[str, list] = {}
    row = 0
    for n, line in _data_lines(self.path):
      if n <= self._header_line:
        continue
      parts = line.split(self._delim)
      for j, c in enumerate(cols):
        v = _cell(parts[c])
        if v is None:
          bad.setdefault(samples[j], []).append((n, genes[row], _unquote(parts[c])))
          v = float('nan')
        values[j, row] = v
      row += 1
    return ExpressionTable(self.path, genes, samples, values,
                           {s: (self.path, tuple(c)) for s, c in bad.items()})


def _read_manifest(path: str) -> dict[str, str]:
  """File name -> sample ID from a CSV/TSV (GDC sample sheet: `File Name`, `Sample ID`)."""
  lines = _all_data_lines(path)
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
  is_header = probe >= len(parts) or not _is_number(parts[probe])
  names = [_unquote(p) for p in parts]
  if isinstance(value_column, str):
    if not is_header or value_column not in names:
      raise DataError(f'{path}: header: value column {value_column!r} not found (columns: '
                      f'{names if is_header else "no header line"})')
    return names.index(value_column), True
  if value_column is None and is_header and _STAR_FPKM in names:
    return names.index(_STAR_FPKM), True
  return probe, is_header


def _sample_file_cells(path: str, value_column: int | str | None
                       ) -> tuple[tuple[str, ...], np.ndarray, list[tuple[int, str, str]],
                                  tuple[str, ...]]:
  """`read_sample_file`, with the cells that are not numbers returned (their values NaN), and the
  genes' symbols (the header's `gene_name` column; () without one)."""
  lines = _all_data_lines(path)
  if not lines:
    raise DataError(f'{path}: no gene rows')
  delim = _delimiter(lines[0][1])
  rows = [(n, line.split(delim)) for n, line in lines]
  col, is_header = _value_column(rows[0][1], value_column, path)
  header = [_unquote(p) for p in rows[0][1]] if is_header else []
  sym = header.index(_STAR_SYMBOL) if _STAR_SYMBOL in header else None
  rows = [(n, p) for n, p in rows[is_header:]
          if not p[0].lstrip('"').startswith(_SUMMARY_PREFIXES)]
  if not rows:
    raise DataError(f'{path}: no gene rows')
  for n, p in rows:
    if not -len(p) <= col < len(p):
      raise DataError(f'{path}: line {n}: gene {_unquote(p[0])}: no value column {col}')
  genes = tuple(_unquote(p[0]) for _, p in rows)
  _check_unique(genes, path, 'gene IDs')
  symbols = () if sym is None else tuple(_unquote(p[sym]) if sym < len(p) else '' for _, p in rows)
  try:
    return genes, np.asarray(list(map(float, (p[col] for _, p in rows))), np.float32), [], symbols
  except ValueError:
    cells = [_cell(p[col]) for _, p in rows]
  bad = [(n, _unquote(p[0]), _unquote(p[col])) for (n, p), v in zip(rows, cells) if v is None]
  values = np.asarray([np.nan if v is None else v for v in cells], np.float32)
  return genes, values, bad, symbols


def read_sample_file(path: str, value_column: int | str | None = None
                     ) -> tuple[tuple[str, ...], np.ndarray]:
  """Reads one GDC per-sample file.

  Args:
    path: the file (.gz allowed).
    value_column: 0-based column index or header name; None = `fpkm_unstranded` when the file has a
      header with that column, else column 1 (the second).

  Returns:
    (gene IDs [G], values [G] float32), summary rows (`__*`, `N_*`) and `#` lines skipped; missing
    values (`NA`, empty) are NaN.

  Raises:
    DataError: listing the cells that are not numbers (capped, with their count), or another
      problem of the file.
  """
  genes, values, bad, _ = _sample_file_cells(path, value_column)
  if bad:
    raise DataError(f'{path}: values: {describe_bad_cells(bad)}')
  return genes, values


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
    """Reads `samples` (default all) on the gene order of the first one read.

    Raises:
      DataError: listing every file that cannot be read (not only the first).
    """
    samples = tuple(self.sample_ids if samples is None else samples)
    genes, rows, bad, problems, symbol = None, [], {}, [], {}
    for s in samples:
      try:
        path = self._file(s)
        g, v, cells, syms = _sample_file_cells(path, self.value_column)
      except DataError as e:
        problems.append(str(e))
        continue
      if cells:
        bad[s] = (path, tuple(cells))
      if syms and not symbol:  # the first file with a gene_name column names the genes
        symbol = dict(zip(g, syms))
      if genes is None:
        genes, index, first = g, {x: i for i, x in enumerate(g)}, path
      elif g != genes:
        if set(g) != set(genes):
          problems.append(f'{path}: gene IDs differ from those of {first} '
                          f'({len(set(genes) - set(g))} missing, {len(set(g) - set(genes))} extra)')
          continue
        v = v[np.argsort([index[x] for x in g])]
      rows.append(v)
    if problems:
      raise DataError('\n'.join(problems))
    if genes is None:
      genes = self.gene_ids()
    values = np.stack(rows) if rows else np.zeros((0, len(genes)), np.float32)
    symbols = tuple(symbol.get(x, '') for x in genes) if symbol else ()
    return ExpressionTable(self.path, genes, samples, values, bad, symbols)


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
  return tuple(genes_lib.gene_keys(open_expression(path, value_column, manifest).gene_ids(),
                                   strip_versions))


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
                       f'(found {", ".join(candidates[:_SHOW])}); map it with an expression_id '
                       'column')
    else:
      problems[pid] = (f'ambiguous expression columns {", ".join(kept[:_SHOW])}; '
                       'choose one with an expression_id column')
  return matched, problems


