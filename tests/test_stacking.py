"""`gimp_jax.stacking` against NumPy, scikit-learn and scikit-survival computed here: the weight is
the grid's minimiser of the validation cross-entropy (maximiser of the validation C-index), and
the test numbers are those of the blend at that weight."""

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from gimp_jax import reference
from gimp_jax import stacking

GRID = np.linspace(0.0, 1.0, 11)


def _probs(logit):
  p1 = 1.0 / (1.0 + np.exp(-logit))
  return np.stack([1.0 - p1, p1], 1)


def _classification(seed, n=400):
  """Two experts that each see half of the evidence: their blend beats either alone."""
  rng = np.random.default_rng(seed)
  a, b = rng.standard_normal(n), rng.standard_normal(n)
  labels = (a + b + 0.3 * rng.standard_normal(n) > 0).astype(int)
  model = _probs(3.0 * a + 0.5 * rng.standard_normal(n))  # overconfident, sees a
  linear = _probs(1.5 * b + 0.5 * a)  # sees b, a little of a
  half = n // 2
  pred = {"val": {"label": labels[:half], "probs": model[:half]},
          "test": {"label": labels[half:], "probs": model[half:]}}
  return pred, {"val": linear[:half], "test": linear[half:]}


def _np_blend(pm, pl, w):
  """p_m^(1 - w) p_l^w, renormalised (powers, not logs)."""
  q = pm ** (1.0 - w) * pl ** w
  return q / q.sum(1, keepdims=True)


def test_classification_weight_minimises_validation_cross_entropy():
  pred, linear = _classification(0)
  got = stacking.stack("classification", pred, linear)
  losses = [log_loss(pred["val"]["label"], _np_blend(pred["val"]["probs"], linear["val"], w),
                     labels=[0, 1]) for w in GRID]
  w = GRID[int(np.argmin(losses))]
  assert 0.0 < w < 1.0  # both experts carry evidence
  np.testing.assert_allclose(got["stack_weight"], w, atol=1e-12)
  for split in ("val", "test"):
    p = _np_blend(pred[split]["probs"], linear[split], w)
    y = pred[split]["label"]
    np.testing.assert_allclose(got[f"stack_{split}_accuracy"],
                               accuracy_score(y, p.argmax(1)), atol=1e-12)
    np.testing.assert_allclose(got[f"stack_{split}_auc"], roc_auc_score(y, p[:, 1]), atol=1e-9)
  # The blend beats each expert alone on test.
  y = pred["test"]["label"]
  for alone in (pred["test"]["probs"], linear["test"]):
    assert got["stack_test_auc"] > roc_auc_score(y, alone[:, 1])


def test_the_ends_of_the_grid_are_the_model_and_the_linear_model():
  pred, linear = _classification(1)
  np.testing.assert_allclose(stacking.blend_probs(pred["val"]["probs"], linear["val"], 0.0),
                             pred["val"]["probs"], atol=1e-12)
  np.testing.assert_allclose(stacking.blend_probs(pred["val"]["probs"], linear["val"], 1.0),
                             linear["val"], atol=1e-12)
  # A linear model that is right on validation with certainty takes all the weight...
  perfect = {s: np.eye(2)[pred[s]["label"]] * 0.98 + 0.01 for s in ("val", "test")}
  assert stacking.stack("classification", pred, perfect)["stack_weight"] == 1.0
  # ... and a model that is (with a saturated softmax: exact zeros) keeps it.
  exact = {s: dict(pred[s], probs=np.eye(2)[pred[s]["label"]]) for s in ("val", "test")}
  got = stacking.stack("classification", exact, linear)
  assert got["stack_weight"] == 0.0 and got["stack_test_accuracy"] == 1.0


def _np_harrell(times, censorship, risk):
  return concordance_index_censored(censorship == 0, times, risk)[0]


def test_survival_weight_maximises_validation_c_index_on_standardised_risks():
  rng = np.random.default_rng(2)
  n = 300
  a, b = rng.standard_normal(n), rng.standard_normal(n)
  times = rng.exponential(np.exp(-(a + b)))
  censorship = (rng.uniform(size=n) < 0.3).astype(int)
  model_risk = 100.0 * a + 20.0 * rng.standard_normal(n)  # its own scale
  linear_risk = 0.01 * (b + 0.3 * a)
  half = n // 2
  pred = {s: {"time": times[i], "censorship": censorship[i], "risk": model_risk[i]}
          for s, i in (("val", slice(0, half)), ("test", slice(half, n)))}
  linear = {"val": linear_risk[:half], "test": linear_risk[half:]}
  got = stacking.stack("survival", pred, linear)
  zm = (model_risk - model_risk[:half].mean()) / model_risk[:half].std()
  zl = (linear_risk - linear_risk[:half].mean()) / linear_risk[:half].std()
  val = [_np_harrell(times[:half], censorship[:half], ((1 - w) * zm + w * zl)[:half])
         for w in GRID]
  w = GRID[int(np.argmax(val))]  # argmax: the first (smallest w) of ties
  assert 0.0 < w < 1.0
  np.testing.assert_allclose(got["stack_weight"], w, atol=1e-12)
  np.testing.assert_allclose(got["stack_val_c_index"], max(val), atol=1e-12)
  np.testing.assert_allclose(
      got["stack_test_c_index"],
      _np_harrell(times[half:], censorship[half:], ((1 - w) * zm + w * zl)[half:]), atol=1e-12)


def test_kept_survival_stack_applies_to_new_cases_as_computed_here(tmp_path):
  """`save` then `apply` (what `gimp_jax.predict` does): (1 - w) z_model + w z_linear on new
  cases, each risk standardised by the run's validation risks, the linear risk from a Coxnet
  refitted here (scikit-survival) at the kept penalty."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((200, 5))
  times = rng.exponential(np.exp(-(x[:, 0] - x[:, 1])))
  censorship = (rng.uniform(size=200) < 0.3).astype(int)
  splits = {"train": np.arange(120), "val": np.arange(120, 160), "test": np.arange(160, 200)}
  numbers, fit = reference.fit_cox(x, times, censorship, splits)
  model_val, model_new = rng.standard_normal(40) * 3 + 1, rng.standard_normal(40) * 3 + 1
  stacking.save(str(tmp_path / stacking.FILE), fit, 0.3, {"risk": model_val},
                fit.predict(x[splits["val"]]), "f" * 64)
  assert stacking.kept_for(str(tmp_path / stacking.FILE)) == "f" * 64
  got, w = stacking.apply(str(tmp_path / stacking.FILE), model_new, x[splits["test"]])
  mu, sd = x[:120].mean(0), x[:120].std(0)
  cox = CoxnetSurvivalAnalysis(l1_ratio=reference.L1_RATIO, alpha_min_ratio=0.05, n_alphas=30,
                               max_iter=5000).fit((x[:120] - mu) / sd,
                                                  Surv.from_arrays(censorship[:120] == 0,
                                                                   times[:120]))
  lin_val = cox.predict((x[120:160] - mu) / sd, alpha=numbers["alpha"])
  lin_new = cox.predict((x[160:] - mu) / sd, alpha=numbers["alpha"])
  want = (0.7 * (model_new - model_val.mean()) / model_val.std()
          + 0.3 * (lin_new - lin_val.mean()) / lin_val.std())
  assert w == 0.3
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_fingerprint_tells_parameter_trees_apart():
  """Equal trees (copies) share a fingerprint; one changed value, dtype or shape changes it."""
  rng = np.random.default_rng(0)
  tree = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": {"c": np.arange(5.0)}}
  copy = {"a": tree["a"].copy(), "b": {"c": tree["b"]["c"].copy()}}
  assert stacking.fingerprint(tree) == stacking.fingerprint(copy)
  changed = {"a": tree["a"].copy(), "b": tree["b"]}
  changed["a"][2, 3] = np.nextafter(changed["a"][2, 3], np.float32(np.inf))
  assert stacking.fingerprint(changed) != stacking.fingerprint(tree)
  assert stacking.fingerprint({"a": tree["a"].astype(np.float64), "b": tree["b"]}) != \
      stacking.fingerprint(tree)
  assert stacking.fingerprint({"a": tree["a"].reshape(4, 3), "b": tree["b"]}) != \
      stacking.fingerprint(tree)
