"""Losses of GiMP pre-training and fine-tuning (pure functions, float32), the diagnostics of the
triplet term, and `LossFn`, the type of every stage objective.

L_pre = L_tri + L_rec (GiMP Eq. 3 and 4); fine-tuning uses the bag loss of the task
(`objectives.supervised`: cross-entropy, or a survival loss from `objectives.survival`).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# (model, batch) -> (scalar loss, metrics): what every objective in gimp_jax.objectives returns.
LossFn = Callable[[Any, dict], tuple[jax.Array, dict[str, jax.Array]]]


def masked_l1(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean absolute error over masked tokens (GiMP Eq. 3, mean-reduced).

  Args:
    pred: [B, L, D] reconstructed patch embeddings.
    target: [B, L, D] original patch embeddings.
    mask: [B, L] bool, True where the token was masked.

  Returns:
    Scalar: sum over masked tokens and features of |pred - target|, divided by
    (number of masked tokens * D). Zero when nothing is masked.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  m = mask.astype(jnp.float32)
  total = jnp.sum(jnp.abs(pred - target) * m[..., None])
  count = jnp.sum(m) * pred.shape[-1]
  return total / jnp.maximum(count, 1.0)


def pairwise_sq_distances(x: jax.Array) -> jax.Array:
  """Squared Euclidean distances. x: [B, E] -> [B, B], clipped at 0, exact 0 on the diagonal."""
  x = x.astype(jnp.float32)
  diff = x[:, None, :] - x[None, :, :]
  return jnp.sum(diff * diff, axis=-1)


def _pairs(labels: jax.Array, use: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(positive pairs, negative pairs) [B, B]: same label and not itself / other label; rows and
  columns of examples outside `use` [B] bool (None: all) are dropped."""
  same = labels[:, None] == labels[None, :]
  pos = same & ~jnp.eye(labels.shape[0], dtype=bool)
  neg = ~same
  if use is not None:
    both = use[:, None] & use[None, :]
    pos, neg = pos & both, neg & both
  return pos, neg


def _hardest(d: jax.Array, labels: jax.Array, use: jax.Array | None = None):
  """Batch-hard mining on squared distances d [B, B] (only examples in `use`, when given).

  Returns:
    (farthest positive [B], nearest negative [B], valid [B]: the anchor has a positive, i.e. a
    same-label other example, and a negative).
  """
  pos, neg = _pairs(labels, use)
  hardest_pos = jnp.max(jnp.where(pos, d, -jnp.inf), axis=1)
  hardest_neg = jnp.min(jnp.where(neg, d, jnp.inf), axis=1)
  return hardest_pos, hardest_neg, jnp.any(pos, axis=1) & jnp.any(neg, axis=1)


def triplet_anchors(labels: jax.Array, use: jax.Array | None = None) -> jax.Array:
  """[B] bool: the examples that can anchor a triplet, i.e. have a positive (another example with
  their label) and a negative among `use` [B] bool (None: all). None of them: L_tri is 0 with no
  gradient, whatever the embeddings (survival: too few uncensored cases per time bin)."""
  pos, neg = _pairs(labels, use)
  return jnp.any(pos, axis=1) & jnp.any(neg, axis=1)


def _valid_triplets(labels: jax.Array, use: jax.Array | None = None) -> jax.Array:
  """[B, B, B] bool: (a, p, n) with p a positive of a (not a itself) and n a negative of a."""
  pos, neg = _pairs(labels, use)
  return pos[:, :, None] & neg[:, None, :]


def triplet_loss(embeddings: jax.Array, labels: jax.Array, margin: float = 0.8,
                 mining: str = "batch_hard", use: jax.Array | None = None) -> jax.Array:
  """Gene-induced triplet loss on CLS_pat (GiMP Eq. 4), squared Euclidean distance.

  Args:
    embeddings: [B, E] concatenated CLS tokens.
    labels: [B] integer class labels.
    margin: delta in Eq. 4.
    mining: "batch_hard": for every anchor with at least one positive (same label, not itself) and
      one negative, relu(max_p d(a, p) + margin - min_n d(a, n)), averaged over those anchors (0 when
      there are none). "batch_all": mean of relu(d(a, p) + margin - d(a, n)) over all valid triplets
      (a, p, n), zeros included (0 when there are none).
    use: [B] bool, the examples that take part (None: all); survival uses the uncensored cases,
      whose labels are their time bins.

  Returns:
    Scalar loss.
  """
  return triplet_terms(embeddings, labels, margin, mining, use)[0]


def triplet_terms(embeddings: jax.Array, labels: jax.Array, margin: float = 0.8,
                  mining: str = "batch_hard", use: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """(triplet loss as `triplet_loss`, fraction of its hinges that are active).

  The active fraction is over the valid anchors (batch_hard) or valid triplets (batch_all): 0 means
  L_tri sends no gradient at all, whatever its weight.
  """
  d = pairwise_sq_distances(embeddings)
  if mining == "batch_hard":
    hardest_pos, hardest_neg, valid = _hardest(d, labels, use)
    hinge = jnp.where(valid, jax.nn.relu(hardest_pos + margin - hardest_neg), 0.0)
  elif mining == "batch_all":
    valid = _valid_triplets(labels, use)
    hinge = jnp.where(valid, jax.nn.relu(d[:, :, None] + margin - d[:, None, :]), 0.0)
  else:
    raise ValueError(f"Unknown triplet mining {mining!r}; expected 'batch_hard' or 'batch_all'.")
  count = jnp.maximum(jnp.sum(valid), 1)
  return jnp.sum(hinge) / count, jnp.sum((hinge > 0) & valid) / count


def separation_gap(embeddings: jax.Array, labels: jax.Array, use: jax.Array | None = None
                   ) -> jax.Array:
  """Mean over valid anchors of (nearest negative - farthest positive), squared L2.

  On CLS_ge this is how far the gene half alone already satisfies the triplet constraint: when it
  exceeds the margin for every anchor, the hinge on [CLS_img; CLS_ge] is inactive before the image
  half contributes anything. embeddings: [B, E]; labels: [B] -> scalar (0 when no anchor is valid).
  """
  hardest_pos, hardest_neg, valid = _hardest(pairwise_sq_distances(embeddings), labels, use)
  gap = jnp.where(valid, hardest_neg - hardest_pos, 0.0)
  return jnp.sum(gap) / jnp.maximum(jnp.sum(valid), 1)


def relative_spread(x: jax.Array) -> jax.Array:
  """Mean squared distance between the rows of x [B, E], over their mean squared norm (scalar).

  Scale-free collapse detector: ~2 for independent directions, 0 when every row is the same.
  """
  x = x.astype(jnp.float32)
  b = x.shape[0]
  mean_pair = jnp.sum(pairwise_sq_distances(x)) / max(b * (b - 1), 1)
  return mean_pair / jnp.maximum(jnp.mean(jnp.sum(x * x, axis=-1)), 1e-12)


def variance_hinge(x: jax.Array, target: float = 1.0, eps: float = 1e-4) -> jax.Array:
  """VICReg's variance term: mean over features of relu(target - std over the batch).

  x: [B, E] -> scalar; 0 when every feature varies across the batch with std >= target.
  """
  std = jnp.sqrt(jnp.var(x.astype(jnp.float32), axis=0) + eps)
  return jnp.mean(jax.nn.relu(target - std))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) along the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy. logits: [B, C] float; labels: [B] int; optional label smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of argmax(logits [B, C]) equal to labels [B]."""
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
