"""The command line end to end on a tiny synthetic cohort: every stage, every output file."""

import json
import os

import numpy as np
import pytest

from conftest import run_module, tiny_flags


@pytest.fixture(scope="module")
def cohort(cohort20):
  return cohort20


def run_cli(args, **kw):
  return run_module("gimp_jax.main", *args, **kw)


def test_cli_runs_all_stages_and_writes_every_output(cohort, tmp_path, run_numbers):
  workdir = tmp_path / "run"
  proc = run_cli(tiny_flags(cohort, workdir))
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
  again = run_cli(tiny_flags(cohort, workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = json.loads((workdir / "results.json").read_text())
  assert rerun["test_accuracy"] == results["test_accuracy"]
  assert rerun["stages"]["pretrain"]["steps"] == results["stages"]["pretrain"]["steps"]


def test_bad_input_is_one_line_and_exit_code_2(cohort, tmp_path):
  bad = dict(cohort, labels=str(tmp_path / "missing.csv"))
  proc = run_cli(tiny_flags(bad, tmp_path / "run"))
  assert proc.returncode == 2
  assert "missing.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_pretraining_on_a_two_device_mesh_matches_one_device(cohort, tmp_path):
  """The CLI's data-parallel path (2 XLA host devices) gives the single-device losses."""
  losses = {}
  for devices in (1, 2):
    workdir = tmp_path / f"run{devices}"
    args = tiny_flags(cohort, workdir) + [
        "--config.stages=('pretrain',)", "--config.model.gene_encoder=none",
        "--config.pretrain.epochs=1"]
    proc = run_cli(args, env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("does not split" in proc.stderr) is False
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses[devices] = [r["loss"] for r in rows if r["stage"] == "pretrain"]
  assert len(losses[1]) == len(losses[2]) > 0
  np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4, atol=1e-5)
