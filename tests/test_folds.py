"""Every fold in one command: a 5-fold survival run from MCAT-style labels and split files, its
per-fold results against a NumPy C-index on the risks it wrote, and the summary over folds."""

import csv
import json
import os
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.util import Surv

from conftest import run_split
from gimp_jax.configs.methods import abmil
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import synthetic
from gimp_jax.train import folds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_harrell(t, c, risk):
  """Harrell's C (event i before j; risk ties 1/2; an event tied with a censored time counts)."""
  num = den = 0.0
  for i in range(len(t)):
    for j in range(len(t)):
      if not c[i] and (t[i] < t[j] or (t[i] == t[j] and c[j] and i != j)):
        den += 1
        num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
  return num / den


@pytest.fixture(scope="module")
def mcat_cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("mcat")
  paths = synthetic.make_cohort(str(out), patients=25, genes=48, min_patches=20, max_patches=40,
                                feature_dim=32, seed=3, survival=True)
  with open(paths["labels"], encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  cases = list(dict.fromkeys(r["case_id"] for r in rows))
  censored = {r["case_id"]: int(r["censorship"]) for r in rows}
  # MCAT's split files: an index column, then train and val columns of case IDs; each val fold
  # holds events (interleave the event cases over the folds).
  order = sorted(cases, key=lambda c: (censored[c], c))
  held_out = [order[k::5] for k in range(5)]
  splits = out / "splits"
  splits.mkdir()
  for k in range(5):
    train = [c for c in cases if c not in held_out[k]]
    val = held_out[k] + [""] * (len(train) - len(held_out[k]))
    with open(splits / f"splits_{k}.csv", "w", encoding="utf-8") as f:
      f.write(",train,val\n" + "".join(f"{i},{a},{b}\n" for i, (a, b) in
                                       enumerate(zip(train, val))))
  return dict(paths, splits_dir=str(splits), held_out=held_out)


def check_cox_reference(results, paths, fold_dir):
  """results["reference"]["both"] against scikit-survival's elastic-net Cox fitted here on the
  fold's patients (val and test from the risk CSVs, train the rest): the mean of every patch read
  with h5py beside the run's normalised genes, standardised on train; the chosen penalty has the
  best validation C-index of the path and gives the stored val/test C-index."""
  config = abmil.get_config("tiny")
  config.task = "survival"
  for key in ("features_dir", "expression", "labels"):
    config.data[key] = paths[key]
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  ids = np.array([p.patient_id for p in cohort.patients])
  split = run_split(ids, fold_dir / "report", "risk")
  with open(paths["labels"], encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  pooled = []
  for pid in ids:
    feats = []
    for r in rows:
      if r["case_id"] == pid:
        with h5py.File(os.path.join(paths["features_dir"], f"{r['slide_id']}.h5"), "r") as f:
          feats.append(f["features"][()])
    pooled.append(np.concatenate(feats).mean(0))
  # The genes as the fold's run normalised them (its stored normaliser, fitted on its train).
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config),
                                  genes_lib.GeneNormalizer.load(str(fold_dir / "normalizer.npz")))
  x = np.concatenate([np.array(pooled, np.float64), cohort.genes.astype(np.float64)], 1)
  mu, sd = x[split["train"]].mean(0), x[split["train"]].std(0)
  z = (x - mu) / np.where(sd > 0, sd, 1.0)
  t, c = cohort.times.astype(np.float64), cohort.censorship
  model = CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.05, n_alphas=30, max_iter=5000)
  model.fit(z[split["train"]], Surv.from_arrays(c[split["train"]] == 0, t[split["train"]]))
  score = lambda name, a: np_harrell(t[split[name]], c[split[name]],
                                     model.predict(z[split[name]], alpha=a))
  ref = results["reference"]["both"]
  assert min(abs(model.alphas_ - ref["alpha"])) <= 1e-9 * ref["alpha"]
  assert all(score("val", a) <= ref["val_c_index"] + 1e-12 for a in model.alphas_)
  for name in ("val", "test"):
    np.testing.assert_allclose(ref[f"{name}_c_index"], score(name, ref["alpha"]), atol=1e-12)
  np.testing.assert_allclose(results["vs_reference_test_c_index"],
                             results["test_c_index"] - ref["test_c_index"], atol=1e-12)
  # Stacking: (1 - w) z_model + w z_linear, each risk standardised on validation, the model's
  # from risk_*.csv; w maximises the validation C-index over 0, 0.1, ..., 1 (ties: the smaller).
  zs = {}
  for src in ("model", "linear"):
    risk = {}
    for name in ("val", "test"):
      if src == "linear":
        risk[name] = model.predict(z[split[name]], alpha=ref["alpha"])
      else:
        with open(fold_dir / "report" / f"risk_{name}.csv", encoding="utf-8") as f:
          rows = {r["patient_id"]: float(r["risk"]) for r in csv.DictReader(f)}
        risk[name] = np.array([rows[p] for p in ids[split[name]]])
    zs[src] = {k: (v - risk["val"].mean()) / risk["val"].std() for k, v in risk.items()}
  stacked = lambda name, w: np_harrell(t[split[name]], c[split[name]],
                                       (1 - w) * zs["model"][name] + w * zs["linear"][name])
  grid = np.linspace(0, 1, 11)
  val = [stacked("val", w) for w in grid]
  np.testing.assert_allclose(results["stack_weight"], grid[int(np.argmax(val))], atol=1e-12)
  np.testing.assert_allclose(results["stack_test_c_index"],
                             stacked("test", results["stack_weight"]), atol=1e-12)


def test_five_fold_survival_cli_from_mcat_files(mcat_cohort, tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "gimp_jax.main",
       f"--config={os.path.join(ROOT, 'configs', 'methods', 'abmil.py')}:tiny",
       f"--workdir={workdir}", "--config.task=survival",
       "--config.stages=('finetune','test')", "--config.report.heatmaps=0",
       f"--config.data.features_dir={mcat_cohort['features_dir']}",
       f"--config.data.expression={mcat_cohort['expression']}",
       f"--config.data.labels={mcat_cohort['labels']}",
       f"--config.data.splits_dir={mcat_cohort['splits_dir']}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test_c_index=" in proc.stdout
  per_fold = []
  for k in range(5):
    fold_dir = workdir / f"fold_{k}"
    results = json.loads((fold_dir / "results.json").read_text())
    with open(fold_dir / "report" / "risk_test.csv", encoding="utf-8") as f:
      risk = list(csv.DictReader(f))
    assert {r["patient_id"] for r in risk} == set(mcat_cohort["held_out"][k])  # the file's val
    t = np.array([float(r["time"]) for r in risk])
    c = np.array([int(r["censorship"]) for r in risk])
    r = np.array([float(r["risk"]) for r in risk])
    np.testing.assert_allclose(results["test_c_index"], np_harrell(t, c, r), atol=1e-12)
    per_fold.append([results[n] for n in ("val_c_index", "test_c_index", "reference_test_c_index",
                                          "stack_test_c_index", "stack_weight")])
    assert (fold_dir / "report" / "km_test.png").exists()
    if k == 0:
      check_cox_reference(results, mcat_cohort, fold_dir)
  with open(workdir / "summary.csv", encoding="utf-8") as f:
    table = list(csv.reader(f))
  header = table[0]
  assert [row[0] for row in table[1:]] == ["0", "1", "2", "3", "4", "mean", "std"]
  cols = [header.index(n) for n in ("val_c_index", "test_c_index", "reference_test_c_index",
                                    "stack_test_c_index", "stack_weight")]
  assert "vs_reference_test_c_index" in header and "reference_test_c_index=" in proc.stdout
  got = np.array([[float(row[i]) for i in cols] for row in table[1:]])
  want = np.array(per_fold)
  np.testing.assert_allclose(got[:5], want, rtol=1e-5)
  np.testing.assert_allclose(got[5], want.mean(0), rtol=1e-5)
  np.testing.assert_allclose(got[6], want.std(0, ddof=1), rtol=1e-5)
  assert "mean ± std" in (workdir / "summary.md").read_text()


def test_summary_over_folds_matches_numpy(tmp_path):
  per_fold = [{"test_accuracy": a, "val_auc": b, "test_metrics": {}, "method": "x"}
              for a, b in [(0.5, 0.7), (0.75, 0.9), (1.0, 0.8)]]
  names, values = folds.summarize(per_fold)
  assert names == ["test_accuracy", "val_auc"]
  out = folds.write_summary(str(tmp_path), names, values)
  np.testing.assert_allclose(out["test_accuracy"], 0.75)
  np.testing.assert_allclose(out["test_accuracy_std"], np.std([0.5, 0.75, 1.0], ddof=1))
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["folds"] == 3 and saved["per_fold"][1] == {"test_accuracy": 0.75, "val_auc": 0.9}


def test_summary_is_written_by_process_zero_only(tmp_path, monkeypatch):
  """In a job of several processes the others return the same summary and write nothing."""
  values = np.array([[0.5], [1.0]])
  expected = {"test_accuracy": 0.75, "test_accuracy_std": np.std([0.5, 1.0], ddof=1)}
  for process in (1, 0):
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    workdir = tmp_path / f"process{process}"
    workdir.mkdir()
    assert folds.write_summary(str(workdir), ["test_accuracy"], values) == expected
  assert not os.listdir(tmp_path / "process1")
  assert sorted(os.listdir(tmp_path / "process0")) == ["summary.csv", "summary.json",
                                                      "summary.md"]


def test_every_split_file_is_checked_before_any_fold_trains(mcat_cohort, tmp_path):
  """A bad fold 3 stops the command before fold 0 trains: exit 2, one line per problem."""
  import shutil  # pylint: disable=g-import-not-at-top
  splits = tmp_path / "splits"
  shutil.copytree(mcat_cohort["splits_dir"], splits)
  with open(splits / "splits_3.csv", "a", encoding="utf-8") as f:
    f.write("99,TCGA-XX-0000,\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "gimp_jax.main",
       f"--config={os.path.join(ROOT, 'configs', 'methods', 'abmil.py')}:tiny",
       f"--workdir={tmp_path / 'run'}", "--config.task=survival",
       f"--config.data.features_dir={mcat_cohort['features_dir']}",
       f"--config.data.expression={mcat_cohort['expression']}",
       f"--config.data.labels={mcat_cohort['labels']}", f"--config.data.splits_dir={splits}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "splits_3.csv: line" in proc.stderr and "case TCGA-XX-0000: train: not in the cohort" \
      in proc.stderr
  assert not (tmp_path / "run" / "fold_0").exists()
