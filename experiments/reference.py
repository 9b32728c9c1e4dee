"""The reference rows of the experiments' tables on exactly the runs' splits, from the library's
penalised linear reference (`gimp_jax.reference`: logistic regression, or elastic-net Cox for
survival, on mean-pooled slide features, on the expression and on both, penalty chosen on
validation); and the paired difference of two methods over seeds with its 95% interval.

For a config (data paths, seed), the cohort is loaded as a run loads it (same seeded split, gene
list and normalisation fitted on the training split).
"""

import os

import numpy as np
from scipy import stats

from gimp_jax import reference
from gimp_jax.data import cohort as cohort_lib


def linear_rows(config, cache_dir: str) -> dict[str, dict]:
  """{input: `reference.fit_logistic` (classification) or `reference.fit_cox` (survival) result}
  for the slide, genes and both, on `config`'s cohort and split (fold); the mean-pooled features
  are cached in `cache_dir`."""
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  pooled = reference.mean_pooled(cohort, cache=os.path.join(cache_dir, "mean_pooled.npy"))
  splits = {k: cohort.split(k) for k in ("train", "val", "test")}
  out, _ = reference.linear_reference(cohort, splits, pooled)
  return {name: out[name] for name in reference.INPUTS}


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
