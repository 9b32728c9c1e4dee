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
fit (`LinearFit`: arrays, applied to new patients by `gimp_jax.predict`) and its val/test
predictions go on to `gimp_jax.stacking`.
"""

import dataclasses
import os
import time
from typing import Any

from absl import logging
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gimp_jax import atomic
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


@dataclasses.dataclass(frozen=True)
class LinearFit:
  """A fitted reference as arrays: kept with the run (`save`, `load`) so that `gimp_jax.predict`
  applies it to new patients.

  Attributes:
    task: "classification" or "survival".
    fill: [F] the training mean of each feature, NaN skipped (a missing value's stand-in).
    mean, scale: [F] the standardisation fitted on the training rows.
    coef: [K, F] logistic regression's coefficients (K = 1 for two classes, else one row per
      class seen in training), or the Cox model's [1, F] at the chosen penalty.
    intercept: [K]; for Cox minus scikit-survival's `offset_`.
    classes: [K'] the class indices seen in training (classification); [0] for Cox.
    num_classes: C, the cohort's classes (a class absent from training gets probability 0).
  """
  task: str
  fill: np.ndarray
  mean: np.ndarray
  scale: np.ndarray
  coef: np.ndarray
  intercept: np.ndarray
  classes: np.ndarray
  num_classes: int

  def predict(self, x: np.ndarray) -> np.ndarray:
    """x [N, F] (NaN for missing values) -> probabilities [N, C], or Cox risks [N]."""
    z = standardise(x, {"fill": self.fill, "mean": self.mean, "scale": self.scale})
    decision = z @ self.coef.T + self.intercept
    if self.task == "survival":
      return decision[:, 0]
    if self.coef.shape[0] == 1:  # two classes: P(classes[1]) = sigmoid(decision)
      decision = np.concatenate([np.zeros_like(decision), decision], 1)
    p = np.exp(decision - decision.max(1, keepdims=True))
    probs = np.zeros((x.shape[0], self.num_classes))
    probs[:, self.classes] = p / p.sum(1, keepdims=True)
    return probs

  def save(self, path: str, **extra: np.ndarray) -> None:
    """Writes the fit and `extra` arrays to the `.npz` file `path` (atomically)."""
    fields = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
    atomic.write(path, lambda f: np.savez(f, **fields, **extra), binary=True)

  @classmethod
  def load(cls, path: str) -> tuple["LinearFit", dict[str, np.ndarray]]:
    """The fit in `path` and the other arrays saved with it."""
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
    names = [f.name for f in dataclasses.fields(cls)]
    fit = cls(**{k: arrays.pop(k) for k in names})
    return dataclasses.replace(fit, task=str(fit.task), num_classes=int(fit.num_classes)), arrays


def _standardiser(x: np.ndarray, train: np.ndarray) -> dict[str, np.ndarray]:
  """{"fill", "mean", "scale"} [F] of x [P, F] on the training rows: NaN counts as the training
  mean, then scikit-learn's StandardScaler."""
  x = np.asarray(x, np.float64)
  known = ~np.isnan(x[train])
  fill = np.where(known, x[train], 0.0).sum(0) / np.maximum(known.sum(0), 1)
  scaler = StandardScaler().fit(np.where(np.isnan(x[train]), fill, x[train]))
  return {"fill": fill, "mean": scaler.mean_, "scale": scaler.scale_}


def standardise(x: np.ndarray, std: dict[str, np.ndarray]) -> np.ndarray:
  """x [N, F] with NaN as `std["fill"]`, standardised by `_standardiser`'s mean and scale."""
  return (np.where(np.isnan(x), std["fill"], x) - std["mean"]) / std["scale"]


def fit_logistic(x: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray],
                 num_classes: int) -> tuple[dict[str, Any], LinearFit | None]:
  """Logistic regression on x [P, F] (standardised on train), C chosen on val.

  Args:
    x: [P, F] features of every patient of the cohort.
    labels: [P] class indices.
    splits: 'train', 'val', 'test' -> patient indices.
    num_classes: C.

  Returns:
    ({"C", "val_accuracy", "val_auc", "val_f1", "test_accuracy", "test_auc", "test_f1"}, the
     chosen fit); NaN scores and no fit (None) when the training split holds a single class.
  """
  train = splits["train"]
  out = {"C": float("nan"), **{f"{s}_{k}": float("nan") for s in ("val", "test")
                               for k in CLASSIFICATION_KEYS}}
  if np.unique(labels[train]).size < 2:
    logging.warning("Linear reference: the training split holds one class; no fit.")
    return out, None
  std = _standardiser(x, train)
  best = None
  for c in C_GRID:
    model = LogisticRegression(C=c, max_iter=5000)
    fit = _logistic_fit(model, x, train, labels, std, num_classes)
    val = metrics_lib.classification_metrics(labels[splits["val"]], fit.predict(x[splits["val"]]))
    key = (val["accuracy"], np.nan_to_num(val["auc"]), -c)
    if best is None or key > best[0]:
      best = (key, c, fit, val)
  _, c, fit, val = best
  test = metrics_lib.classification_metrics(labels[splits["test"]], fit.predict(x[splits["test"]]))
  out["C"] = c
  for split, scores in (("val", val), ("test", test)):
    out.update({f"{split}_{k}": float(scores[k]) for k in CLASSIFICATION_KEYS})
  return out, fit


def _logistic_fit(model: LogisticRegression, x: np.ndarray, train: np.ndarray,
                  labels: np.ndarray, std: dict[str, np.ndarray], num_classes: int) -> LinearFit:
  """`model` fitted on the standardised training rows of x [P, F], as a LinearFit."""
  model.fit(standardise(x[train], std), labels[train])
  return LinearFit("classification", **std, coef=model.coef_, intercept=model.intercept_,
                   classes=model.classes_, num_classes=num_classes)


def fit_cox(x: np.ndarray, times: np.ndarray, censorship: np.ndarray,
            splits: dict[str, np.ndarray]) -> tuple[dict[str, Any], LinearFit | None]:
  """Elastic-net Cox model on x [P, F] (standardised on train), the penalty chosen on the
  validation C-index along scikit-survival's fitted path.

  Args:
    x: [P, F] features of every patient.
    times: [P] follow-up times.
    censorship: [P] 1 = censored, 0 = event.
    splits: 'train', 'val', 'test' -> patient indices.

  Returns:
    ({"alpha", "val_c_index", "test_c_index"}, the fit at the chosen penalty); NaN scores and no
    fit (None) when the fit fails, e.g. no training event.
  """
  from sksurv.linear_model import CoxnetSurvivalAnalysis  # pylint: disable=g-import-not-at-top
  from sksurv.util import Surv  # pylint: disable=g-import-not-at-top
  train, val, test = splits["train"], splits["val"], splits["test"]
  times = np.asarray(times, np.float64)
  std = _standardiser(x, train)
  model = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alpha_min_ratio=0.05, n_alphas=30,
                                 max_iter=5000)
  try:
    model.fit(standardise(x[train], std), Surv.from_arrays(censorship[train] == 0, times[train]))
  except (ValueError, ArithmeticError) as e:  # no event in train; a diverging path
    logging.warning("Linear reference: the Cox fit failed (%s).", e)
    return {"alpha": float("nan"), "val_c_index": float("nan"),
            "test_c_index": float("nan")}, None
  fits = [LinearFit("survival", **std, coef=model.coef_[:, k][None],
                    intercept=-model.offset_[k:k + 1], classes=np.zeros(1, np.int64),
                    num_classes=0)
          for k in range(len(model.alphas_))]

  def score(idx, k):
    return metrics_lib.survival_metrics(times[idx], censorship[idx],
                                        fits[k].predict(x[idx]))["c_index"]
  best = max(range(len(fits)), key=lambda k: (np.nan_to_num(score(val, k)), model.alphas_[k]))
  return {"alpha": float(model.alphas_[best]), "val_c_index": score(val, best),
          "test_c_index": score(test, best)}, fits[best]


def inputs(cohort: cohort_lib.Cohort, pooled: np.ndarray) -> dict[str, np.ndarray]:
  """{"slide": pooled [P, D], "genes": [P, G], "both": [P, D + G]}."""
  genes = np.asarray(cohort.genes, np.float64)
  return {"slide": pooled, "genes": genes, "both": np.concatenate([pooled, genes], 1)}


def linear_reference(cohort: cohort_lib.Cohort, splits: dict[str, np.ndarray],
                     pooled: np.ndarray | None = None
                     ) -> tuple[dict[str, Any], LinearFit | None]:
  """The reference fits on `splits` of `cohort` (module docstring).

  Args:
    cohort: the run's cohort (classification or survival).
    splits: 'train', 'val', 'test' -> the patient indices the model uses for each.
    pooled: [P, D] `mean_pooled(cohort)`, if already computed.

  Returns:
    ({"model": "logistic regression" | "elastic-net Cox", "slide" | "genes" | "both": the fit's
      numbers (`fit_logistic` / `fit_cox`), "wall_s"}, the MAIN input's fit, or None without
     one; its predictions are `fit.predict(inputs(cohort, pooled)[MAIN][rows])`).
  """
  start = time.time()
  if pooled is None:
    pooled = mean_pooled(cohort)
  out: dict[str, Any] = {}
  main = None
  for name, x in inputs(cohort, pooled).items():
    if cohort.task == "survival":
      out[name], fit = fit_cox(x, cohort.times, cohort.censorship, splits)
    else:
      out[name], fit = fit_logistic(x, cohort.labels, splits, cohort.num_classes)
    if name == MAIN:
      main = fit
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
