"""The command line end to end on a tiny synthetic cohort: every stage, every output file."""

import csv
import json
import os

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from conftest import (assert_checkpoints_match, run_module, run_split, saved_device_counts,
                      tiny_flags)
from gimp_jax import predict, stacking
from gimp_jax.configs import nsclc
from gimp_jax.data import cohort as cohort_lib


@pytest.fixture(scope="module")
def cohort(cohort20):
  return cohort20


def run_cli(args, **kw):
  return run_module("gimp_jax.main", *args, **kw)


def check_linear_reference(results, paths, workdir):
  """results["reference"]["both"] against scikit-learn fitted here on the run's own patients: the
  mean of every patch read with h5py beside the run's normalised genes, standardised on train; the
  chosen C has the best validation accuracy of the grid and gives the stored val/test numbers."""
  config = nsclc.get_config("tiny")
  for key in ("features_dir", "expression", "labels"):
    config.data[key] = paths[key]
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  ids = np.array([p.patient_id for p in cohort.patients])
  split = run_split(ids, workdir / "report", "predictions")
  for name in ("val", "test"):
    np.testing.assert_array_equal(split[name], cohort.split(name))  # the run's patients
  slides = {}
  with open(paths["labels"], encoding="utf-8") as f:
    for row in csv.DictReader(f):
      slides.setdefault(row["patient_id"], []).append(row["slide_id"])
  pooled = []
  for pid in ids:
    rows = []
    for slide in slides[pid]:
      with h5py.File(os.path.join(paths["features_dir"], f"{slide}.h5"), "r") as f:
        rows.append(f["features"][()])
    pooled.append(np.concatenate(rows).mean(0))
  x = np.concatenate([np.array(pooled, np.float64), cohort.genes.astype(np.float64)], 1)
  mu, sd = x[split["train"]].mean(0), x[split["train"]].std(0)
  z = (x - mu) / np.where(sd > 0, sd, 1.0)
  y = cohort.labels
  ref = results["reference"]["both"]

  def fit(c):
    model = LogisticRegression(C=c, max_iter=5000).fit(z[split["train"]], y[split["train"]])
    return {name: (np.mean(model.predict(z[split[name]]) == y[split[name]]),
                   roc_auc_score(y[split[name]], model.predict_proba(z[split[name]])[:, 1]))
            for name in ("val", "test")}
  chosen = fit(ref["C"])
  assert all(fit(c)["val"][0] <= chosen["val"][0] for c in (1e-3, 1e-2, 1e-1, 1.0))
  for name in ("val", "test"):
    np.testing.assert_allclose([ref[f"{name}_accuracy"], ref[f"{name}_auc"]], chosen[name],
                               atol=1e-6)
    np.testing.assert_allclose(results[f"reference_{name}_accuracy"], chosen[name][0], atol=1e-6)
  np.testing.assert_allclose(results["vs_reference_test_accuracy"],
                             results["test_accuracy"] - chosen["test"][0], atol=1e-6)
  assert set(results["reference"]) >= {"slide", "genes", "both"}
  # Stacking: p_model^(1 - w) p_linear^w with the model's probabilities from predictions_*.csv;
  # w minimises the validation cross-entropy over 0, 0.1, ..., 1.
  linear = LogisticRegression(C=ref["C"], max_iter=5000).fit(z[split["train"]], y[split["train"]])
  blend = {}
  for name in ("val", "test"):
    with open(workdir / "report" / f"predictions_{name}.csv", encoding="utf-8") as f:
      rows = {r["patient_id"]: r for r in csv.DictReader(f)}
    pm = np.array([[float(rows[p][f"prob_class_{c}"]) for c in range(2)]
                   for p in ids[split[name]]])
    pl = linear.predict_proba(z[split[name]])
    blend[name] = lambda w, pm=pm, pl=pl: (lambda q: q / q.sum(1, keepdims=True))(
        np.maximum(pm, 1e-12) ** (1 - w) * pl ** w)
  grid = np.linspace(0, 1, 11)
  yv, yt = y[split["val"]], y[split["test"]]
  loss = [-np.mean(np.log(blend["val"](w)[np.arange(yv.size), yv])) for w in grid]
  w = results["stack_weight"]
  assert np.isclose(grid, w).any() and loss[int(np.argmin(np.abs(grid - w)))] <= min(loss) + 1e-5
  np.testing.assert_allclose(results["stack_test_accuracy"],
                             np.mean(blend["test"](w).argmax(1) == yt), atol=1e-9)
  # `gimp_jax.predict` on the same patients blends its probabilities with the same linear fit
  # and w, kept in the workdir by the test stage.
  got = predict.predict(str(workdir), config)
  rows = np.array([list(ids).index(p) for p in got["patient_id"]])
  q = np.maximum(got["probs"], 1e-12) ** (1 - w) * linear.predict_proba(z[rows]) ** w
  np.testing.assert_allclose(got["stacked"], q / q.sum(1, keepdims=True), rtol=1e-6, atol=1e-9)
  predict.write_csv(str(workdir.parent / "p.csv"), got)
  with open(workdir.parent / "p.csv", encoding="utf-8") as f:
    written = list(csv.DictReader(f))
  np.testing.assert_allclose([[float(r[f"stacked_prob_class_{c}"]) for c in range(2)]
                              for r in written], got["stacked"], rtol=1e-7)
  assert [r["stacked_predicted_name"] for r in written] == [
      f"class_{k}" for k in got["stacked"].argmax(1)]
  # The kept fit belongs to these parameters: a finetune stage rerun without the test stage (here:
  # the kept fingerprint no longer matches) gives no stacked columns rather than a stale blend.
  kept = workdir / stacking.FILE
  with np.load(kept) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["model_fingerprint"] = np.str_("0" * 64)
  np.savez(kept, **arrays)
  assert predict.predict(str(workdir), config)["stacked"] is None


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
  check_linear_reference(results, cohort, workdir)
  assert "reference_test_accuracy=" in proc.stdout and "vs_reference_test_accuracy=" in proc.stdout
  assert "stack_test_accuracy=" in proc.stdout and "stack_weight=" in proc.stdout
  report_md = (workdir / "report" / "report.md").read_text()
  assert "Penalised linear reference" in report_md and "stacked, w = " in report_md
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


def test_training_on_a_two_device_mesh_matches_one_device(cohort, tmp_path):
  """The CLI's data-parallel path (2 XLA host devices): every training stage trains on the mesh,
  as the sharding its checkpoints record shows (each stage's batch splits over the 2 devices: 12
  training patients in one gene pre-training batch, 4 windows, bags in pairs), and gives the
  single-device metrics and checkpoints (`assert_checkpoints_match`: 1e-5)."""
  stages = ("gene_pretrain", "gene_pretrain_best", "pretrain", "finetune", "finetune_best")
  metrics = {}
  for devices in (1, 2):
    workdir = tmp_path / f"run{devices}"
    args = tiny_flags(cohort, workdir) + [
        "--config.stages=('gene_pretrain', 'pretrain', 'finetune')",
        "--config.gene_pretrain.epochs=1", "--config.pretrain.epochs=1",
        "--config.finetune.epochs=1"]
    proc = run_cli(args, env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not split" not in proc.stderr
    for stage in stages:
      assert saved_device_counts(str(workdir), stage) == {devices}, stage
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    metrics[devices] = {(r.pop("stage"), r.pop("step")): r for r in rows}
    for row in metrics[devices].values():
      for timing in ("step_s", "wait_s", "patches_per_s"):
        row.pop(timing, None)
  assert metrics[2].keys() == metrics[1].keys()
  assert {stage for stage, _ in metrics[1]} == {
      "gene_pretrain", "gene_pretrain_val", "pretrain", "finetune", "finetune_val"}
  for key, row in metrics[1].items():
    assert metrics[2][key].keys() == row.keys(), key
    np.testing.assert_allclose([metrics[2][key][k] for k in row], list(row.values()),
                               rtol=1e-4, atol=1e-5, err_msg=str(key))
  learning_rate = nsclc.get_config("tiny").optim.learning_rate
  for stage in stages:
    assert_checkpoints_match(str(tmp_path / "run2"), str(tmp_path / "run1"), stage, 1e-5,
                             learning_rate)
