"""Classification metrics against independent NumPy computations."""

import logging

import numpy as np
import pytest

from gimp_jax import metrics


def _np_confusion(labels, pred, c):
  cm = np.zeros((c, c), int)
  np.add.at(cm, (labels, pred), 1)
  return cm


def _np_macro_f1(labels, pred):
  f1s = []
  for k in np.union1d(labels, pred):
    tp = np.sum((pred == k) & (labels == k))
    fp = np.sum((pred == k) & (labels != k))
    fn = np.sum((pred != k) & (labels == k))
    f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
  return np.mean(f1s)


def _np_mann_whitney_auc(positive, scores):
  """P(score of a positive > score of a negative) + 0.5 P(tie), over all pairs."""
  pos, neg = scores[positive], scores[~positive]
  diff = pos[:, None] - neg[None, :]
  return np.mean((diff > 0) + 0.5 * (diff == 0))


def _random_case(rng, n, c, ties):
  labels = rng.integers(0, c, n)
  logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
  if ties:
    logits = np.round(logits)  # many tied scores
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return labels, probs.astype(np.float32)


@pytest.mark.parametrize('n, c, ties, seed', [(57, 2, False, 0), (40, 2, True, 1),
                                              (90, 3, False, 2), (75, 4, True, 3)])
def test_against_numpy(n, c, ties, seed):
  labels, probs = _random_case(np.random.default_rng(seed), n, c, ties)
  got = metrics.classification_metrics(labels, probs)
  pred = np.argmax(probs, 1)
  cm = _np_confusion(labels, pred, c)
  assert got['num_examples'] == n
  assert got['confusion_matrix'] == cm.tolist()
  np.testing.assert_allclose(got['accuracy'], np.mean(pred == labels), rtol=0, atol=1e-12)
  np.testing.assert_allclose(got['f1'], _np_macro_f1(labels, pred), rtol=0, atol=1e-12)
  recalls = [cm[k, k] / cm[k].sum() for k in range(c) if cm[k].sum()]
  np.testing.assert_allclose(got['balanced_accuracy'], np.mean(recalls), rtol=0, atol=1e-12)
  if c == 2:
    want_auc = _np_mann_whitney_auc(labels == 1, probs[:, 1])
  else:
    want_auc = np.mean([_np_mann_whitney_auc(labels == k, probs[:, k]) for k in range(c)])
  np.testing.assert_allclose(got['auc'], want_auc, rtol=0, atol=1e-12)
  assert 0.5 < got['auc'] < 1.0  # the informative logits make this a non-trivial case


def test_perfect_and_inverted_binary():
  labels = np.array([0, 1, 1, 0, 1])
  probs = np.stack([1 - labels * 0.8 - 0.1, labels * 0.8 + 0.1], 1)
  got = metrics.classification_metrics(labels, probs)
  assert (got['accuracy'], got['auc'], got['f1']) == (1.0, 1.0, 1.0)
  assert metrics.roc_auc(labels, probs[:, ::-1]) == 0.0


def test_absent_class_gives_nan_auc_and_warning(caplog):
  labels = np.array([0, 2, 2, 0, 0])  # class 1 absent
  probs = np.full((5, 3), 1 / 3)
  probs[:, 1] += np.linspace(-0.1, 0.1, 5)
  with caplog.at_level(logging.WARNING):
    got = metrics.classification_metrics(labels, probs)
  assert np.isnan(got['auc'])
  assert 'AUC is undefined' in caplog.text and '[1]' in caplog.text
  assert got['confusion_matrix'][1] == [0, 0, 0]
  assert np.isfinite(got['accuracy'])
  assert np.isnan(metrics.roc_auc(np.ones(4, int), np.full((4, 2), 0.5)))  # one class only


@pytest.mark.parametrize('labels, probs, match', [
    (np.array([0, 1]), np.ones((3, 2)), 'labels must be'),
    (np.array([0, 2]), np.ones((2, 2)), r'lie in \[0, 2\)'),
    (np.array([0.0, 1.0]), np.ones((2, 2)), 'integers'),
    (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), 'NaN'),
    (np.array([0]), np.ones((1, 1)), 'C >= 2'),
    (np.zeros(0, int), np.zeros((0, 2)), 'no examples'),
])
def test_bad_inputs(labels, probs, match):
  with pytest.raises(ValueError, match=match):
    metrics.classification_metrics(labels, probs)
