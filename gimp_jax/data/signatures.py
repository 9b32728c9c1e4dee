"""MCAT's six gene signatures and their mapping onto a cohort's gene list by gene symbol.

`mcat_signatures.csv` (package data) is, byte for byte, `datasets_csv_sig/signatures.csv` of
github.com/mahmoodlab/MCAT (Chen et al., "Multimodal Co-Attention Transformer for Survival
Prediction in Gigapixel Whole Slide Images", ICCV 2021; sha256 6bf0a195...2624477): one column per
signature (Tumor Suppressor Genes, Oncogenes, Protein Kinases, Cell Differentiation Markers,
Transcription Factors, Cytokines and Growth Factors), HGNC symbols, ragged columns padded with empty
cells. The columns hold 82, 328, 513, 452 (443 distinct), 1536 and 452 symbols; a gene may be in
several signatures. MCAT keeps, per signature, the distinct symbols that its cohort table has
(`dataset_survival.py`: `signatures[col].dropna().unique()` intersected with the table's genes);
so does `gene_groups`, on the symbols of the cohort's gene list (`genes.GeneNormalizer.names`:
the STAR files' `gene_name` column, or the IDs of a symbol-indexed table). Nothing is downloaded.
"""

from collections.abc import Sequence
import csv
import functools
import importlib.resources
import re

from absl import logging

from gimp_jax.errors import DataError

FILENAME = "mcat_signatures.csv"
_ENSEMBL = re.compile(r"^ENS[A-Z]*\d{6,}")


@functools.cache
def mcat_signatures() -> tuple[tuple[str, tuple[str, ...]], ...]:
  """((signature name, its distinct symbols in file order), ...) for the six columns."""
  text = importlib.resources.files("gimp_jax.data").joinpath(FILENAME).read_text(encoding="utf-8")
  rows = list(csv.reader(text.splitlines()))
  return tuple((name, tuple(dict.fromkeys(r[j].strip() for r in rows[1:]
                                          if j < len(r) and r[j].strip())))
               for j, name in enumerate(rows[0]))


def gene_groups(names: Sequence[str], *, where: str = "expression"
                ) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """The gene-list positions of each MCAT signature (pure but for the log line, written once per
  gene list).

  Args:
    names: [G] the model's gene names in gene-list order (symbols where known; matched without
      regard to case).
    where: the expression input, named in the error.

  Returns:
    ((signature name, positions into [G], ascending), ...) in the file's column order; INFO-logs
    how many of each signature's genes were found.

  Raises:
    DataError: a signature none of whose genes is in `names` (and, when the names are Ensembl IDs,
      how to provide symbols).
  """
  return _gene_groups(tuple(names), where)


@functools.lru_cache(maxsize=8)
def _gene_groups(names: tuple[str, ...], where: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
  index: dict[str, list[int]] = {}
  for i, n in enumerate(names):
    index.setdefault(n.upper(), []).append(i)
  groups, found = [], []
  for name, symbols in mcat_signatures():
    pos = sorted(i for s in symbols for i in index.get(s.upper(), ()))
    groups.append((name, tuple(pos)))
    found.append(f"{name} {len({s for s in symbols if s.upper() in index})}/{len(symbols)}")
  empty = [name for name, pos in groups if not pos]
  if empty:
    ensembl = sum(bool(_ENSEMBL.match(n)) for n in names)
    why = (f"{ensembl} of the cohort's {len(names)} genes are Ensembl IDs without gene symbols"
           if ensembl > len(names) // 2 else f"none of the cohort's {len(names)} gene names is "
           "one of their symbols")
    raise DataError(
        f"{where}: genes: MCAT signature(s) {', '.join(empty)} have no gene in the cohort ({why}); "
        "provide gene symbols (GDC STAR files carry a gene_name column; or index the table by "
        "symbol) or set config.mcat.gene_groups='slices'")
  logging.info("MCAT signatures: %s found", ", ".join(found))
  return tuple(groups)
