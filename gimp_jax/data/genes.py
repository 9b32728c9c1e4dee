"""The ordered gene list, alignment of tables to it, and per-gene normalisation.

The model's G is the length of an ordered gene list: fitted from the training table (all genes, or
`num_genes` of them: the most variable on the training split when the table has more, padding
genes `<pad_k>` that are always 0 when it has fewer, e.g. 60,483 GDC HTSeq genes -> the paper's
60,480) or, when fine-tuning and predicting, the list stored with the model.

`GeneNormalizer` applies log2(x + 1) (optional) then per-gene standardisation with statistics fitted
on the training split only; it holds the gene list (IDs, and the gene symbols the input gave, e.g.
the `gene_name` column of GDC STAR files) and is saved as `.npz` or JSON without pickle. Its
`names` (a gene's symbol, else its ID: a symbol-indexed table's IDs are symbols) are the gene list
the model is built on (`methods.build(config, names, ...)`; MCAT maps its signatures on
them).
"""

from collections.abc import Sequence
import dataclasses
import json
import re

from absl import logging
import numpy as np

from gimp_jax.errors import DataError

# Ensembl IDs with a version suffix, keeping GENCODE's `_PAR_Y` tag (ENSG00000228572.7_PAR_Y).
_ENSEMBL_VERSION = re.compile(r'^(ENS[A-Z]*\d{6,})\.\d+(_PAR_Y)?$')
PAD_PREFIX = '<pad_'
_SHOW = 5


def strip_version(gene_id: str) -> str:
  """'ENSG00000000003.13' -> 'ENSG00000000003'; '...7_PAR_Y' keeps '_PAR_Y'; other IDs unchanged."""
  m = _ENSEMBL_VERSION.match(gene_id)
  return m.group(1) + (m.group(2) or '') if m else gene_id


def gene_keys(genes: Sequence[str], strip_versions: bool) -> list[str]:
  """The IDs genes are matched on: the IDs, or the IDs without Ensembl versions."""
  return [strip_version(g) for g in genes] if strip_versions else list(genes)


def select_genes(genes: Sequence[str], num_genes: int,
                 scores: np.ndarray | None = None) -> tuple[str, ...]:
  """The model's gene list from a table's genes (pure).

  Args:
    genes: [G_table] gene IDs in table order.
    num_genes: wanted length G; 0 keeps all.
    scores: [G_table] ranking when trimming (e.g. training-split variance); None keeps the first.

  Returns:
    [G] IDs: all genes; or the `num_genes` highest-scoring ones in table order; or all genes then
    `<pad_0>`, `<pad_1>`, ... up to `num_genes` (padding genes align to constant 0).
  """
  genes = tuple(genes)
  if num_genes <= 0 or num_genes == len(genes):
    return genes
  if num_genes > len(genes):
    logging.warning('gene list: %d genes in the table, padded to %d with constant genes',
                    len(genes), num_genes)
    return genes + tuple(f'{PAD_PREFIX}{k}>' for k in range(num_genes - len(genes)))
  order = np.arange(len(genes)) if scores is None else np.argsort(-np.asarray(scores),
                                                                    kind='stable')
  keep = np.sort(order[:num_genes])
  logging.warning('gene list: keeping %d of %d genes (%s)', num_genes, len(genes),
                  'first in table order' if scores is None else 'highest training variance')
  return tuple(genes[i] for i in keep)


def align_genes(table_genes: Sequence[str], values: np.ndarray, genes: Sequence[str],
                strip_versions: bool, source: str = 'expression') -> np.ndarray:
  """Reorders a table's columns to an ordered gene list.

  Args:
    table_genes: [G_file] the table's gene IDs.
    values: [S, G_file] the table's values.
    genes: the gene list [G] (version-stripped when `strip_versions`); `<pad_k>` genes give 0.
    strip_versions: match on IDs without Ensembl version suffixes.
    source: the file, for messages.

  Returns:
    [S, G] float32; table genes not in the list are dropped (and logged).

  Raises:
    DataError: genes of the list missing from the table (how many, and the first few), or IDs that
      collide once versions are stripped.
  """
  keys = gene_keys(table_genes, strip_versions)
  index = {}
  for i, k in enumerate(keys):
    if k in index:
      raise DataError(f'{source}: gene IDs: {k} appears twice'
                      + (' once versions are stripped' if strip_versions else ''))
    index[k] = i
  missing = [g for g in genes if g not in index and not g.startswith(PAD_PREFIX)]
  if missing:
    raise DataError(f'{source}: genes: {len(missing)} of {len(genes)} genes of the gene list are '
                    f'missing (first: {", ".join(missing[:_SHOW])})')
  cols = [index.get(g, -1) for g in genes]
  out = np.zeros((values.shape[0], len(genes)), np.float32)
  real = np.flatnonzero(np.asarray(cols) >= 0)
  out[:, real] = values[:, [cols[i] for i in real]]
  if len(keys) > real.size:
    logging.info('%s: %d genes not in the gene list are ignored', source, len(keys) - real.size)
  return out


def _log(values: np.ndarray, log_transform: bool, source: str) -> np.ndarray:
  """log2(x + 1) when asked; negative raw values are an error then (already logged input?)."""
  values = np.asarray(values, np.float32)
  if not log_transform:
    return values
  if (values < 0).any():
    raise DataError(f'{source}: values: negative expression values, so log2(x + 1) is undefined; '
                    'if the table is already log-transformed set log_transform=False')
  return np.log2(values + np.float32(1.0))


def log_variance(values: np.ndarray, log_transform: bool, source: str = 'expression') -> np.ndarray:
  """[S, G] raw -> [G] variance after the optional log, the ranking `select_genes` uses."""
  return _log(values, log_transform, source).astype(np.float64).var(0)


@dataclasses.dataclass(frozen=True)
class GeneNormalizer:
  """log2(x + 1) (optional) then per-gene standardisation, fitted on the training split.

  Attributes:
    genes: [G] the ordered gene list (version-stripped when `strip_versions`).
    mean: [G] float32 per-gene mean of the (logged) training values.
    std: [G] float32 per-gene standard deviation (ddof 0); 1 where it is below `std_floor` (a gene
      constant on the training split is only centred, so that a test value off that constant stays
      finite instead of being divided by ~0).
    log_transform: whether log2(x + 1) is applied first (off for tables already in log2).
    strip_versions: whether genes are matched without Ensembl version suffixes.
    std_floor: standard deviations below this count as zero.
    symbols: [G] gene symbols ('' where unknown), or () when the input gave none.
  """
  genes: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  log_transform: bool = True
  strip_versions: bool = True
  std_floor: float = 1e-6
  symbols: tuple[str, ...] = ()

  @property
  def num_genes(self) -> int:
    return len(self.genes)

  @property
  def names(self) -> tuple[str, ...]:
    """[G] each gene's symbol where known, else its ID."""
    return tuple(s or g for g, s in zip(self.genes, self.symbols or ('',) * len(self.genes)))

  @classmethod
  def fit(cls, values: np.ndarray, genes: Sequence[str], *, log_transform: bool = True,
          strip_versions: bool = True, std_floor: float = 1e-6, symbols: Sequence[str] = (),
          source: str = 'expression') -> 'GeneNormalizer':
    """Fits mean/std on training values [S_train, G] (raw, aligned to `genes`, whose symbols are
    `symbols`, [G] or ())."""
    if values.ndim != 2 or values.shape[1] != len(genes) or values.shape[0] == 0:
      raise DataError(f'{source}: cannot fit normalisation on values of shape {values.shape} '
                      f'for {len(genes)} genes')
    x = _log(values, log_transform, source).astype(np.float64)
    std = x.std(0)
    return cls(tuple(genes), x.mean(0).astype(np.float32),
               np.where(std < std_floor, 1.0, std).astype(np.float32), log_transform,
               strip_versions, float(std_floor), tuple(symbols))

  def transform(self, values: np.ndarray, source: str = 'expression') -> np.ndarray:
    """values [S, G] raw, aligned to `genes` -> [S, G] float32 (x' - mean) / std."""
    if values.ndim != 2 or values.shape[1] != self.num_genes:
      raise DataError(f'{source}: values of shape {values.shape}, expected [S, {self.num_genes}]')
    return ((_log(values, self.log_transform, source) - self.mean) / self.std).astype(np.float32)

  def to_dict(self) -> dict:
    """JSON-serialisable form (float32 values round-trip exactly through Python floats)."""
    return {'genes': list(self.genes), 'mean': [float(x) for x in self.mean],
            'std': [float(x) for x in self.std], 'log_transform': self.log_transform,
            'strip_versions': self.strip_versions, 'std_floor': self.std_floor,
            'symbols': list(self.symbols)}

  @classmethod
  def from_dict(cls, d: dict, source: str = 'normalizer') -> 'GeneNormalizer':
    """Inverse of `to_dict`; DataError when fields are missing or inconsistent."""
    try:
      genes = tuple(str(g) for g in d['genes'])
      mean = np.asarray(d['mean'], np.float32).reshape(-1)
      std = np.asarray(d['std'], np.float32).reshape(-1)
      symbols = tuple(str(s) for s in d.get('symbols', ()))  # () in files older than symbols
      out = cls(genes, mean, std, bool(d['log_transform']), bool(d['strip_versions']),
                float(d['std_floor']), symbols)
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(f'{source}: not a gene normaliser ({e!r})') from e
    if (not len(genes) == mean.size == std.size or len(symbols) not in (0, len(genes))
        or not (np.isfinite(mean).all() and (std > 0).all())):
      raise DataError(f'{source}: inconsistent gene normaliser (genes {len(genes)}, symbols '
                      f'{len(symbols)}, mean {mean.size}, std {std.size}, or non-finite/non-positive '
                      'values)')
    return out

  def save(self, path: str) -> None:
    """Writes `.npz` (no pickle) or, for a `.json` path, JSON."""
    if path.endswith('.json'):
      with open(path, 'w', encoding='utf-8') as f:
        json.dump(self.to_dict(), f)
      return
    np.savez(path, genes=np.asarray(self.genes, dtype=np.str_), mean=self.mean, std=self.std,
             log_transform=np.asarray(self.log_transform),
             strip_versions=np.asarray(self.strip_versions), std_floor=np.asarray(self.std_floor),
             symbols=np.asarray(self.symbols, dtype=np.str_))

  @classmethod
  def load(cls, path: str) -> 'GeneNormalizer':
    """Reads what `save` wrote (`np.load(allow_pickle=False)` or JSON)."""
    try:
      if path.endswith('.json'):
        with open(path, encoding='utf-8') as f:
          d = json.load(f)
      else:
        with np.load(path, allow_pickle=False) as z:
          d = {k: (z[k].tolist() if z[k].ndim == 0 else z[k]) for k in z.files}
    except Exception as e:  # missing file, bad zip/JSON, object arrays refused without pickle
      raise DataError(f'{path}: cannot read gene normaliser ({e})') from e
    if not isinstance(d, dict):
      raise DataError(f'{path}: not a gene normaliser')
    return cls.from_dict(d, path)
