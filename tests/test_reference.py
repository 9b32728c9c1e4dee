"""experiments/reference.py: the paired difference and its interval against scipy's paired t-test,
the logistic-regression rows choosing C on validation only."""

import numpy as np
from scipy import stats

from experiments import reference


def test_paired_difference_matches_scipy_ttest_rel():
  a = {0: 0.90, 1: 0.85, 2: 0.88, 3: 0.91, 4: 0.87, 7: 0.5}   # seed 7 has no partner: ignored
  b = {0: 0.88, 1: 0.86, 2: 0.84, 3: 0.90, 4: 0.83, 9: 0.1}
  got = reference.paired_difference(a, b)
  x, y = np.array([a[s] for s in range(5)]), np.array([b[s] for s in range(5)])
  ci = stats.ttest_rel(x, y).confidence_interval(0.95)
  assert got["n"] == 5 and sorted(got["per_seed"]) == [0, 1, 2, 3, 4]
  np.testing.assert_allclose(got["mean"], np.mean(x - y), rtol=1e-12)
  np.testing.assert_allclose(got["ci95"], (ci.low, ci.high), rtol=1e-10)
  assert reference.paired_difference({0: 1.0}, {0: 0.5})["ci95"] is None


def test_logistic_regression_picks_c_on_validation_not_test():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((90, 5))
  labels = (x[:, 0] > 0).astype(int)
  splits = {"train": np.arange(0, 50), "val": np.arange(50, 70), "test": np.arange(70, 90)}
  flipped = labels.copy()
  flipped[splits["test"]] = 1 - flipped[splits["test"]]  # test labels that no C can fit
  a = reference.fit_and_score(x, labels, splits)
  b = reference.fit_and_score(x, flipped, splits)
  assert a["C"] == b["C"] and a["val_accuracy"] == b["val_accuracy"]
  np.testing.assert_allclose(a["test_accuracy"] + b["test_accuracy"], 1.0)
  assert a["test_accuracy"] > 0.8
