"""gimp_jax/reference.py (the penalised linear reference of every run): mean pooling read in chunks
against h5py, the penalty chosen on validation only, the Cox row against scikit-survival fitted
here."""

import csv
import os

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from gimp_jax import reference
from gimp_jax.configs import nsclc
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import synthetic


def test_mean_pooled_reads_in_chunks_and_averages_every_slide(tmp_path, monkeypatch):
  paths = synthetic.make_cohort(str(tmp_path), patients=12, genes=24, min_patches=20,
                                max_patches=50, feature_dim=32, seed=1, two_slide_fraction=0.5)
  config = nsclc.get_config("tiny")
  for key in ("features_dir", "expression", "labels"):
    config.data[key] = paths[key]
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  monkeypatch.setattr(reference, "CHUNK_ROWS", 7)  # several chunks per slide
  got = reference.mean_pooled(cohort)
  with open(paths["labels"], encoding="utf-8") as f:
    slides = {}
    for row in csv.DictReader(f):
      slides.setdefault(row["patient_id"], []).append(row["slide_id"])
  assert any(len(s) == 2 for s in slides.values())
  for i, patient in enumerate(cohort.patients):
    rows = []
    for slide in slides[patient.patient_id]:
      with h5py.File(os.path.join(paths["features_dir"], f"{slide}.h5"), "r") as f:
        rows.append(f["features"][()])
    np.testing.assert_allclose(got[i], np.concatenate(rows).mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(reference.mean_pooled(cohort, np.array([3, 0])), got[[3, 0]])


def test_logistic_regression_picks_c_on_validation_not_test():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((90, 5))
  labels = (x[:, 0] > 0).astype(int)
  splits = {"train": np.arange(0, 50), "val": np.arange(50, 70), "test": np.arange(70, 90)}
  flipped = labels.copy()
  flipped[splits["test"]] = 1 - flipped[splits["test"]]  # test labels that no C can fit
  a, fit = reference.fit_logistic(x, labels, splits, 2)
  b, _ = reference.fit_logistic(x, flipped, splits, 2)
  assert a["C"] == b["C"] and a["val_accuracy"] == b["val_accuracy"]
  np.testing.assert_allclose(a["test_accuracy"] + b["test_accuracy"], 1.0)
  assert a["test_accuracy"] > 0.8
  # The chosen C refitted here with scikit-learn gives the same test accuracy.
  mu, sd = x[:50].mean(0), x[:50].std(0)
  model = LogisticRegression(C=a["C"], max_iter=5000).fit((x[:50] - mu) / sd, labels[:50])
  np.testing.assert_allclose(a["test_accuracy"],
                             np.mean(model.predict((x[70:] - mu) / sd) == labels[70:]))
  np.testing.assert_allclose(fit.predict(x[70:]), model.predict_proba((x[70:] - mu) / sd),
                             atol=1e-12)


def test_cox_row_matches_scikit_survival_and_missing_genes_are_the_training_mean():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((300, 6))
  eta = x[:, 0] - 0.5 * x[:, 1]
  times = rng.exponential(np.exp(-eta))
  censorship = (rng.uniform(size=300) < 0.3).astype(int)
  splits = {"train": np.arange(0, 150), "val": np.arange(150, 225), "test": np.arange(225, 300)}
  got, fit = reference.fit_cox(x, times, censorship, splits)
  mu, sd = x[:150].mean(0), x[:150].std(0)
  z = (x - mu) / sd
  model = CoxnetSurvivalAnalysis(l1_ratio=reference.L1_RATIO, alpha_min_ratio=0.05,
                                 n_alphas=30, max_iter=5000)
  model.fit(z[:150], Surv.from_arrays(censorship[:150] == 0, times[:150]))
  c = lambda idx, a: concordance_index_censored(censorship[idx] == 0, times[idx],
                                                model.predict(z[idx], alpha=a))[0]
  val = [c(splits["val"], a) for a in model.alphas_]
  best = max(a for a, v in zip(model.alphas_, val) if v == max(val))
  assert got["alpha"] == best
  np.testing.assert_allclose(got["val_c_index"], max(val), atol=1e-12)
  np.testing.assert_allclose(got["test_c_index"], c(splits["test"], best), atol=1e-12)
  np.testing.assert_allclose(fit.predict(x[225:]), model.predict(z[225:], alpha=best), atol=1e-12)
  bayes = concordance_index_censored(censorship[225:] == 0, times[225:], eta[225:])[0]
  assert got["test_c_index"] > bayes - 0.05 and got["test_c_index"] > 0.6
  # A patient without expression (NaN) counts as the training mean: the same as a mean row.
  missing = x.copy()
  missing[260, 2:] = np.nan  # a test patient
  filled = x.copy()
  filled[260, 2:] = mu[2:]
  assert reference.fit_cox(missing, times, censorship, splits)[0] == reference.fit_cox(
      filled, times, censorship, splits)[0]


def test_a_kept_fit_predicts_as_scikit_learn_for_three_classes_and_a_class_unseen(tmp_path):
  """`LinearFit` saved and loaded: probabilities equal to LogisticRegression.predict_proba (three
  classes seen in training, multinomial; a fourth class of the cohort never seen gets 0), NaN
  counted as the training mean."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((120, 4))
  labels = np.argmax(x[:, :3] + 0.3 * rng.standard_normal((120, 3)), 1)
  splits = {"train": np.arange(0, 80), "val": np.arange(80, 100), "test": np.arange(100, 120)}
  numbers, fit = reference.fit_logistic(x, labels, splits, 4)
  fit.save(str(tmp_path / "fit.npz"), extra=np.arange(3))
  loaded, extra = reference.LinearFit.load(str(tmp_path / "fit.npz"))
  np.testing.assert_array_equal(extra["extra"], np.arange(3))
  mu, sd = x[:80].mean(0), x[:80].std(0)
  model = LogisticRegression(C=numbers["C"], max_iter=5000).fit((x[:80] - mu) / sd, labels[:80])
  new = x[100:].copy()
  new[0, 1] = np.nan
  filled = new.copy()
  filled[0, 1] = mu[1]
  got = loaded.predict(new)
  assert got.shape == (20, 4) and np.all(got[:, 3] == 0)
  np.testing.assert_allclose(got[:, :3], model.predict_proba((filled - mu) / sd), atol=1e-10)
