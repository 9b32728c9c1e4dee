"""Pathology-only multiple-instance learning baselines of GiMP's Table 1.

- `ABMIL`: gated attention pooling (Ilse et al., ICML 2018), in CLAM's sizes (in -> d -> d/2).
- `DSMIL`: instance classifier + max pooling stream, and a bag stream whose attention compares every
  instance with the critical (top-scoring) instance of each class (Li et al., CVPR 2021).
- `CLAM`: single-branch (SB) or multi-branch (MB) gated attention with instance classifiers for the
  instance clustering loss (Lu et al., Nat. Biomed. Eng. 2021; loss in `gimp_jax.objectives.mil`).
- `TransMIL`: Nyström layer, PPEG, Nyström layer (Shao et al., NeurIPS 2021).

Every model takes whole, trailing-padded bags (`patch_mask` [B, N], True = real patch) and ignores the
padding: masked softmaxes and maxima, and TransMIL's square layout rebuilt per example, so a padded
bag gives the logits of the unpadded one. Every model answers the methods' protocol,
`__call__(patches, genes, patch_mask) -> (logits [B, C], embedding [B, E])` (genes are ignored;
the embedding is what the reports' t-SNE shows).
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

from gimp_jax.models.aggregator import NystromLayer


def full_mask(patches: jax.Array, patch_mask: jax.Array | None) -> jax.Array:
  """patch_mask, or all-True [B, N] when the bag has no padding."""
  return jnp.ones(patches.shape[:2], bool) if patch_mask is None else patch_mask


def masked_softmax(logits: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Softmax over `axis` in float32 with masked-out entries at exactly zero weight.

  Args:
    logits: [..., N, ...] scores.
    mask: broadcastable to logits, True where the entry takes part.
    axis: the instance axis.
  """
  logits = jnp.where(mask, logits.astype(jnp.float32), -jnp.inf)
  return jnp.where(mask, jax.nn.softmax(logits, axis=axis), 0.0)


class GatedAttention(nnx.Module):
  """CLAM's Attn_Net_Gated: A = W_c (tanh(W_a h) * sigmoid(W_b h)), dropout after both gates."""

  def __init__(self, dim: int, hidden: int, num_outputs: int = 1, *, dropout: float,
               rngs: nnx.Rngs):
    self.attention_a = nnx.Linear(dim, hidden, rngs=rngs)
    self.attention_b = nnx.Linear(dim, hidden, rngs=rngs)
    self.attention_c = nnx.Linear(hidden, num_outputs, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, h: jax.Array) -> jax.Array:
    """h: [B, N, dim] -> unnormalised attention scores [B, N, num_outputs]."""
    a = self.drop(jnp.tanh(self.attention_a(h)))
    b = self.drop(jax.nn.sigmoid(self.attention_b(h)))
    return self.attention_c(a * b)


class ABMIL(nnx.Module):
  """Linear(in -> dim) + ReLU + dropout, gated attention pooling, linear classifier."""

  def __init__(self, in_dim: int, dim: int, num_classes: int, *, attn_dim: int | None = None,
               dropout: float = 0.25, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_dim, dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.attention_net = GatedAttention(dim, attn_dim or dim // 2, 1, dropout=dropout, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def pool(self, patches: jax.Array, patch_mask: jax.Array | None = None):
    """patches: [B, N, in_dim] -> (bag embedding [B, dim], attention [B, N] summing to 1)."""
    mask = full_mask(patches, patch_mask)
    h = self.drop(jax.nn.relu(self.fc(patches.astype(jnp.float32))))
    attn = masked_softmax(self.attention_net(h)[..., 0], mask, axis=-1)
    return jnp.einsum("bn,bnd->bd", attn, h), attn

  def __call__(self, patches: jax.Array, genes: jax.Array | None = None,
              patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(logits [B, num_classes], bag embedding [B, dim])."""
    del genes
    bag = self.pool(patches, patch_mask)[0]
    return self.head(bag), bag

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The gated attention [B, N] (`models.attention`)."""
    del genes
    return self.pool(patches, patch_mask)[1]


class DSMIL(nnx.Module):
  """Dual-stream MIL on the raw patch features.

  Instance stream: c = W x per instance, bag score = max over real instances.
  Bag stream: q = tanh(W2 relu(W1 x)) (128-d); for class k the critical instance m_k = argmax_i
  c[i, k]; A[:, k] = softmax_i(<q_i, q_{m_k}> / sqrt(128)); B_k = sum_i A[i, k] x_i; bag logits =
  Conv1d(C, C, kernel = in_dim) over B (a full linear map of [C, in_dim] to C).
  """

  def __init__(self, in_dim: int, num_classes: int, *, query_dim: int = 128, dropout: float = 0.0,
               rngs: nnx.Rngs):
    self.instance = nnx.Linear(in_dim, num_classes, rngs=rngs)
    self.q1 = nnx.Linear(in_dim, query_dim, rngs=rngs)
    self.q2 = nnx.Linear(query_dim, query_dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    bound = 1.0 / math.sqrt(num_classes * in_dim)  # PyTorch Conv1d default init bound
    self.fcc_kernel = nnx.Param(jax.random.uniform(
        rngs.params(), (num_classes, num_classes, in_dim), jnp.float32, -bound, bound))
    self.fcc_bias = nnx.Param(jax.random.uniform(
        rngs.params(), (num_classes,), jnp.float32, -bound, bound))

  def streams(self, patches: jax.Array, patch_mask: jax.Array | None = None):
    """Both streams.

    Args:
      patches: [B, N, in_dim].
      patch_mask: [B, N] bool or None.

    Returns:
      (bag_logits [B, C], max_logits [B, C], attention [B, N, C]).
    """
    mask = full_mask(patches, patch_mask)
    x = self.drop(patches.astype(jnp.float32))
    scores = self.instance(x)                                              # [B, N, C]
    masked_scores = jnp.where(mask[..., None], scores, -jnp.inf)
    max_logits = jnp.max(masked_scores, axis=1)                            # [B, C]
    critical = jnp.argmax(masked_scores, axis=1)                           # [B, C]
    q = jnp.tanh(self.q2(jax.nn.relu(self.q1(x))))                         # [B, N, Q]
    q_max = jnp.take_along_axis(q, critical[..., None], axis=1)            # [B, C, Q]
    logits = jnp.einsum("bnq,bcq->bnc", q, q_max) / math.sqrt(q.shape[-1])
    attn = masked_softmax(logits, mask[..., None], axis=1)                 # [B, N, C]
    bag = jnp.einsum("bnc,bnd->bcd", attn, x)                              # [B, C, in_dim]
    bag_logits = jnp.einsum("ocd,bcd->bo", self.fcc_kernel[...], bag) + self.fcc_bias[...]
    return bag_logits, max_logits, attn

  def __call__(self, patches: jax.Array, genes: jax.Array | None = None,
              patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """DSMIL's averaged prediction, logits = log(0.5 softmax(bag) + 0.5 softmax(max)), and the
    bag representation B flattened ([B, C * in_dim])."""
    del genes
    bag_logits, max_logits, attn = self.streams(patches, patch_mask)
    probs = 0.5 * jax.nn.softmax(bag_logits) + 0.5 * jax.nn.softmax(max_logits)
    bag = jnp.einsum("bnc,bnd->bcd", attn, patches.astype(jnp.float32))
    return jnp.log(jnp.maximum(probs, 1e-30)), bag.reshape(bag.shape[0], -1)

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The bag stream's attention to the critical instance of the predicted class (argmax of the
    averaged probabilities): [B, N] (`models.attention`)."""
    del genes
    bag_logits, max_logits, attn = self.streams(patches, patch_mask)
    probs = jax.nn.softmax(bag_logits) + jax.nn.softmax(max_logits)
    predicted = jnp.argmax(probs, axis=-1)
    return jnp.take_along_axis(attn, predicted[:, None, None], axis=2)[..., 0]


class CLAM(nnx.Module):
  """CLAM-SB (`multi_branch=False`) or CLAM-MB.

  Linear(in -> dim) + ReLU + dropout; gated attention with one branch (SB) or one per class (MB);
  SB: one linear classifier on the pooled vector; MB: class k's score is a linear map of its own
  pooled vector. One 2-way instance classifier per class for the clustering loss.
  """

  def __init__(self, in_dim: int, dim: int, num_classes: int, *, multi_branch: bool,
               attn_dim: int | None = None, dropout: float = 0.25, rngs: nnx.Rngs):
    self.multi_branch = multi_branch
    branches = num_classes if multi_branch else 1
    self.fc = nnx.Linear(in_dim, dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.attention_net = GatedAttention(dim, attn_dim or dim // 2, branches, dropout=dropout,
                                    rngs=rngs)
    bound = 1.0 / math.sqrt(dim)
    uniform = lambda shape: jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
    if multi_branch:  # bag_classifiers: num_classes x Linear(dim, 1)
      self.head_kernel = nnx.Param(uniform((num_classes, dim)))
      self.head_bias = nnx.Param(uniform((num_classes,)))
    else:
      self.head = nnx.Linear(dim, num_classes, rngs=rngs)
    # instance_classifiers: num_classes x Linear(dim, 2)
    self.instance_kernel = nnx.Param(uniform((num_classes, dim, 2)))
    self.instance_bias = nnx.Param(uniform((num_classes, 2)))

  def attend(self, patches: jax.Array, patch_mask: jax.Array | None = None):
    """patches: [B, N, in_dim] -> (logits [B, C], attention [B, K, N], h [B, N, dim], pooled
    [B, K, dim]).

    K = 1 (SB) or C (MB); attention rows sum to 1 over the real patches.
    """
    mask = full_mask(patches, patch_mask)
    h = self.drop(jax.nn.relu(self.fc(patches.astype(jnp.float32))))
    attn = masked_softmax(jnp.swapaxes(self.attention_net(h), 1, 2), mask[:, None, :], axis=-1)
    pooled = jnp.einsum("bkn,bnd->bkd", attn, h)                          # [B, K, dim]
    if self.multi_branch:
      logits = jnp.einsum("bcd,cd->bc", pooled, self.head_kernel[...]) + self.head_bias[...]
    else:
      logits = self.head(pooled[:, 0])
    return logits, attn, h, pooled

  def instance_logits(self, h: jax.Array) -> jax.Array:
    """h: [B, N, dim] -> every class's instance-classifier logits [B, C, N, 2]."""
    return (jnp.einsum("bnd,cde->bcne", h, self.instance_kernel[...])
            + self.instance_bias[...][None, :, None, :])

  def __call__(self, patches: jax.Array, genes: jax.Array | None = None,
              patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(logits [B, C], pooled vectors flattened [B, K * dim])."""
    del genes
    logits, _, _, pooled = self.attend(patches, patch_mask)
    return logits, pooled.reshape(pooled.shape[0], -1)

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The gated attention [B, N]: SB's one branch, MB's branch of the predicted class
    (`models.attention`)."""
    del genes
    logits, attn, _, _ = self.attend(patches, patch_mask)
    branch = jnp.argmax(logits, axis=-1) if self.multi_branch else jnp.zeros(logits.shape[0], int)
    return jnp.take_along_axis(attn, branch[:, None, None], axis=1)[:, 0]


def square_layout(mask: jax.Array):
  """TransMIL's square padding, rebuilt per example from its real length.

  Example b with n real patches gets side s = ceil(sqrt(n)) and s^2 tokens: the n patches followed
  by copies of its first s^2 - n patches (TransMIL's `cat([h, h[:, :add]])`).

  Args:
    mask: [B, N] bool, real patches first.

  Returns:
    (source [B, T] int indices into the N patches, valid [B, T] bool (t < s^2), side [B] int),
    with T = ceil(sqrt(N))^2 fixed by the buffer length.
  """
  n = jnp.sum(mask, axis=1).astype(jnp.int32)
  root = jnp.floor(jnp.sqrt(n.astype(jnp.float32))).astype(jnp.int32)
  root = root - (root * root > n) + ((root + 1) * (root + 1) <= n)  # exact integer sqrt
  side = root + (root * root < n)
  big = math.ceil(math.sqrt(mask.shape[1]))
  t = jnp.arange(big * big, dtype=jnp.int32)[None, :]
  valid = t < (side * side)[:, None]
  source = jnp.where(t < n[:, None], t, t - n[:, None])
  return jnp.where(valid, source, 0), valid, side


class PPEG(nnx.Module):
  """Pyramid position encoding: y = DWConv7(x) + x + DWConv5(x) + DWConv3(x) on the s x s grid.

  Depthwise convolutions with bias and zero padding; token t sits at (t // s, t % s) (row-major,
  as TransMIL's `transpose(1, 2).view(B, C, H, W)`); the CLS token is not part of the grid.
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    conv = lambda k: nnx.Conv(dim, dim, kernel_size=(k, k), padding="SAME",
                              feature_group_count=dim, rngs=rngs)
    self.proj = conv(7)
    self.proj1 = conv(5)
    self.proj2 = conv(3)

  def __call__(self, x: jax.Array, valid: jax.Array, side: jax.Array) -> jax.Array:
    """x: [B, T, dim] with T a square; valid: [B, T]; side: [B] -> [B, T, dim] (0 where invalid)."""
    b, t_len, d = x.shape
    big = math.isqrt(t_len)
    t = jnp.arange(t_len, dtype=jnp.int32)[None, :]
    rows = jnp.where(valid, t // side[:, None], big)  # invalid tokens fall outside: dropped
    cols = t % side[:, None]
    batch = jnp.broadcast_to(jnp.arange(b)[:, None], rows.shape)
    grid = jnp.zeros((b, big, big, d), x.dtype).at[batch, rows, cols].set(x, mode="drop")
    y = self.proj(grid) + grid + self.proj1(grid) + self.proj2(grid)
    out = y[batch, jnp.minimum(rows, big - 1), cols]
    return jnp.where(valid[..., None], out, 0.0)


class TransMIL(nnx.Module):
  """fc1 (Linear + ReLU), square padding, CLS, Nyström layer, PPEG, Nyström layer, LayerNorm, fc2."""

  def __init__(self, in_dim: int, dim: int, num_classes: int, *, heads: int = 8,
               num_landmarks: int = 256, dropout: float = 0.1, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, dim, rngs=rngs)
    self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
    self.layer1 = NystromLayer(dim, heads=heads, num_landmarks=num_landmarks, dropout=dropout,
                               dtype=jnp.float32, rngs=rngs)
    self.pos_layer = PPEG(dim, rngs=rngs)
    self.layer2 = NystromLayer(dim, heads=heads, num_landmarks=num_landmarks, dropout=dropout,
                               dtype=jnp.float32, rngs=rngs)
    self.norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def embed(self, patches: jax.Array, patch_mask: jax.Array | None = None) -> jax.Array:
    """patches: [B, N, in_dim] -> CLS embedding [B, dim]."""
    return self._encode(patches, patch_mask)

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The CLS row of the last Nyström layer, mean over heads, [B, N] (`models.attention`); a
    patch repeated by the square layout gets the sum over its copies."""
    del genes
    return self._encode(patches, patch_mask, return_attention=True)

  def _encode(self, patches: jax.Array, patch_mask: jax.Array | None,
              return_attention: bool = False) -> jax.Array:
    """The CLS embedding [B, dim], or with `return_attention` the CLS attention over patches
    [B, N]."""
    mask = full_mask(patches, patch_mask)
    h = jax.nn.relu(self.fc1(patches.astype(jnp.float32)))
    source, valid, side = square_layout(mask)
    h = jnp.take_along_axis(h, source[..., None], axis=1)                  # [B, T, dim]
    b = h.shape[0]
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, h.shape[-1]))
    tokens_mask = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
    h = self.layer1(jnp.concatenate([cls, h], axis=1), tokens_mask)
    h = jnp.concatenate([h[:, :1], self.pos_layer(h[:, 1:], valid, side)], axis=1)
    if return_attention:
      _, (left, attn3) = self.layer2(h, tokens_mask, return_attention=True, rows=1)
      per_token = jnp.mean((left[:, :, :1] @ attn3)[:, :, 0, 1:], axis=1)  # [B, T]
      batch = jnp.broadcast_to(jnp.arange(b)[:, None], source.shape)
      return jnp.zeros(mask.shape, jnp.float32).at[batch, source].add(
          jnp.where(valid, per_token, 0.0))
    h = self.layer2(h, tokens_mask)
    return self.norm(h[:, 0])

  def __call__(self, patches: jax.Array, genes: jax.Array | None = None,
              patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(logits [B, C], CLS embedding [B, dim])."""
    del genes
    cls = self.embed(patches, patch_mask)
    return self.head(cls), cls

