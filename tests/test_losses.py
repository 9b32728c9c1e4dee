"""Loss maths against independent NumPy computations."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax import losses


def np_masked_l1(pred, target, mask):
  total, count = 0.0, 0
  for b, l in itertools.product(range(pred.shape[0]), range(pred.shape[1])):
    if mask[b, l]:
      total += np.abs(pred[b, l] - target[b, l]).sum()
      count += pred.shape[2]
  return total / count if count else 0.0


def np_hinges(emb, labels, margin, mining):
  """Per-anchor (batch_hard) or per-triplet (batch_all) hinge values, valid ones only."""
  n = len(labels)
  d = np.array([[np.sum((emb[i] - emb[j]) ** 2) for j in range(n)] for i in range(n)])
  if mining == "batch_hard":
    out = []
    for a in range(n):
      p = [d[a, j] for j in range(n) if j != a and labels[j] == labels[a]]
      q = [d[a, j] for j in range(n) if labels[j] != labels[a]]
      if p and q:
        out.append(max(p) + margin - min(q))
    return np.array(out)
  return np.array([d[a, p] + margin - d[a, q] for a, p, q in itertools.product(range(n), repeat=3)
                   if p != a and labels[p] == labels[a] and labels[q] != labels[a]])


def np_triplet(emb, labels, margin, mining):
  h = np_hinges(emb, labels, margin, mining)
  return float(np.mean(np.maximum(h, 0.0))) if h.size else 0.0


def test_masked_l1_matches_numpy():
  rng = np.random.default_rng(0)
  pred, target = rng.standard_normal((2, 2, 7, 5)).astype(np.float32)
  mask = rng.random((2, 7)) < 0.5
  got = losses.masked_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(float(got), np_masked_l1(pred, target, mask), rtol=1e-5)


def test_masked_l1_ignores_unmasked_tokens_and_empty_mask():
  pred = np.zeros((1, 4, 3), np.float32)
  target = np.zeros((1, 4, 3), np.float32)
  target[0, 1] = 100.0  # unmasked: must not count
  target[0, 2] = 2.0
  mask = np.array([[False, False, True, False]])
  assert float(losses.masked_l1(pred, target, mask)) == pytest.approx(2.0)
  assert float(losses.masked_l1(pred, target, np.zeros_like(mask))) == 0.0


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
@pytest.mark.parametrize("labels", [
    [0, 1, 0, 1, 2, 0],   # class 2 has no positive
    [1, 1, 1, 1],          # all the same: no negatives
    [3],                   # B = 1
    [0, 1],                # no positives at all
    [0, 0, 1, 1, 1],
])
def test_triplet_matches_numpy(mining, labels):
  rng = np.random.default_rng(len(labels))
  emb = rng.standard_normal((len(labels), 6)).astype(np.float32) * 0.5
  got = losses.triplet_loss(jnp.asarray(emb), jnp.asarray(labels), 0.8, mining)
  np.testing.assert_allclose(float(got), np_triplet(emb, np.array(labels), 0.8, mining),
                             rtol=1e-5, atol=1e-6)


def test_triplet_is_zero_when_classes_are_far_apart():
  emb = np.array([[0.0, 0], [0.1, 0], [10, 0], [10.1, 0]], np.float32)
  assert float(losses.triplet_loss(emb, np.array([0, 0, 1, 1]))) == 0.0


def test_triplet_unknown_mining_raises():
  with pytest.raises(ValueError, match="mining"):
    losses.triplet_loss(np.zeros((2, 2)), np.array([0, 1]), mining="semi_hard")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_numpy(smoothing):
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((5, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0])
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.eye(3)[labels] * (1 - smoothing) + smoothing / 3
  expected = -(target * logp).sum(-1).mean()
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 2, 0], [0, 0, 1, 1, 1], [0, 1]])
def test_triplet_active_fraction_matches_numpy(mining, labels):
  rng = np.random.default_rng(7 + len(labels))
  emb = rng.standard_normal((len(labels), 4)).astype(np.float32) * 0.6
  loss, active = losses.triplet_terms(jnp.asarray(emb), jnp.asarray(labels), 0.8, mining)
  h = np_hinges(emb, np.array(labels), 0.8, mining)
  want = float(np.mean(h > 0)) if h.size else 0.0
  np.testing.assert_allclose(float(active), want, atol=1e-6)
  np.testing.assert_allclose(float(loss), np_triplet(emb, np.array(labels), 0.8, mining),
                             rtol=1e-5, atol=1e-6)


def test_separation_gap_matches_numpy():
  rng = np.random.default_rng(3)
  emb = rng.standard_normal((6, 5)).astype(np.float32)
  labels = np.array([0, 1, 0, 1, 2, 0])
  n = len(labels)
  d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
  gaps = [min(d[a, j] for j in range(n) if labels[j] != labels[a])
          - max(d[a, j] for j in range(n) if j != a and labels[j] == labels[a])
          for a in range(n) if np.sum(labels == labels[a]) > 1]
  np.testing.assert_allclose(float(losses.separation_gap(emb, labels)), np.mean(gaps), rtol=1e-5)
  # A gap above the margin on the gene half means no active hinge on [img; ge] with a tiny img.
  far = np.array([[0.0], [0.1], [5.0], [5.1]], np.float32)
  lab = np.array([0, 0, 1, 1])
  assert float(losses.separation_gap(far, lab)) > 0.8
  assert float(losses.triplet_terms(far, lab, 0.8)[1]) == 0.0


def test_relative_spread_and_variance_hinge_match_numpy():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((5, 8)).astype(np.float32) * 2 + 1
  pairs = [np.sum((x[i] - x[j]) ** 2) for i in range(5) for j in range(5) if i != j]
  want = np.mean(pairs) / np.mean(np.sum(x ** 2, -1))
  np.testing.assert_allclose(float(losses.relative_spread(x)), want, rtol=1e-5)
  assert float(losses.relative_spread(np.tile(x[:1], (5, 1)))) == pytest.approx(0.0, abs=1e-6)
  std = np.sqrt(x.var(0) + 1e-4)
  np.testing.assert_allclose(float(losses.variance_hinge(x)), np.mean(np.maximum(0, 1 - std)),
                             rtol=1e-5)
  collapsed = np.tile(x[:1], (5, 1))
  assert float(losses.variance_hinge(collapsed)) == pytest.approx(1 - 1e-2, rel=1e-4)
