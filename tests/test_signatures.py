"""MCAT's gene signatures: the shipped file is MCAT's, its groups are found by gene symbol in the
cohort's gene list (STAR `gene_name`, a matrix `gene_name` column, or a symbol-indexed table), a
cohort without symbols is refused before anything trains, and MCAT's tokens are those groups."""

import csv
import hashlib
import importlib.resources
import logging
import os
import tomllib

import numpy as np
import pytest

from gimp_jax import methods
from gimp_jax.configs.methods import mcat as mcat_config
from gimp_jax.data import cohort as ch
from gimp_jax.data import expression as expr
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import signatures
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError
from gimp_jax.models import fusion
from gimp_jax.train import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("Tumor Suppressor Genes", "Oncogenes", "Protein Kinases", "Cell Differentiation Markers",
         "Transcription Factors", "Cytokines and Growth Factors")


def _columns():
  """The shipped CSV's columns, read independently of the library: {name: [cells]}."""
  path = importlib.resources.files("gimp_jax.data").joinpath(signatures.FILENAME)
  with path.open(newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  return {h: [r[j] for r in rows[1:] if r[j]] for j, h in enumerate(rows[0])}


def test_shipped_file_is_mcats_signatures_csv_and_is_package_data():
  data = importlib.resources.files("gimp_jax.data").joinpath(signatures.FILENAME).read_bytes()
  # sha256 of datasets_csv_sig/signatures.csv at github.com/mahmoodlab/MCAT (commit b9cca63).
  assert hashlib.sha256(data).hexdigest() == (
      "6bf0a195a67a04774df3fec808748e06a87176506b17d3cd1e8e9049d2624477")
  cols = _columns()
  assert tuple(cols) == NAMES
  assert [len(c) for c in cols.values()] == [82, 328, 513, 452, 1536, 452]
  assert [len(s) for _, s in signatures.mcat_signatures()] == [len(set(c)) for c in cols.values()]
  assert [len(set(c)) for c in cols.values()] == [82, 328, 513, 443, 1536, 452]
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
  assert signatures.FILENAME in package_data["gimp_jax.data"]


def test_groups_are_the_positions_of_each_signatures_symbols(caplog):
  cols = _columns()
  rng = np.random.default_rng(0)
  picked = [s for c in cols.values() for s in rng.choice(sorted(set(c)), 3, replace=False)]
  names = picked + ["ENSG00000141510", "NOT_A_GENE", "tp53", "EGFR", "<pad_0>"]  # TP53 lower case
  names = [names[i] for i in rng.permutation(len(names))]
  with caplog.at_level(logging.INFO):
    groups = signatures.gene_groups(names)
  assert [g for g, _ in groups] == list(NAMES)
  for (name, pos), col in zip(groups, cols.values()):
    want = [i for i, n in enumerate(names) if n.upper() in set(col)]
    assert list(pos) == want
    assert f"{name} {len(want)}/{len(set(col))}" in caplog.text
  both = [name for name, col in cols.items() if "EGFR" in col]
  assert len(both) > 1  # a gene of several signatures feeds each of them
  assert all(names.index("EGFR") in pos for name, pos in groups if name in both)


def test_ensembl_only_genes_are_refused_with_the_fix():
  names = [f"ENSG{i:011d}" for i in range(40)]
  with pytest.raises(DataError) as e:
    signatures.gene_groups(names, where="expr.tsv")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("expr.tsv: genes: MCAT signature(s) Tumor Suppressor")
  assert "40 of the cohort's 40 genes are Ensembl IDs" in msg
  assert "gene_name" in msg and "config.mcat.gene_groups='slices'" in msg
  cols = _columns()
  one_missing = [s for name, c in cols.items() if name != "Oncogenes" for s in c[:2]
                 if s not in cols["Oncogenes"]]
  with pytest.raises(DataError, match=r"signature\(s\) Oncogenes have no gene"):
    signatures.gene_groups(one_missing)


def _star(path, genes, symbols, values):
  rows = ["# gene-model: GENCODE v36", "gene_id\tgene_name\tgene_type\tunstranded\tfpkm_unstranded",
          "N_unmapped\t\t\t2133467\t"]
  rows += [f"{g}\t{s}\tprotein_coding\t1\t{v}" for g, s, v in zip(genes, symbols, values)]
  path.write_text("\n".join(rows) + "\n")


def test_star_gene_names_reach_the_normaliser_and_survive_saving(tmp_path):
  rng = np.random.default_rng(1)
  genes = [f"ENSG{i:011d}.{i % 3 + 1}" for i in range(8)]
  symbols = ["TP53", "EGFR", "", "AKT1", "CD4", "FOXA1", "IL6", "X"]
  folder = tmp_path / "star"
  folder.mkdir()
  _star(folder / "TCGA-AA-0001-01A.tsv", genes, symbols, rng.uniform(1, 9, 8))
  order = rng.permutation(8)  # another file, genes in another order
  _star(folder / "TCGA-AA-0002-01A.tsv", [genes[i] for i in order], [symbols[i] for i in order],
        rng.uniform(1, 9, 8))
  table = expr.open_expression(str(folder)).read()
  assert table.symbols == tuple(symbols)
  keys = genes_lib.gene_keys(genes, True)
  norm = genes_lib.GeneNormalizer.fit(table.values, keys, symbols=table.symbols)
  assert norm.names == tuple(s or k for k, s in zip(keys, symbols))
  for name in ("n.npz", "n.json"):
    norm.save(str(tmp_path / name))
    assert genes_lib.GeneNormalizer.load(str(tmp_path / name)).names == norm.names


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  return synthetic.make_cohort(str(tmp_path_factory.mktemp("sig")), patients=16, genes=60,
                               feature_dim=32, min_patches=8, max_patches=20, seed=4)


def _config(paths):
  c = mcat_config.get_config("tiny")
  c.data.update(features_dir=paths["features_dir"], expression=paths["expression"],
                labels=paths["labels"], num_genes=0)
  c.stages = ("finetune",)
  return c


def test_mcat_tokens_are_the_signatures_found_in_the_cohort(cohort, tmp_path):
  c = _config(cohort)
  loaded = ch.load_cohort(ch.CohortSpec.from_config(c))
  with open(cohort["expression"], encoding="utf-8") as f:
    symbol = {r[0].split(".")[0]: r[1] for r in csv.reader(f, delimiter="\t")}
  assert loaded.gene_names == tuple(symbol[g] for g in loaded.normalizer.genes)
  model = methods.build(c, loaded.gene_names, 2, 0)
  cols = _columns()
  want = [tuple(i for i, n in enumerate(loaded.gene_names) if n in set(col))
          for col in cols.values()]
  assert model.gene_encoder.groups == tuple(want) and all(want)
  assert [s.blocks[0].linear.in_features for s in model.gene_encoder.snns] == [len(g) for g in want]
  # The same table indexed by symbol (the gene column holds the symbols): the same tokens.
  path = tmp_path / "symbols.tsv"
  with open(cohort["expression"], encoding="utf-8") as f:
    rows = [r[1:] for r in csv.reader(f, delimiter="\t")]
  path.write_text("".join("\t".join(r) + "\n" for r in rows))
  by_symbol = ch.load_cohort(ch.CohortSpec.from_config(_config(dict(cohort, expression=str(path)))))
  assert by_symbol.gene_names == loaded.gene_names
  assert methods.build(c, by_symbol.gene_names, 2, 0).gene_encoder.groups == tuple(want)


def test_mcat_on_a_table_without_symbols_stops_before_training(cohort, tmp_path, caplog):
  path = tmp_path / "ensembl.tsv"
  with open(cohort["expression"], encoding="utf-8") as f:
    rows = [r[:1] + r[2:] for r in csv.reader(f, delimiter="\t")]  # the gene_name column dropped
  path.write_text("".join("\t".join(r) + "\n" for r in rows))
  c = _config(dict(cohort, expression=str(path)))
  workdir = tmp_path / "run"
  with pytest.raises(DataError) as e:
    run.train_and_evaluate(c, str(workdir))
  assert str(e.value) == (
      f"{path}: genes: MCAT signature(s) {', '.join(NAMES)} have no gene in the cohort (60 of the "
      "cohort's 60 genes are Ensembl IDs without gene symbols); provide gene symbols (GDC STAR "
      "files carry a gene_name column; or index the table by symbol) or set "
      "config.mcat.gene_groups='slices'")
  assert not (workdir / "checkpoints").exists()
  c.mcat.gene_groups = "slices"  # consecutive slices, with a warning
  with caplog.at_level(logging.WARNING):
    model = methods.build(c, ch.load_cohort(ch.CohortSpec.from_config(c)).gene_names, 2, 0)
  assert model.gene_encoder.groups == fusion.consecutive_groups(60, 6)
  assert "not MCAT's six signatures" in caplog.text
