"""The scripts of experiments/: the tables script resumes, reports failures and writes the third
table's rows (the library's own tests never import experiments/)."""

import json
import os

import pytest

from experiments import tables
from gimp_jax.data import synthetic


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=12, genes=96, feature_dim=32, min_patches=8,
                               max_patches=30, seed=0)


def test_tables_script_resumes_and_reports_failures(cohort, tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # for the spawned worker processes
  out = tmp_path / "tables"
  overrides = ["--config.report.tsne=False", "--config.report.heatmaps=0"]
  args = ["--out", str(out), "--methods", "abmil", "--seeds", "0", "--size", "tiny",
          "--features_dir", cohort["features_dir"], "--expression", cohort["expression"],
          "--labels", cohort["labels"]] + overrides
  tables.main(args)
  text = (out / "tables.md").read_text()
  row = next(line for line in text.splitlines() if "| ABMIL |" in line)
  assert " ± " in row and row.endswith("| 0.7737 | 1 |")
  done = out / "runs" / "abmil" / "seed_0" / "results.json"
  mtime = os.path.getmtime(done)
  summary = json.loads((out / "summary.json").read_text())
  assert [r["config"] for r in summary["runs"]] == ["abmil"] and summary["runs"][0]["ok"]

  # A second call skips the finished run; a failing run is reported, not fatal.
  broken = tables.make_config("dsmil", "tiny", 0, dict(cohort, labels=str(tmp_path / "no.csv")),
                              [])
  runs = {("abmil", 0): tables.make_config("abmil", "tiny", 0, cohort, overrides),
          ("dsmil", 0): broken}
  outcomes = tables.run_all(runs, str(out), workers=1)
  assert outcomes[("abmil", 0)]["skipped"] and os.path.getmtime(done) == mtime
  assert not outcomes[("dsmil", 0)]["ok"] and "no.csv" in outcomes[("dsmil", 0)]["error"]
  table = tables.markdown(["abmil", "dsmil"], {"abmil": "abmil", "dsmil": "dsmil"}, [0], outcomes,
                          "# t")
  assert "| DSMIL | — (1 failed) |" in table and "## Runs without a result" in table


def test_third_table_reports_each_seeds_mean_over_draws():
  shots = lambda v: {"shots": {k: {"test": {"balanced_accuracy": {"mean": v}, "auc": {"mean": v}}}
                               for k in ("1", "all")}}
  outcomes = {("tangle", 0): {"ok": True, "probe": shots(0.6)},
              ("tangle", 1): {"ok": True, "probe": shots(0.8)},
              ("intra", 0): {"ok": False, "error": tables.NOT_RUN},
              ("intra", 1): {"ok": False, "error": tables.NOT_RUN}}
  text = tables.probe_markdown(["tangle", "intra"], {"tangle": "tangle", "intra": "intra"}, [0, 1],
                               outcomes, "# t")
  assert "| TANGLE | 0.700 ± 0.141 | 0.700 ± 0.141 | 2 |" in text  # sample std of 0.6, 0.8
  assert "| Intra | — (2 not run yet) |" in text
