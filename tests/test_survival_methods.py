"""Every method of Tables 1 and 2 trains and evaluates as a survival model (config.task =
"survival") at tiny size, through `train_and_evaluate`, on one tiny synthetic survival cohort:
each stage's loss is finite and the C-index in results.json is Harrell's on the risks it wrote."""

import csv
import importlib
import os

import numpy as np
import pytest

from experiments import tables
from gimp_jax.data import synthetic
from gimp_jax.train import run


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=16, genes=96, feature_dim=32, min_patches=8,
                               max_patches=30, seed=2, survival=True)


def harrell(t, c, risk):
  """Harrell's C in NumPy (risk ties 1/2; an event tied with a censored time counts)."""
  num = den = 0.0
  for i in range(len(t)):
    for j in range(len(t)):
      if not c[i] and (t[i] < t[j] or (t[i] == t[j] and c[j] and i != j)):
        den += 1
        num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
  return num / den if den else float("nan")


@pytest.mark.parametrize("name", tables.GROUPS["all"])
def test_method_trains_a_survival_head(name, cohort, tmp_path):
  config = importlib.import_module(f"gimp_jax.configs.methods.{name}").get_config("tiny")
  for key in ("features_dir", "expression", "labels"):
    config.data[key] = cohort[key]
  config.task = "survival"
  config.report.tsne = False
  config.report.heatmaps = 0
  config.gene_pretrain.epochs = config.pretrain.epochs = config.finetune.epochs = 1
  config.data.bucket_sizes = (64,)
  config.pretrain.window = 16
  config.finetune.batch_size = 2
  results = run.train_and_evaluate(config, str(tmp_path))
  assert results["num_classes"] == config.survival.num_bins
  for stage in results["stages"].values():
    assert stage["steps"] > 0 and np.isfinite(stage["final_metrics"]["loss"])
  for split in ("val", "test"):
    with open(os.path.join(tmp_path, "report", f"risk_{split}.csv"), encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == results["splits"][split]
    want = harrell([float(r["time"]) for r in rows], [int(r["censorship"]) for r in rows],
                   [float(r["risk"]) for r in rows])
    np.testing.assert_allclose(results[f"{split}_c_index"], want, atol=1e-12)
