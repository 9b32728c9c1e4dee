"""Every method (`gimp_jax.methods`) trains and evaluates end to end at tiny size, through
`train_and_evaluate`, on one tiny synthetic cohort; every method config (`configs/methods`, the
ablations of Tables 1 and 2 included) builds its models and traces each of its training steps."""

import numpy as np
import pytest

from conftest import one_config_per_method, trace_stages
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
  config.report.heatmaps = 0
  # One epoch per stage, one bag shape: this file runs 19 methods, mostly XLA compilation.
  config.gene_pretrain.epochs = config.pretrain.epochs = config.finetune.epochs = 1
  config.data.bucket_sizes = (64,)
  config.pretrain.window = 16
  config.finetune.batch_size = 1
  return config


def test_every_method_config_traces_its_training_steps(cohort, tmp_path):
  loaded = preflight.preflight(tiny_config("gimp", cohort), str(tmp_path))
  for name in method_configs.known():
    config = tiny_config(name, cohort)
    traced = trace_stages(config, loaded)
    assert set(traced) == set(config.stages) - {"test", "probe"}, name
    for metrics in traced.values():
      assert metrics["loss"].shape == () and "grad_norm" in metrics, name


@pytest.mark.parametrize("name", one_config_per_method())
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
