"""Every method of GiMP's Tables 1 and 2 trains and evaluates end to end at tiny size, through
`train_and_evaluate`, on one tiny synthetic cohort; and the tables script resumes and reports."""

import csv
import importlib
import json
import os
import re

import h5py
import numpy as np
import pytest

from experiments import tables
from gimp_jax.data import synthetic
from gimp_jax.train import run

RUN = tables.GROUPS["all"]  # Table 2's GroupMSA row and full model are Table 1's GiMP configs


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=12, genes=96, feature_dim=32, min_patches=8,
                               max_patches=30, seed=0)


def tiny_config(name, paths):
  config = importlib.import_module(f"gimp_jax.configs.methods.{name}").get_config("tiny")
  for key, value in paths.items():
    config.data[key] = value
  config.report.tsne = False
  config.report.heatmaps = 1
  # One epoch per stage, one bag shape: this file runs 19 methods, mostly XLA compilation.
  config.gene_pretrain.epochs = config.pretrain.epochs = config.finetune.epochs = 1
  config.data.bucket_sizes = (64,)
  config.pretrain.window = 16
  config.finetune.batch_size = 1
  return config


@pytest.mark.parametrize("name", RUN)
def test_method_trains_and_evaluates(name, cohort, tmp_path, run_numbers):
  config = tiny_config(name, cohort)
  results = run.train_and_evaluate(config, str(tmp_path))
  expected = set(config.stages) - {"test"}
  assert set(results["stages"]) == expected
  for stage in results["stages"].values():
    assert stage["steps"] > 0 and np.isfinite(stage["final_metrics"]["loss"])
  if "pretrain" in expected:  # the objective's own terms were logged
    assert len(results["stages"]["pretrain"]["final_metrics"]) > 2
  written = run_numbers(str(tmp_path), cohort["labels"])  # == NumPy on predictions_*.csv
  assert written["method"] == config.method
  for split in ("val", "test"):
    assert written[f"{split}_accuracy"] == results[f"{split}_accuracy"]
  # Every method answers the attention protocol: its first test patient's slides get heatmaps,
  # whose score files hold one row per patch of the slide's feature file.
  report = tmp_path / "report"
  markdown = (report / "report.md").read_text()
  drawn = re.findall(r"\]\((heatmap_[^)]+\.png)\)", markdown)
  slide_ids = re.findall(r"^### .*: slide (\S+)$", markdown, flags=re.M)
  assert drawn and len(drawn) == len(slide_ids)
  for png, slide_id in zip(drawn, slide_ids):
    assert (report / png).stat().st_size > 0
    stem = png[len("heatmap_"):-len(".png")]
    with open(report / "slides" / stem / "scores.csv") as f:
      rows = list(csv.DictReader(f))
    with h5py.File(os.path.join(cohort["features_dir"], f"{slide_id}.h5")) as f:
      coords = f["coords"][:]
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [tuple(c) for c in coords.tolist()]
    scores = np.array([float(r["attention"]) for r in rows])
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0) and scores.max() > 0
    assert (report / "slides" / stem / "scores.geojson").is_file()


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
