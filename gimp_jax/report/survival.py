"""Survival figures and tables of the report: Kaplan-Meier curves of the cases split at a risk
cutoff with the log-rank p-value, the distribution of the predicted risk, and the per-case risk CSV.

The Kaplan-Meier estimates and the log-rank test are scikit-survival's (`kaplan_meier_estimator`,
`compare_survival`). The cutoff is the median predicted risk of the **training** cases, so the
test groups are formed without looking at the test cases.
"""

from collections.abc import Mapping, Sequence
import csv
import os

from matplotlib.figure import Figure
import numpy as np

from gimp_jax.report import figures


def log_rank(times: np.ndarray, censorship: np.ndarray, group: np.ndarray) -> float:
  """Log-rank p-value between the groups of `group` [N] (NaN with fewer than two groups, no
  event, or a singular covariance)."""
  from sksurv.compare import compare_survival  # pylint: disable=g-import-not-at-top
  from sksurv.util import Surv  # pylint: disable=g-import-not-at-top
  event = np.asarray(censorship) == 0
  if np.unique(group).size < 2 or not event.any():
    return float('nan')
  y = Surv.from_arrays(event, np.asarray(times, np.float64))
  try:
    return float(compare_survival(y, np.asarray(group))[1])
  except np.linalg.LinAlgError:  # no variance: e.g. one group has nobody at risk at any event
    return float('nan')


def km_png(path: str, times: np.ndarray, censorship: np.ndarray, high: np.ndarray,
           title: str, time_unit: str = '') -> tuple[str, float]:
  """Kaplan-Meier curves of the low- and high-risk cases (high: [N] bool), the time axis in
  `time_unit`; (path, log-rank p)."""
  from sksurv.nonparametric import kaplan_meier_estimator  # pylint: disable=g-import-not-at-top
  event = np.asarray(censorship) == 0
  times = np.asarray(times, np.float64)
  p = log_rank(times, censorship, high.astype(int))
  fig = Figure(figsize=(5, 4), layout='constrained')  # no label clipped
  ax = fig.subplots()
  for name, members, colour in (('low risk', ~high, 'tab:blue'), ('high risk', high, 'tab:red')):
    if members.any():
      x, y = kaplan_meier_estimator(event[members], times[members])
      ax.step(np.concatenate([[0.0], x]), np.concatenate([[1.0], y]), where='post', color=colour,
              label=f'{name} (n={members.sum()}, events={event[members].sum()})')
      censored = members & ~event
      if censored.any():  # censoring ticks on the curve
        at = np.searchsorted(x, times[censored], side='right') - 1
        ax.plot(times[censored], np.where(at >= 0, y[np.maximum(at, 0)], 1.0), '|', color=colour)
  ax.set_xlabel(f'time ({time_unit})' if time_unit else 'time')
  ax.set_ylabel('survival probability')
  ax.set_ylim(0, 1.05)
  ax.set_title(f'{title} (log-rank p = {p:.3g})')
  ax.legend(fontsize=8)
  return figures.save_png(fig, path), p


def risk_png(path: str, risks: Mapping[str, np.ndarray], cutoff: float) -> str:
  """Histogram of the predicted risk per split, with the cutoff marked."""
  fig = Figure(figsize=(5, 3.5), layout='constrained')  # no label clipped
  ax = fig.subplots()
  values = np.concatenate([np.asarray(r, np.float64) for r in risks.values()])
  bins = np.histogram_bin_edges(values, bins=min(20, max(5, values.size // 3)))
  for split, r in risks.items():
    ax.hist(r, bins=bins, alpha=0.5, label=f'{split} (n={len(r)})')
  ax.axvline(cutoff, color='k', linestyle='--', label='training median')
  ax.set_xlabel('predicted risk')
  ax.set_ylabel('cases')
  ax.set_title('Predicted risk')
  ax.legend(fontsize=8)
  return figures.save_png(fig, path)


def write_risk_csv(path: str, ids: Sequence[str], times: np.ndarray, censorship: np.ndarray,
                   risk: np.ndarray, cutoff: float) -> str:
  """One row per case: ID, time, censorship, predicted risk, risk group at the cutoff."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['patient_id', 'time', 'censorship', 'risk', 'group'])
    for pid, t, c, r in zip(ids, times, censorship, risk):
      writer.writerow([pid, f'{float(t):.6g}', int(c), f'{float(r):.6g}',
                       'high' if r > cutoff else 'low'])
  return os.fspath(path)
