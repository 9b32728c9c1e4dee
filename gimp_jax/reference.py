"""The penalised linear reference ("the statistician's row"), fitted on a run's own split.

What a statistician fits first, on exactly the patients the model is trained, selected and tested
on: each patient's slide as the mean of every patch feature of every slide (`mean_pooled`,
[P, D]), the normalised expression vector ([P, G]) and both side by side ([P, D + G]). Features
are standardised on the training split (missing expression, `data.allow_missing`, counts as the
training mean).
- classification: scikit-learn `LogisticRegression` (L2); the inverse penalty C is chosen from
  `C_GRID` on validation accuracy (ties by AUC, then the smaller C);
- survival: scikit-survival `CoxnetSurvivalAnalysis` (elastic net, `L1_RATIO`); the penalty is
  chosen on the validation C-index along the fitted path (ties: the larger penalty).
Test is scored once, with the chosen penalty. `run.test` puts the three fits in
`results["reference"]`, the "both" row as `reference_<split>_<metric>` scalars beside the model's
`<split>_<metric>`, and the model's difference as `vs_reference_<split>_<metric>`; the "both" row's
val/test predictions go on to `gimp_jax.stacking`.
"""

import os
import time
from typing import Any

from absl import logging
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gimp_jax import metrics as metrics_lib
from gimp_jax.data import cohort as cohort_lib

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # LogisticRegression's inverse L2 penalty, chosen on val
L1_RATIO = 0.5  # the Cox model's elastic-net mixing (1 = lasso)
INPUTS = ("slide", "genes", "both")
MAIN = "both"  # the input whose numbers stand beside the model's
CHUNK_ROWS = 8192  # bag rows read at once by `mean_pooled` (bounds its memory to CHUNK_ROWS x D)
CLASSIFICATION_KEYS = ("accuracy", "auc", "f1")
SURVIVAL_KEYS = ("c_index",)


def mean_pooled(cohort: cohort_lib.Cohort, indices: np.ndarray | None = None,
                cache: str | None = None) -> np.ndarray:
  """Each patient's mean patch feature over every slide, read bag by bag in chunks of
  `CHUNK_ROWS` rows (the cohort is never held whole).

  Args:
    cohort: the cohort (its lazy bags).
    indices: [n] patient indices (default: every patient).
    cache: a `.npy` file holding the result for every patient (read when it exists, else
      written); only with `indices` None.

  Returns:
    [n, D] float64 mean features.
  """
  if cache and indices is None and os.path.exists(cache):
    return np.load(cache)
  idx = np.arange(len(cohort.patients)) if indices is None else np.asarray(indices, np.int64)
  out = np.zeros((idx.size, cohort.feature_dim), np.float64)
  for i, p in enumerate(idx):
    bag = cohort.bag(int(p))
    for lo in range(0, bag.num_patches, CHUNK_ROWS):
      rows = np.arange(lo, min(lo + CHUNK_ROWS, bag.num_patches))
      out[i] += bag.features(rows).sum(0, dtype=np.float64)
    out[i] /= max(bag.num_patches, 1)
  if cache and indices is None:
    np.save(cache, out)
  return out


def _standardised(x: np.ndarray, train: np.ndarray) -> np.ndarray:
  """x [P, F] with NaN as the training mean, then standardised on the training rows."""
  x = np.asarray(x, np.float64)
  known = ~np.isnan(x[train])
  mean = np.where(known, x[train], 0.0).sum(0) / np.maximum(known.sum(0), 1)
  x = np.where(np.isnan(x), mean, x)
  return StandardScaler().fit(x[train]).transform(x)


def _full_probs(model, x: np.ndarray, num_classes: int) -> np.ndarray:
  """[N, num_classes] probabilities (a class absent from training gets probability 0)."""
  probs = np.zeros((x.shape[0], num_classes))
  probs[:, model.classes_] = model.predict_proba(x)
  return probs


def fit_logistic(x: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray],
                 num_classes: int) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
  """Logistic regression on x [P, F] (standardised on train), C chosen on val.

  Args:
    x: [P, F] features of every patient of the cohort.
    labels: [P] class indices.
    splits: 'train', 'val', 'test' -> patient indices.
    num_classes: C.

  Returns:
    ({"C", "val_accuracy", "val_auc", "val_f1", "test_accuracy", "test_auc", "test_f1"},
     {"val": [n_val, C], "test": [n_test, C] probabilities of the chosen fit, rows in the splits'
     order}); NaN scores and no predictions (None) when the training split holds a single class.
  """
  train = splits["train"]
  out = {"C": float("nan"), **{f"{s}_{k}": float("nan") for s in ("val", "test")
                               for k in CLASSIFICATION_KEYS}}
  if np.unique(labels[train]).size < 2:
    logging.warning("Linear reference: the training split holds one class; no fit.")
    return out, None
  z = _standardised(x, train)
  best = None
  for c in C_GRID:
    model = LogisticRegression(C=c, max_iter=5000).fit(z[train], labels[train])
    val = metrics_lib.classification_metrics(labels[splits["val"]],
                                             _full_probs(model, z[splits["val"]], num_classes))
    key = (val["accuracy"], np.nan_to_num(val["auc"]), -c)
    if best is None or key > best[0]:
      best = (key, c, model, val)
  _, c, model, val = best
  probs = {split: _full_probs(model, z[splits[split]], num_classes) for split in ("val", "test")}
  test = metrics_lib.classification_metrics(labels[splits["test"]], probs["test"])
  out["C"] = c
  for split, scores in (("val", val), ("test", test)):
    out.update({f"{split}_{k}": float(scores[k]) for k in CLASSIFICATION_KEYS})
  return out, probs


def fit_cox(x: np.ndarray, times: np.ndarray, censorship: np.ndarray,
            splits: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
  """Elastic-net Cox model on x [P, F] (standardised on train), the penalty chosen on the
  validation C-index along scikit-survival's fitted path.

  Args:
    x: [P, F] features of every patient.
    times: [P] follow-up times.
    censorship: [P] 1 = censored, 0 = event.
    splits: 'train', 'val', 'test' -> patient indices.

  Returns:
    ({"alpha", "val_c_index", "test_c_index"}, {"val": [n_val], "test": [n_test] risks of the
     chosen penalty, rows in the splits' order}); NaN scores and no predictions (None) when the
    fit fails, e.g. no training event.
  """
  from sksurv.linear_model import CoxnetSurvivalAnalysis  # pylint: disable=g-import-not-at-top
  from sksurv.util import Surv  # pylint: disable=g-import-not-at-top
  train, val, test = splits["train"], splits["val"], splits["test"]
  times = np.asarray(times, np.float64)
  z = _standardised(x, train)
  model = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alpha_min_ratio=0.05, n_alphas=30,
                                 max_iter=5000)
  try:
    model.fit(z[train], Surv.from_arrays(censorship[train] == 0, times[train]))
  except (ValueError, ArithmeticError) as e:  # no event in train; a diverging path
    logging.warning("Linear reference: the Cox fit failed (%s).", e)
    return {"alpha": float("nan"), "val_c_index": float("nan"),
            "test_c_index": float("nan")}, None

  def score(idx, alpha):
    return metrics_lib.survival_metrics(times[idx], censorship[idx],
                                        model.predict(z[idx], alpha=alpha))["c_index"]
  best = max(model.alphas_, key=lambda a: (np.nan_to_num(score(val, a)), a))
  risk = {"val": model.predict(z[val], alpha=best), "test": model.predict(z[test], alpha=best)}
  return {"alpha": float(best), "val_c_index": score(val, best),
          "test_c_index": score(test, best)}, risk


def inputs(cohort: cohort_lib.Cohort, pooled: np.ndarray) -> dict[str, np.ndarray]:
  """{"slide": pooled [P, D], "genes": [P, G], "both": [P, D + G]}."""
  genes = np.asarray(cohort.genes, np.float64)
  return {"slide": pooled, "genes": genes, "both": np.concatenate([pooled, genes], 1)}


def linear_reference(cohort: cohort_lib.Cohort, splits: dict[str, np.ndarray],
                     pooled: np.ndarray | None = None
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
  """The reference fits on `splits` of `cohort` (module docstring).

  Args:
    cohort: the run's cohort (classification or survival).
    splits: 'train', 'val', 'test' -> the patient indices the model uses for each.
    pooled: [P, D] `mean_pooled(cohort)`, if already computed.

  Returns:
    ({"model": "logistic regression" | "elastic-net Cox", "slide" | "genes" | "both": the fit's
      numbers (`fit_logistic` / `fit_cox`), "wall_s"}, the MAIN fit's val/test predictions
     (probabilities [n, C] or risks [n], rows in `splits`' order; None without a fit)).
  """
  start = time.time()
  if pooled is None:
    pooled = mean_pooled(cohort)
  out: dict[str, Any] = {}
  main = None
  for name, x in inputs(cohort, pooled).items():
    if cohort.task == "survival":
      out[name], predictions = fit_cox(x, cohort.times, cohort.censorship, splits)
    else:
      out[name], predictions = fit_logistic(x, cohort.labels, splits, cohort.num_classes)
    if name == MAIN:
      main = predictions
  out["model"] = "elastic-net Cox" if cohort.task == "survival" else "logistic regression"
  out["wall_s"] = round(time.time() - start, 3)
  return out, main


def scalars(reference: dict[str, Any], results: dict[str, Any]) -> dict[str, float]:
  """`reference_<split>_<metric>` of the MAIN row, and `vs_reference_<split>_<metric>` = the
  model's `results[<split>_<metric>]` minus it, for every such metric present in both."""
  out = {}
  for key, value in reference[MAIN].items():
    if key.startswith(("val_", "test_")):
      out[f"reference_{key}"] = float(value)
      if isinstance(results.get(key), (int, float)):
        out[f"vs_reference_{key}"] = float(results[key]) - float(value)
  return out
