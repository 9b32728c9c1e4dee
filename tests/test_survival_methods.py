"""Every method config traces its training steps as a survival model (config.task = "survival");
the methods whose survival path is their own train and evaluate end to end at tiny size, through
`train_and_evaluate`, on one tiny synthetic survival cohort: each stage's loss is finite and the
C-index in results.json is Harrell's on the risks it wrote; and `predict` on a survival run (MCAT)
writes risks and per-bin survival.

End to end: GiMP (gene pre-training on the survival loss, the triplet on the uncensored cases'
time bins), DSMIL (both streams take the survival loss), CLAM-SB and CLAM-MB (the instance loss on
the time bin); every other method fine-tunes with `supervised.finetune_loss`, as GiMP does, and
pre-trains without labels (the probe and `predict` tests run TANGLE and MCAT)."""

import csv
import json
import os

import numpy as np
import pytest
from sksurv.metrics import concordance_index_censored

from conftest import assert_every_config_traces
from gimp_jax import predict, preflight
from gimp_jax.configs import methods as method_configs
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


def _survival_config(name, cohort):
  config = method_configs.get_config(name, "tiny")
  for key in ("features_dir", "expression", "labels"):
    config.data[key] = cohort[key]
  config.task = "survival"
  config.data.bucket_sizes = (64,)
  config.pretrain.window = 16
  return config


def test_every_method_config_traces_its_survival_steps(cohort, tmp_path):
  assert_every_config_traces(lambda name: _survival_config(name, cohort),
                             preflight.preflight(_survival_config("gimp", cohort), str(tmp_path)))


@pytest.mark.parametrize("name", ["gimp", "dsmil", "clam_sb", "clam_mb"])
def test_method_trains_a_survival_head(name, cohort, tmp_path):
  config = method_configs.get_config(name, "tiny")
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


def test_predict_on_a_survival_run_writes_risk_and_per_bin_survival(cohort, tmp_path):
  """`predict` on a survival workdir (MCAT, its signature tokens rebuilt from normalizer.npz): the
  risks the run reported for its test cases, hazards and survival per time bin, the known
  outcomes copied; and the same risks from a CSV without outcomes."""
  config = method_configs.get_config("mcat", "tiny")
  for key in ("features_dir", "expression", "labels"):
    config.data[key] = cohort[key]
  config.task = "survival"
  config.stages = ("finetune", "test")
  config.report.tsne = False
  config.report.heatmaps = 0
  config.finetune.epochs = 1
  config.data.bucket_sizes = (64,)
  config.finetune.batch_size = 2
  workdir = str(tmp_path / "run")
  run.train_and_evaluate(config, workdir)
  bins = preflight.preflight(config, workdir).class_names
  out = str(tmp_path / "predictions.csv")
  predict.write_csv(out, predict.predict(workdir, config))
  with open(out, encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
    header = rows and list(rows[0])
  assert header == (["patient_id", "time", "censorship", "modality", "risk"] +
                    [f"hazard_{b}" for b in bins] + [f"survival_{b}" for b in bins] +
                    ["stacked_risk"])
  with open(cohort["labels"], encoding="utf-8") as f:
    outcome = {r["case_id"]: (float(r["survival_months"]), int(r["censorship"]))
               for r in csv.DictReader(f)}
  assert {r["patient_id"] for r in rows} == set(outcome)
  for r in rows:
    assert (float(r["time"]), int(r["censorship"])) == outcome[r["patient_id"]]
    h = np.asarray([float(r[f"hazard_{b}"]) for b in bins])
    s = np.asarray([float(r[f"survival_{b}"]) for b in bins])
    np.testing.assert_allclose(s, np.cumprod(1 - h), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(r["risk"]), -s.sum(), rtol=1e-5)
  risk = {r["patient_id"]: float(r["risk"]) for r in rows}
  with open(os.path.join(workdir, "report", "risk_test.csv"), encoding="utf-8") as f:
    reported = {r["patient_id"]: float(r["risk"]) for r in csv.DictReader(f)}
  assert reported
  for pid, want in reported.items():
    np.testing.assert_allclose(risk[pid], want, rtol=1e-4, atol=1e-5)
  # The stacked risks of the test cases give the C-index the run reported for its stack
  # (scikit-survival's, computed here).
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  stacked = [(outcome[p][1] == 0, outcome[p][0], float(r["stacked_risk"]))
             for p in reported for r in rows if r["patient_id"] == p]
  events, times, scores = (np.array(v) for v in zip(*stacked))
  np.testing.assert_allclose(concordance_index_censored(events, times, scores)[0],
                             results["stack_test_c_index"], atol=1e-9)
  bare = tmp_path / "new.csv"  # new patients: no outcome columns
  with open(cohort["labels"], encoding="utf-8") as f:
    bare.write_text("case_id,slide_id\n" + "".join(f"{r['case_id']},{r['slide_id']}\n"
                                                    for r in csv.DictReader(f)))
  config.data.labels = str(bare)
  predict.write_csv(out, predict.predict(workdir, config))
  with open(out, encoding="utf-8") as f:
    again = list(csv.DictReader(f))
  assert all(r["time"] == r["censorship"] == "" for r in again)
  np.testing.assert_allclose([float(r["risk"]) for r in again],
                             [risk[r["patient_id"]] for r in again], rtol=1e-6)
