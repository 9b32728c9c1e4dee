"""Metrics of a split. Classification: accuracy, ROC AUC, macro F1, balanced accuracy, confusion.
Survival: Harrell's censoring-aware concordance index (scikit-survival's
`concordance_index_censored`), `survival_metrics`.

The prediction is argmax over the class probabilities. AUC follows the paper's binary setting
(LUAD vs LUSC): the ROC AUC of the positive class (column 1). With more classes it is the macro
average of the one-vs-rest AUCs, sum_c AUC(labels == c, probs[:, c]) / C. AUC needs both sides of
every comparison: a split that lacks a class (or holds only one) gets AUC NaN and a logged warning,
because that is a property of the split, not an error of the run.
"""

from typing import Any

from absl import logging
import numpy as np
from sklearn import metrics as sk_metrics


def _check(labels: np.ndarray, probs: np.ndarray) -> None:
  """Raises ValueError unless labels: [N] ints in [0, C) and probs: [N, C] finite."""
  if probs.ndim != 2 or probs.shape[1] < 2:
    raise ValueError(f'probs must be [N, C] with C >= 2 classes, got shape {probs.shape}')
  if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
    raise ValueError(f'labels must be [N] with N = {probs.shape[0]} (probs rows), '
                     f'got shape {labels.shape}')
  if labels.size == 0:
    raise ValueError('no examples: labels and probs are empty')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {labels.dtype}')
  if labels.min() < 0 or labels.max() >= probs.shape[1]:
    raise ValueError(f'labels must lie in [0, {probs.shape[1]}), got [{labels.min()}, '
                     f'{labels.max()}]')
  if not np.all(np.isfinite(probs)):
    raise ValueError('probs contain NaN or inf')


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
  """ROC AUC: binary -> of class 1; C > 2 -> macro one-vs-rest; NaN if a class is absent.

  Args:
    labels: [N] class indices in [0, C).
    probs: [N, C] class probabilities (any scores that rank the examples work).

  Returns:
    The AUC, or NaN (with a warning logged) when some class has no example.
  """
  labels, probs = np.asarray(labels), np.asarray(probs)
  _check(labels, probs)
  num_classes = probs.shape[1]
  absent = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
  if absent:
    logging.warning('AUC is undefined: class(es) %s have no example among the %d; AUC = NaN',
                    absent, labels.size)
    return float('nan')
  if num_classes == 2:
    return float(sk_metrics.roc_auc_score(labels == 1, probs[:, 1]))
  return float(np.mean([sk_metrics.roc_auc_score(labels == c, probs[:, c])
                        for c in range(num_classes)]))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
  """The metrics of one split.

  Args:
    labels: [N] integer class indices in [0, C).
    probs: [N, C] class probabilities; the prediction is argmax over C (first index on ties).

  Returns:
    A JSON-ready dict: 'accuracy', 'auc' (see `roc_auc`; NaN when a class is absent), 'f1' (macro
    F1 over the classes that occur in labels or predictions), 'balanced_accuracy' (mean recall over
    the classes in labels), 'confusion_matrix' ([C][C] ints, row = true class, column = predicted)
    and 'num_examples' (N).
  """
  labels, probs = np.asarray(labels), np.asarray(probs)
  _check(labels, probs)
  num_classes = probs.shape[1]
  pred = np.argmax(probs, axis=1)
  confusion = sk_metrics.confusion_matrix(labels, pred, labels=np.arange(num_classes))
  support = confusion.sum(axis=1)
  present = support > 0  # as sklearn's balanced_accuracy_score, without its absent-class warning
  return {
      'accuracy': float(sk_metrics.accuracy_score(labels, pred)),
      'auc': roc_auc(labels, probs),
      'f1': float(sk_metrics.f1_score(labels, pred, average='macro', zero_division=0)),
      'balanced_accuracy': float(np.mean(np.diag(confusion)[present] / support[present])),
      'confusion_matrix': confusion.astype(int).tolist(),
      'num_examples': int(labels.size),
  }


def survival_metrics(times: np.ndarray, censorship: np.ndarray, risk: np.ndarray
                     ) -> dict[str, Any]:
  """Harrell's C-index of a risk score (higher risk = earlier event).

  Args:
    times: [N] follow-up times.
    censorship: [N] 1 = censored, 0 = event.
    risk: [N] predicted risk.

  Returns:
    {'c_index': scikit-survival's `concordance_index_censored` (ties in risk count 1/2; NaN, with
    a warning, when no pair is comparable, e.g. no event), 'num_examples', 'num_events'}.
  """
  from sksurv.metrics import concordance_index_censored  # pylint: disable=g-import-not-at-top
  times, risk = np.asarray(times, np.float64), np.asarray(risk, np.float64)
  event = np.asarray(censorship) == 0
  if not np.all(np.isfinite(risk)):
    raise ValueError('risk contains NaN or inf')
  try:
    c_index = float(concordance_index_censored(event, times, risk)[0])
  except ValueError as e:  # sksurv: all samples censored / no comparable pairs
    logging.warning('C-index is undefined (%s); C-index = NaN', e)
    c_index = float('nan')
  return {'c_index': c_index, 'num_examples': int(times.size), 'num_events': int(event.sum())}
