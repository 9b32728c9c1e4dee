"""The command line end to end on a tiny synthetic cohort: every stage, every output file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gimp_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=20, genes=96, min_patches=40, max_patches=90,
                               feature_dim=32, seed=0)


def tiny_overrides(paths, workdir):
  return [f"--config={os.path.join(ROOT, 'configs', 'nsclc.py')}:tiny", f"--workdir={workdir}",
          f"--config.data.features_dir={paths['features_dir']}",
          f"--config.data.expression={paths['expression']}",
          f"--config.data.labels={paths['labels']}"]


def run_cli(args, **kw):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "gimp_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, **kw)


def test_cli_runs_all_stages_and_writes_every_output(cohort, tmp_path, run_numbers):
  workdir = tmp_path / "run"
  proc = run_cli(tiny_overrides(cohort, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test_accuracy=" in proc.stdout
  results = json.loads((workdir / "results.json").read_text())
  for key in ("test_accuracy", "test_auc", "test_f1", "val_accuracy", "config", "versions"):
    assert key in results
  assert set(results["stages"]) == {"gene_pretrain", "pretrain", "finetune"}
  for stage in results["stages"].values():
    assert stage["steps"] > 0 and "loss" in stage["final_metrics"]
  # Progress in the log (no terminal): stage k/N, each stage's compile announced, its last step.
  log = [x.split("] ", 1)[1] for x in proc.stderr.splitlines() if x[:1] == "I" and "] " in x]
  names = ("gene_pretrain", "pretrain", "finetune", "test")
  assert [x for x in log if x.startswith("Stage ")] == [f"Stage {k}/4: {n}"
                                                      for k, n in enumerate(names, 1)]
  for name, stage in results["stages"].items():
    n = stage["steps"]
    assert f"{name}: compiling the training step (XLA; the first step takes longer), then {n} " \
        "step(s) to go" in log
    if n > 1:
      assert any(x.startswith(f"{name}: step {n}/{n} (100%), ") and ", done, loss " in x
                 for x in log), log
  run_numbers(str(workdir), cohort["labels"])  # results.json == NumPy on predictions_*.csv
  assert (workdir / "metrics.jsonl").stat().st_size > 0
  assert any(f.startswith("events") for f in os.listdir(workdir / "tb"))
  report = workdir / "report"
  for name in ("report.md", "roc_test.png", "confusion_test.png", "tsne_train.png",
               "predictions_test.csv"):
    assert (report / name).exists(), name
  assert any(f.startswith("heatmap_") for f in os.listdir(report))
  for stage in ("gene_pretrain", "pretrain", "finetune", "finetune_best"):
    assert os.listdir(workdir / "checkpoints" / stage)

  # Running the same command again skips the finished stages and gives the same numbers.
  again = run_cli(tiny_overrides(cohort, workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = json.loads((workdir / "results.json").read_text())
  assert rerun["test_accuracy"] == results["test_accuracy"]
  assert rerun["stages"]["pretrain"]["steps"] == results["stages"]["pretrain"]["steps"]


def test_bad_input_is_one_line_and_exit_code_2(cohort, tmp_path):
  bad = dict(cohort, labels=str(tmp_path / "missing.csv"))
  proc = run_cli(tiny_overrides(bad, tmp_path / "run"))
  assert proc.returncode == 2
  assert "missing.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_pretraining_on_a_two_device_mesh_matches_one_device(cohort, tmp_path):
  """The CLI's data-parallel path (2 XLA host devices) gives the single-device losses."""
  losses = {}
  for devices in (1, 2):
    workdir = tmp_path / f"run{devices}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    args = tiny_overrides(cohort, workdir) + [
        "--config.stages=('pretrain',)", "--config.model.gene_encoder=none",
        "--config.pretrain.epochs=1"]
    proc = subprocess.run([sys.executable, "-m", "gimp_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("does not split" in proc.stderr) is False
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses[devices] = [r["loss"] for r in rows if r["stage"] == "pretrain"]
  assert len(losses[1]) == len(losses[2]) > 0
  np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4, atol=1e-5)
