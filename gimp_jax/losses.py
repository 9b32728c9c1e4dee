"""Losses of GiMP pre-training and fine-tuning (pure functions, float32).

L_pre = L_tri + L_rec (GiMP Eq. 3 and 4); fine-tuning uses cross-entropy.
"""

import jax
import jax.numpy as jnp
import optax


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


def triplet_loss(embeddings: jax.Array, labels: jax.Array, margin: float = 0.8,
                 mining: str = "batch_hard") -> jax.Array:
  """Gene-induced triplet loss on CLS_pat (GiMP Eq. 4), squared Euclidean distance.

  Args:
    embeddings: [B, E] concatenated CLS tokens.
    labels: [B] integer class labels.
    margin: delta in Eq. 4.
    mining: "batch_hard": for every anchor with at least one positive (same label, not itself) and
      one negative, relu(max_p d(a, p) + margin - min_n d(a, n)), averaged over those anchors (0 when
      there are none). "batch_all": mean of relu(d(a, p) + margin - d(a, n)) over all valid triplets
      (a, p, n), zeros included (0 when there are none).

  Returns:
    Scalar loss.
  """
  d = pairwise_sq_distances(embeddings)
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)
  pos = same & not_self
  neg = ~same
  if mining == "batch_hard":
    hardest_pos = jnp.max(jnp.where(pos, d, -jnp.inf), axis=1)
    hardest_neg = jnp.min(jnp.where(neg, d, jnp.inf), axis=1)
    valid = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    per_anchor = jnp.where(valid, jax.nn.relu(hardest_pos + margin - hardest_neg), 0.0)
    return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(valid), 1)
  if mining == "batch_all":
    valid = pos[:, :, None] & neg[:, None, :]
    per_triplet = jax.nn.relu(d[:, :, None] + margin - d[:, None, :])
    return jnp.sum(jnp.where(valid, per_triplet, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  raise ValueError(f"Unknown triplet mining {mining!r}; expected 'batch_hard' or 'batch_all'.")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy. logits: [B, C] float; labels: [B] int; optional label smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def pretrain_loss(rec_loss: jax.Array, tri_loss: jax.Array) -> jax.Array:
  """L_pre = L_tri + L_rec."""
  return tri_loss + rec_loss
