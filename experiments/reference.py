"""What a statistician runs first: logistic regression (scikit-learn; for survival an elastic-net
Cox model, scikit-survival) on mean-pooled slide features, on the expression vector and on both,
on exactly the runs' splits; and the paired difference of two methods over seeds with its 95%
interval.

For a config (data paths, seed), the cohort is loaded as a run loads it (same seeded split, gene
list and normalisation fitted on the training split). Each patient's slide is its features'
mean over every patch of every slide. Features are standardised on the training split; the inverse
regularisation C is chosen on validation accuracy (ties by AUC) from a small grid; test is
scored once.
"""

import os

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gimp_jax import metrics as metrics_lib
from gimp_jax.data import cohort as cohort_lib

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
INPUTS = ("slide", "genes", "both")


def mean_pooled(cohort: cohort_lib.Cohort, cache: str | None = None) -> np.ndarray:
  """[P, D] mean patch embedding of each patient (all slides), cached in `cache` (.npy) when given
  (the features do not depend on the split)."""
  if cache and os.path.exists(cache):
    return np.load(cache)
  pooled = np.stack([cohort.bag(i).features().mean(0) for i in range(len(cohort.patients))])
  if cache:
    np.save(cache, pooled)
  return pooled


def fit_and_score(x: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray]) -> dict:
  """Logistic regression on x [P, F]: C picked on val; {"C", "val_accuracy", "val_auc",
  "test_accuracy", "test_auc"}."""
  best = None
  for c in C_GRID:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    model.fit(x[splits["train"]], labels[splits["train"]])
    val = metrics_lib.classification_metrics(labels[splits["val"]],
                                             model.predict_proba(x[splits["val"]]))
    key = (val["accuracy"], np.nan_to_num(val["auc"]))
    if best is None or key > best[0]:
      best = (key, c, model, val)
  _, c, model, val = best
  test = metrics_lib.classification_metrics(labels[splits["test"]],
                                            model.predict_proba(x[splits["test"]]))
  return {"C": c, "val_accuracy": val["accuracy"], "val_auc": float(val["auc"]),
          "test_accuracy": test["accuracy"], "test_auc": float(test["auc"])}


def lr_rows(config, cache_dir: str) -> dict[str, dict]:
  """{input: fit_and_score result} for the slide, genes and both, on `config`'s cohort and split."""
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  slide = mean_pooled(cohort, os.path.join(cache_dir, "mean_pooled.npy"))
  inputs = {"slide": slide, "genes": cohort.genes, "both": np.concatenate([slide, cohort.genes], 1)}
  splits = {k: cohort.split(k) for k in ("train", "val", "test")}
  return {name: fit_and_score(x, cohort.labels, splits) for name, x in inputs.items()}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
  """Paired difference a - b over the seeds both have (same seed = same split and init).

  Returns:
    {"n", "mean", "std", "ci95": (low, high) from Student's t with n - 1 degrees of freedom,
     "per_seed": {seed: difference}}; the interval is None with fewer than 2 seeds.
  """
  seeds = sorted(set(a) & set(b))
  d = np.array([a[s] - b[s] for s in seeds], np.float64)
  out = {"n": len(seeds), "per_seed": {s: float(v) for s, v in zip(seeds, d)},
         "mean": float(d.mean()) if d.size else None, "std": None, "ci95": None}
  if d.size >= 2:
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, d.size - 1)) * sd / np.sqrt(d.size)
    out.update(std=sd, ci95=(float(d.mean() - half), float(d.mean() + half)))
  return out


def fit_cox(x: np.ndarray, times: np.ndarray, censorship: np.ndarray,
            splits: dict[str, np.ndarray]) -> dict:
  """Elastic-net Cox model (scikit-survival's CoxnetSurvivalAnalysis, l1_ratio 0.5, features
  standardised on train) on x [P, F]: the penalty picked on the validation C-index along the
  fitted path; {"alpha", "val_c_index", "test_c_index"}."""
  from sksurv.linear_model import CoxnetSurvivalAnalysis  # pylint: disable=g-import-not-at-top
  from sksurv.util import Surv  # pylint: disable=g-import-not-at-top
  train, val, test = splits["train"], splits["val"], splits["test"]
  scaler = StandardScaler().fit(x[train])
  z = scaler.transform(x)
  y = Surv.from_arrays(censorship[train] == 0, times[train])
  model = CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.05, n_alphas=30, max_iter=2000)
  model.fit(z[train], y)
  score = lambda idx, a: metrics_lib.survival_metrics(times[idx], censorship[idx],
                                                      model.predict(z[idx], alpha=a))["c_index"]
  best = max(model.alphas_, key=lambda a: (np.nan_to_num(score(val, a)), a))
  return {"alpha": float(best), "val_c_index": score(val, best),
          "test_c_index": score(test, best)}


def cox_rows(config, cache_dir: str) -> dict[str, dict]:
  """{input: fit_cox result} for the slide, genes and both, on `config`'s survival cohort and
  fold (the Cox reference rows of `experiments/tables.py --task survival`)."""
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  slide = mean_pooled(cohort, os.path.join(cache_dir, "mean_pooled.npy"))
  inputs = {"slide": slide, "genes": cohort.genes, "both": np.concatenate([slide, cohort.genes], 1)}
  splits = {k: cohort.split(k) for k in ("train", "val", "test")}
  times = cohort.times.astype(np.float64)
  return {name: fit_cox(x, times, cohort.censorship, splits) for name, x in inputs.items()}
