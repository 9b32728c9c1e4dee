"""Nyström attention (Xiong et al., AAAI 2021) as the PyTorch package `nystrom-attention` computes it.

Without a mask the computation matches `nystrom_attention.NystromAttention` (0.0.10 to 0.0.14) number
for number, so TransMIL-style weights carry over (see `gimp_jax.interop.torch`):

1. zero-pad the sequence at the front to a multiple of the number of landmarks m;
2. q, k, v = x W_qkv (no bias); q is scaled by dim_head**-0.5;
3. landmarks are means of l = ceil(n / m) consecutive (padded) tokens;
4. out = (softmax(q k~^T) pinv(softmax(q~ k~^T))) (softmax(q~ k^T) v) + depthwise_conv33(v);
   pinv is the 6-step iterative Moore-Penrose method started from x^T / (max row sum * max column sum),
   both maxima taken over the whole tensor (all batch elements and heads), as the package does;
5. merge heads, output projection with bias, dropout, keep the last n rows.

Key-padding mask (`mask` [B, N], True = real token). Padding must be trailing (real tokens first).
Each example's real tokens get, up to float rounding, the package's result for that example alone
(batch size 1, unpadded): the front padding, the landmark grouping and the zero-logit padded keys are
rebuilt from each example's own length, trailing pad tokens are ignored entirely, and the pinv scale
of step 4 is taken per example. So a bag's output (and a patient's prediction) does not depend on
the other bags of its batch. Without a mask (pre-training windows) the scale stays global over the
batch, number for number the package's batched result. Rows of the output at padded positions are
zero.

Gradient of the pseudo-inverse (`pinv_grad`): "unrolled" differentiates through the 6 iterations as
PyTorch autograd does with the package (24 products of m x m per head in the forward pass, about 48
more in the backward); "implicit" treats the result Z as the converged inverse of A and uses
d(A^-1) = -Z dA Z, i.e. dL/dA = -Z^T (dL/dZ) Z^T: 2 products. The forward pass is unchanged; the
gradient differs from the unrolled one by the iteration's distance from convergence (measured in
`tests/test_nystrom.py::test_implicit_pinv_gradient`).

Exact first row (`exact_cls`, not in the package): the first token's (CLS) row is computed with
exact softmax attention over every real key, softmax(q_0 k^T) v plus the value convolution, instead
of through the landmarks; the other rows are unchanged. The landmark path reads one query through
landmark means of the keys, each the mean of ceil(N / m) consecutive tokens, so a key that only a few
patches carry reaches that row diluted l-fold; the exact row costs O(N d) per head. When only the
first row is asked for (`rows=1`, a model that reads CLS alone), the landmarks are not computed at
all. The attention factors then give that exact row as row 0 of left @ attn3.

Memory: O(N m) per head; nothing of size N x N is formed.
"""

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from gimp_jax.models import mixed_precision


def iterative_pinv(x: jax.Array, iterations: int = 6, per_example: bool = False) -> jax.Array:
  """Moore-Penrose pseudo-inverse by the iterative method of the Nyströmformer.

  Args:
    x: [B, ..., m, m] float32 (softmax matrices).
    iterations: number of Newton-Schulz-type iterations.
    per_example: take the initial scale's maxima per leading index b (over heads and rows) instead
      of over the whole tensor.

  Returns:
    [B, ..., m, m] approximation of pinv(x); initial z = x^T / (max_i sum_j |x_ij| * max_j sum_i
    |x_ij|) with both maxima over the whole tensor (the package), or over each x[b].
  """
  abs_x = jnp.abs(x)
  axes = tuple(range(1, x.ndim - 1)) if per_example else None
  rows, cols = jnp.sum(abs_x, axis=-1), jnp.sum(abs_x, axis=-2)   # [B, ..., m]
  scale = jnp.max(rows, axis=axes) * jnp.max(cols, axis=axes)     # [B] or []
  if per_example:
    scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
  z = jnp.swapaxes(x, -1, -2) / scale
  eye = jnp.eye(x.shape[-1], dtype=x.dtype)

  for _ in range(iterations):  # unrolled: XLA schedules the straight line (backward 9% faster)
    xz = x @ z
    z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
  return z


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def implicit_pinv(x: jax.Array, iterations: int = 6, per_example: bool = False) -> jax.Array:
  """`iterative_pinv` whose gradient is that of the exact inverse at its result z:
  dL/dx = -z^T (dL/dz) z^T (2 products of m x m instead of back-propagating the iterations)."""
  return iterative_pinv(x, iterations, per_example)


def _implicit_fwd(x, iterations, per_example):
  z = iterative_pinv(x, iterations, per_example)
  return z, z


def _implicit_bwd(iterations, per_example, z, g):
  del iterations, per_example
  zt = jnp.swapaxes(z, -1, -2)
  return (-(zt @ g) @ zt,)


implicit_pinv.defvjp(_implicit_fwd, _implicit_bwd)


def softmax_rows(logits: jax.Array, mask: jax.Array | None = None,
                 front: jax.Array | None = None) -> jax.Array:
  """Softmax over the last axis, computed on a [rows, n] view of `logits`.

  XLA on CPU emits the backward's reductions (the row sums of y * g) about 5x faster at rank 2
  than the same reductions at rank 4 ([1, 8, 23296, 256] forward + backward: 1.00 -> 0.17 CPU-s),
  hence the reshape; the numbers are those of `jax.nn.softmax`.

  Args:
    logits: [B, H, R, n].
    mask: optional [B, n] bool, False = key left out (weight 0); given with `front`.
    front: [B] number of extra keys of logit 0 in every row of example b (virtual zero keys).

  Returns:
    [B, H, R, n] attention weights.
  """
  shape = logits.shape
  rows = logits.reshape(-1, shape[-1])                                   # [B * H * R, n]
  if mask is None:
    return jax.nn.softmax(rows, axis=-1).reshape(shape)
  per_example = math.prod(shape[1:-1])
  keep = jnp.broadcast_to(mask[:, None, :], (shape[0], per_example, shape[-1])).reshape(rows.shape)
  extra = jnp.repeat(front.astype(rows.dtype), per_example)[:, None]     # [rows, 1]
  rows = jnp.where(keep, rows, -jnp.inf)
  peak = jnp.maximum(jnp.max(rows, axis=-1, keepdims=True), jnp.where(extra > 0, 0.0, -jnp.inf))
  peak = jax.lax.stop_gradient(peak)  # the result does not depend on it
  expo = jnp.exp(rows - peak)
  denom = jnp.sum(expo, axis=-1, keepdims=True) + extra * jnp.exp(-peak)
  return (expo / denom).reshape(shape)


def _shifted_sum(v: jax.Array, kernel: jax.Array) -> jax.Array:
  """sum_k kernel[h, k] * v[..., i + k - K // 2, :], zero padded; one fused pass over v."""
  taps = kernel.shape[-1]
  half = taps // 2
  n = v.shape[2]
  padded = jnp.pad(v, ((0, 0), (0, 0), (half, half), (0, 0)))
  out = jnp.zeros_like(v)
  for k in range(taps):
    out = out + kernel[None, :, k, None, None].astype(v.dtype) * jax.lax.slice_in_dim(
        padded, k, k + n, axis=2)
  return out


@jax.custom_vjp
def depthwise_conv_seq(v: jax.Array, kernel: jax.Array) -> jax.Array:
  """Per-head depthwise cross-correlation along the sequence, zero padded ("same" size).

  Written as K shifted multiply-adds that XLA fuses into one pass (a grouped convolution ran 2.2x
  slower on CPU), with a hand-written backward: d/dv is the same sum with the kernel reversed,
  d/dkernel one blocked matmul (`_kernel_grad`; the automatic backward materialised K padded
  copies: 4x slower and 2x longer to compile).

  Args:
    v: [B, H, N, D].
    kernel: [H, K] with K odd.

  Returns:
    [B, H, N, D] with out[..., i, :] = sum_k kernel[h, k] * v[..., i + k - K // 2, :].
  """
  return _shifted_sum(v, kernel)


def _conv_fwd(v, kernel):
  return _shifted_sum(v, kernel), (v, kernel)


def _kernel_grad(v: jax.Array, g: jax.Array, taps: int) -> jax.Array:
  """dk[h, k] = sum_{b, i, d} g[b, h, i, d] * v[b, h, i + k - taps // 2, d] as one matmul.

  The sequence is cut into blocks of T >= taps - 1 rows: block j of g against rows
  [jT - half, (j + 2) T - half) of v gives
  A[h, t, s] = sum_{b, j, d} g[.., jT + t, :] . v[.., jT + s - half, :], and
  dk[h, k] = sum_t A[h, t, t + k]: 2 T N d multiply-adds per head (T = 32) instead of 33 passes
  over g and v (0.40 -> 0.19 CPU-s at [1, 8, 23296, 64]).
  """
  b, h, n, d = g.shape
  half, size = taps // 2, max(32, taps - 1)
  blocks = -(-n // size)
  gb = jnp.pad(g, ((0, 0), (0, 0), (0, blocks * size - n), (0, 0))).reshape(b, h, blocks, size, d)
  vb = jnp.pad(v, ((0, 0), (0, 0), (half, (blocks + 1) * size - n - half), (0, 0)))
  vb = vb.reshape(b, h, blocks + 1, size, d)
  windows = jnp.concatenate([vb[:, :, :-1], vb[:, :, 1:]], axis=3)       # [b, h, J, 2T, d]
  a = jnp.einsum("bhjtd,bhjsd->hts", gb, windows, preferred_element_type=jnp.float32)
  t, k = np.arange(size)[:, None], np.arange(taps)[None, :]
  return a[:, t, t + k].sum(1)                                          # [h, taps]


def _conv_bwd(res, g):
  v, kernel = res
  dv = _shifted_sum(g, kernel[:, ::-1])
  return dv, _kernel_grad(v, g, kernel.shape[-1]).astype(kernel.dtype)


depthwise_conv_seq.defvjp(_conv_fwd, _conv_bwd)


class NystromAttention(nnx.Module):
  """Nyström self-attention.

  Attributes mirror the PyTorch package: `to_qkv` [dim, 3 * heads * dim_head] without bias,
  `to_out` [heads * dim_head, dim] with bias, `res_conv` [heads, kernel] (depthwise, no bias).
  `pinv_grad`: "unrolled" or "implicit"; `exact_cls`: the first row by exact softmax attention
  (module docstring).
  """

  def __init__(self, dim: int = 512, *, heads: int = 8, dim_head: int = 64,
               num_landmarks: int = 256, pinv_iterations: int = 6, residual_kernel: int = 33,
               dropout: float = 0.0, pinv_grad: str = "unrolled", exact_cls: bool = False,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if pinv_grad not in ("unrolled", "implicit"):
      raise ValueError(f"pinv_grad: {pinv_grad!r}, expected 'unrolled' or 'implicit'")
    inner = heads * dim_head
    self.pinv_grad = pinv_grad
    self.exact_cls = exact_cls
    self.heads = heads
    self.dim_head = dim_head
    self.num_landmarks = num_landmarks
    self.pinv_iterations = pinv_iterations
    self.dtype = dtype
    self.to_qkv = mixed_precision.linear(dim, 3 * inner, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_out = mixed_precision.linear(inner, dim, dtype=dtype, rngs=rngs)
    bound = 1.0 / math.sqrt(residual_kernel)  # PyTorch's default Conv2d init bound for fan_in = K.
    self.res_conv = nnx.Param(jax.random.uniform(
        rngs.params(), (heads, residual_kernel), jnp.float32, -bound, bound))
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def _heads(self, t: jax.Array) -> jax.Array:
    b, n, _ = t.shape
    return t.reshape(b, n, self.heads, self.dim_head).transpose(0, 2, 1, 3)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               return_landmark_attention: bool = False, rows: int | None = None):
    """Applies attention.

    Args:
      x: [B, N, dim].
      mask: optional [B, N] bool key-padding mask, True for real tokens, padding trailing.
      return_landmark_attention: also return the factors needed to read one row of the full
        attention matrix without forming it (see `attention_rows`).
      rows: output only the first `rows` tokens (R = rows; None: all, R = N). Keys, values and
        landmarks still come from all N tokens, so these rows equal the first rows of the full
        output; the queries, attn1, its products and the output projection of the other N - R
        tokens are not computed (a model that reads only the CLS token passes rows=1).

    Returns:
      [B, R, dim]; with `return_landmark_attention`, also (attn1 @ pinv(attn2) [B, H, R, m],
      attn3 [B, H, m, N]) for the real tokens of each example.
    """
    if mask is None and self.exact_cls:  # every key real; the pinv scale per example
      mask = jnp.ones(x.shape[:2], bool)
    if mask is None:
      out, (attn1, inv, attn3) = self._unmasked(x, rows)
    else:
      out, (attn1, inv, attn3) = self._masked(x, mask, rows)
      out = out * mask[:, :rows, None].astype(out.dtype)
    out = self.dropout(self.to_out(out))
    if return_landmark_attention:
      return out, (attn1 @ inv, attn3)
    return out

  def _qkv(self, x: jax.Array, start: int = 0, rows: int | None = None
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, H, R, d] of rows [start, start + R) of x (all N when rows is None), k and v
    [B, H, N, d] of all rows; q scaled by dim_head**-0.5."""
    if rows is None:
      q, k, v = jnp.split(self.to_qkv(x), 3, axis=-1)
    else:
      inner = self.heads * self.dim_head
      kernel = self.to_qkv.kernel[...].astype(self.dtype)
      x = x.astype(self.dtype)
      q = mixed_precision.matmul(x[:, start:start + rows], kernel[:, :inner])
      k, v = jnp.split(mixed_precision.matmul(x, kernel[:, inner:]), 2, axis=-1)
    q, k, v = self._heads(q), self._heads(k), self._heads(v)
    return q * self.dim_head ** -0.5, k, v

  def _conv(self, v: jax.Array, start: int, rows: int | None) -> jax.Array:
    """The value convolution at rows [start, start + R) of v [B, H, N, d] (all when None)."""
    if rows is None:
      return depthwise_conv_seq(v, self.res_conv[...])
    half = self.res_conv.shape[-1] // 2
    lo = max(start - half, 0)  # rows past start + R + half reach no output row
    out = depthwise_conv_seq(v[:, :, lo:start + rows + half], self.res_conv[...])
    return out[:, :, start - lo:start - lo + rows]

  def _mix(self, attn1: jax.Array, attn2: jax.Array, attn3: jax.Array, v: jax.Array,
           per_example: bool, start: int = 0, rows: int | None = None):
    """attn1 @ (pinv(attn2) @ (attn3 @ v)) in float32, plus the value convolution.

    The package computes (attn1 @ pinv) @ (attn3 @ v): N m^2 + 2 N m d multiply-adds per head.
    Associated from the right it is 2 N m d + m^2 d (m = 256, d = 64: 3x fewer at N = 6000);
    the N x m product attn1 @ pinv is formed only when attention maps are asked for.

    attn1 holds the query rows [start, start + R) (all N when rows is None).

    Returns:
      [B, R, H * d] merged heads, and (attn1, pinv(attn2), attn3).
    """
    pinv = implicit_pinv if self.pinv_grad == "implicit" else iterative_pinv
    inv = pinv(attn2, self.pinv_iterations, per_example)
    out = attn1 @ (inv @ (attn3 @ v.astype(jnp.float32)))
    out = out.astype(self.dtype) + self._conv(v, start, rows)
    b, h, n, d = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, n, h * d), (attn1, inv, attn3)

  def _unmasked(self, x: jax.Array, rows: int | None):
    b, n, _ = x.shape
    m = self.num_landmarks
    pad = (-n) % m
    x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
    q, k, v = self._qkv(x, pad, rows)
    l = math.ceil(n / m)
    f32 = lambda t: t.astype(jnp.float32)
    if rows is None:
      q_land = f32(q).reshape(b, self.heads, m, l, self.dim_head).sum(3) / l
    else:  # q of all tokens is not formed: the landmark means of x, projected (q is linear in x)
      x_land = f32(x).reshape(b, m, l, -1).sum(2) / l
      inner = self.heads * self.dim_head
      q_land = self._heads(x_land @ f32(self.to_qkv.kernel[...][:, :inner])) * self.dim_head ** -0.5
    k_land = f32(k).reshape(b, self.heads, m, l, self.dim_head).sum(3) / l
    attn1 = softmax_rows(jnp.einsum("bhid,bhjd->bhij", f32(q), k_land))
    attn2 = softmax_rows(jnp.einsum("bhid,bhjd->bhij", q_land, k_land))
    attn3 = softmax_rows(jnp.einsum("bhid,bhjd->bhij", q_land, f32(k)))
    out, (attn1, inv, attn3) = self._mix(attn1, attn2, attn3, v, False, pad, rows)
    if rows is None:
      out, attn1 = out[:, pad:], attn1[:, :, pad:]
    return out, (attn1, inv, attn3[..., pad:])

  def _masked(self, x: jax.Array, mask: jax.Array, rows: int | None):
    """Trailing-padded bags: each example behaves as its unpadded self (see module docstring)."""
    b, n_buf, _ = x.shape
    m = self.num_landmarks
    x = x * mask[:, :, None].astype(x.dtype)
    q, k, v = self._qkv(x, 0, rows)
    if self.exact_cls and rows == 1:  # the first row alone: no landmarks
      return self._exact_first(q, k, v, mask)
    f32 = lambda t: t.astype(jnp.float32)
    n = jnp.sum(mask, axis=1).astype(jnp.int32)           # [B] real lengths
    front = (-n) % m                                      # [B] virtual front padding
    group = (n + m - 1) // m                              # [B] tokens per landmark, ceil(n / m)
    pos = jnp.arange(n_buf, dtype=jnp.int32)[None, :]
    seg = jnp.where(mask, (pos + front[:, None]) // group[:, None], m)  # [B, N]; m = dropped
    # Landmark means of q and k are means of x projected (q, k are linear in x without bias): one
    # O(N dim) segment sum over x replaces two [N, m] one-hot products per layer.
    ids = (seg + (m + 1) * jnp.arange(b, dtype=jnp.int32)[:, None]).reshape(-1)  # sorted
    sums = jax.ops.segment_sum(f32(x).reshape(b * n_buf, -1), ids, num_segments=b * (m + 1),
                               indices_are_sorted=True).reshape(b, m + 1, -1)[:, :m]
    means = sums / group[:, None, None].astype(jnp.float32)              # [B, m, dim]
    inner = self.heads * self.dim_head
    qk_land = means @ f32(self.to_qkv.kernel[...][:, :2 * inner])       # [B, m, 2 * inner]
    q_land, k_land = jnp.split(qk_land, 2, axis=-1)
    q_land, k_land = self._heads(q_land) * self.dim_head ** -0.5, self._heads(k_land)
    attn1 = softmax_rows(jnp.einsum("bhid,bhjd->bhij", f32(q), k_land))
    attn2 = softmax_rows(jnp.einsum("bhid,bhjd->bhij", q_land, k_land))
    # Keys: real tokens, plus `front` virtual zero keys with logit 0 and value 0.
    attn3 = softmax_rows(jnp.einsum("bhid,bhjd->bhij", q_land, f32(k)), mask, front)
    out, factors = self._mix(attn1, attn2, attn3, v, True, 0, rows)
    if not self.exact_cls:
      return out, factors
    first, (_, _, row) = self._exact_first(q, k, v, mask)
    return out.at[:, :1].set(first), exact_factors(factors, row)

  def _exact_first(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array):
    """Row 0 by exact softmax attention over the real keys (module docstring).

    Args:
      q: [B, H, R, d] queries (row 0 is used); k, v: [B, H, N, d]; mask: [B, N] real keys.

    Returns:
      ([B, 1, H * d] merged heads, factors (ones [B, H, 1, 1], ones, attention [B, H, 1, N])).
    """
    f32 = lambda t: t.astype(jnp.float32)
    logits = jnp.einsum("bhid,bhjd->bhij", f32(q[:, :, :1]), f32(k))        # [B, H, 1, N]
    attn = softmax_rows(logits, mask, jnp.zeros(mask.shape[0], jnp.int32))
    out = (attn @ f32(v)).astype(self.dtype) + self._conv(v, 0, 1)
    b, h, _, d = out.shape
    one = jnp.ones((b, h, 1, 1), jnp.float32)
    return out.transpose(0, 2, 1, 3).reshape(b, 1, h * d), (one, one, attn)


def exact_factors(factors: tuple[jax.Array, jax.Array, jax.Array], row: jax.Array):
  """Landmark factors (attn1 [B, H, R, m], pinv [B, H, m, m], attn3 [B, H, m, N]) whose product's
  row 0 is `row` [B, H, 1, N] instead: one more landmark column/row, with row 0 of attn1 the unit
  vector on it and the other rows unchanged (`attention_rows` then reads the exact first row)."""
  attn1, inv, attn3 = factors
  b, h, r, m = attn1.shape
  unit = jnp.zeros((b, h, 1, m + 1), attn1.dtype).at[..., m].set(1.0)
  attn1 = jnp.concatenate([unit, jnp.pad(attn1[:, :, 1:], ((0, 0), (0, 0), (0, 0), (0, 1)))], 2)
  inv = jnp.pad(inv, ((0, 0), (0, 0), (0, 1), (0, 1))).at[..., m, m].set(1.0)
  return attn1, inv, jnp.concatenate([attn3, row], axis=2)


def attention_rows(factors: tuple[jax.Array, jax.Array], rows: jax.Array) -> jax.Array:
  """Rows of the (never materialised) Nyström attention matrix.

  Args:
    factors: (left [B, H, N, m], attn3 [B, H, m, N]) from `NystromAttention(...,
      return_landmark_attention=True)`.
    rows: [R] int query positions.

  Returns:
    [B, H, R, N]: attention of those queries over all N keys (excluding the residual convolution).
  """
  left, attn3 = factors
  return jnp.take(left, rows, axis=2) @ attn3
