"""Every method (`gimp_jax.methods`) trains and evaluates end to end at tiny size, through
`train_and_evaluate`, on one tiny synthetic cohort, and draws its heatmaps; every method config
(`configs/methods`, the ablations of Tables 1 and 2 included) builds its models and traces each of
its training steps."""

import csv
import os
import re

import h5py
import numpy as np
import pytest

from conftest import assert_every_config_traces, one_config_per_method
from gimp_jax import preflight
from gimp_jax.configs import methods as method_configs
from gimp_jax.data import synthetic
from gimp_jax.train import run


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=12, genes=96, feature_dim=32, min_patches=8,
                               max_patches=30, seed=0)


def tiny_config(name, paths):
  config = method_configs.get_config(name, "tiny")
  for key, value in paths.items():
    config.data[key] = value
  config.report.tsne = False
  config.report.heatmaps = 1
  # One epoch per stage, one bag shape: mostly XLA compilation.
  config.gene_pretrain.epochs = config.pretrain.epochs = config.finetune.epochs = 1
  config.data.bucket_sizes = (64,)
  config.pretrain.window = 16
  config.finetune.batch_size = 1
  return config


def test_every_method_config_traces_its_training_steps(cohort, tmp_path):
  assert_every_config_traces(lambda name: tiny_config(name, cohort),
                             preflight.preflight(tiny_config("gimp", cohort), str(tmp_path)))


# TANGLE, TANGLE-Rec and Intra pre-train and probe (no test stage): end to end in test_probe.py.
@pytest.mark.parametrize("name", [n for n in one_config_per_method()
                                  if "test" in method_configs.get_config(n, "tiny").stages])
def test_method_trains_and_evaluates(name, cohort, tmp_path, run_numbers):
  config = tiny_config(name, cohort)
  results = run.train_and_evaluate(config, str(tmp_path))
  expected = set(config.stages) - {"test", "probe"}
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
