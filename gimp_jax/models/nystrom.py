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
The result for the real tokens is, up to float rounding, the result of the unpadded computation on
those tokens alone: the front padding, the landmark grouping and the zero-logit padded keys are
rebuilt from each example's own length, and trailing pad tokens are ignored entirely. The one
coupling across a batch that remains is the package's global pinv scale (step 4); with batch size 1
a padded bag gives the unpadded result. Rows of the output at padded positions are zero.

Memory: O(N m) per head; nothing of size N x N is formed.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp


def iterative_pinv(x: jax.Array, iterations: int = 6) -> jax.Array:
  """Moore-Penrose pseudo-inverse by the iterative method of the Nyströmformer.

  Args:
    x: [..., m, m] float32 (softmax matrices).
    iterations: number of Newton-Schulz-type iterations.

  Returns:
    [..., m, m] approximation of pinv(x); initial z = x^T / (max_i sum_j |x_ij| * max_j sum_i |x_ij|)
    with both maxima over the whole tensor.
  """
  abs_x = jnp.abs(x)
  scale = jnp.max(jnp.sum(abs_x, axis=-1)) * jnp.max(jnp.sum(abs_x, axis=-2))
  z = jnp.swapaxes(x, -1, -2) / scale
  eye = jnp.eye(x.shape[-1], dtype=x.dtype)

  def body(_, z):
    xz = x @ z
    return 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
  return jax.lax.fori_loop(0, iterations, body, z)


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
  d/dkernel a loop of K reductions (the automatic backward materialised K padded copies: 4x slower
  and 2x longer to compile).

  Args:
    v: [B, H, N, D].
    kernel: [H, K] with K odd.

  Returns:
    [B, H, N, D] with out[..., i, :] = sum_k kernel[h, k] * v[..., i + k - K // 2, :].
  """
  return _shifted_sum(v, kernel)


def _conv_fwd(v, kernel):
  return _shifted_sum(v, kernel), (v, kernel)


def _conv_bwd(res, g):
  v, kernel = res
  taps = kernel.shape[-1]
  half = taps // 2
  n = v.shape[2]
  dv = _shifted_sum(g, kernel[:, ::-1])
  padded = jnp.pad(v, ((0, 0), (0, 0), (half, half), (0, 0)))

  def tap(k, dk):
    window = jax.lax.dynamic_slice_in_dim(padded, k, n, axis=2)
    return dk.at[:, k].set(jnp.einsum("bhnd,bhnd->h", g, window,
                                      preferred_element_type=jnp.float32))
  dk = jax.lax.fori_loop(0, taps, tap, jnp.zeros(kernel.shape, jnp.float32))
  return dv, dk.astype(kernel.dtype)


depthwise_conv_seq.defvjp(_conv_fwd, _conv_bwd)


class NystromAttention(nnx.Module):
  """Nyström self-attention.

  Attributes mirror the PyTorch package: `to_qkv` [dim, 3 * heads * dim_head] without bias,
  `to_out` [heads * dim_head, dim] with bias, `res_conv` [heads, kernel] (depthwise, no bias).
  """

  def __init__(self, dim: int = 512, *, heads: int = 8, dim_head: int = 64,
               num_landmarks: int = 256, pinv_iterations: int = 6, residual_kernel: int = 33,
               dropout: float = 0.0, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    inner = heads * dim_head
    self.heads = heads
    self.dim_head = dim_head
    self.num_landmarks = num_landmarks
    self.pinv_iterations = pinv_iterations
    self.dtype = dtype
    self.to_qkv = nnx.Linear(dim, 3 * inner, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_out = nnx.Linear(inner, dim, dtype=dtype, rngs=rngs)
    bound = 1.0 / math.sqrt(residual_kernel)  # PyTorch's default Conv2d init bound for fan_in = K.
    self.res_conv = nnx.Param(jax.random.uniform(
        rngs.params(), (heads, residual_kernel), jnp.float32, -bound, bound))
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def _heads(self, t: jax.Array) -> jax.Array:
    b, n, _ = t.shape
    return t.reshape(b, n, self.heads, self.dim_head).transpose(0, 2, 1, 3)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               return_landmark_attention: bool = False):
    """Applies attention.

    Args:
      x: [B, N, dim].
      mask: optional [B, N] bool key-padding mask, True for real tokens, padding trailing.
      return_landmark_attention: also return the factors needed to read one row of the full
        attention matrix without forming it (see `attention_rows`).

    Returns:
      [B, N, dim]; with `return_landmark_attention`, also (attn1 @ pinv(attn2) [B, H, N, m],
      attn3 [B, H, m, N]) for the real tokens of each example.
    """
    if mask is None:
      out, (attn1, inv, attn3) = self._unmasked(x)
    else:
      out, (attn1, inv, attn3) = self._masked(x, mask)
      out = out * mask[:, :, None].astype(out.dtype)
    out = self.dropout(self.to_out(out))
    if return_landmark_attention:
      return out, (attn1 @ inv, attn3)
    return out

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    q, k, v = jnp.split(self.to_qkv(x), 3, axis=-1)
    q, k, v = self._heads(q), self._heads(k), self._heads(v)
    return q * self.dim_head ** -0.5, k, v

  def _mix(self, attn1: jax.Array, attn2: jax.Array, attn3: jax.Array, v: jax.Array):
    """attn1 @ (pinv(attn2) @ (attn3 @ v)) in float32, plus the value convolution.

    The package computes (attn1 @ pinv) @ (attn3 @ v): N m^2 + 2 N m d multiply-adds per head.
    Associated from the right it is 2 N m d + m^2 d (m = 256, d = 64: 3x fewer at N = 6000);
    the N x m product attn1 @ pinv is formed only when attention maps are asked for.

    Returns:
      [B, N, H * d] merged heads, and (attn1, pinv(attn2), attn3).
    """
    inv = iterative_pinv(attn2, self.pinv_iterations)
    out = attn1 @ (inv @ (attn3 @ v.astype(jnp.float32)))
    out = out.astype(self.dtype) + depthwise_conv_seq(v, self.res_conv[...])
    b, h, n, d = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, n, h * d), (attn1, inv, attn3)

  def _unmasked(self, x: jax.Array):
    b, n, _ = x.shape
    m = self.num_landmarks
    pad = (-n) % m
    x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
    q, k, v = self._qkv(x)
    l = math.ceil(n / m)
    f32 = lambda t: t.astype(jnp.float32)
    q_land = f32(q).reshape(b, self.heads, m, l, self.dim_head).sum(3) / l
    k_land = f32(k).reshape(b, self.heads, m, l, self.dim_head).sum(3) / l
    attn1 = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", f32(q), k_land), axis=-1)
    attn2 = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", q_land, k_land), axis=-1)
    attn3 = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", q_land, f32(k)), axis=-1)
    out, (attn1, inv, attn3) = self._mix(attn1, attn2, attn3, v)
    return out[:, pad:], (attn1[:, :, pad:], inv, attn3[..., pad:])

  def _masked(self, x: jax.Array, mask: jax.Array):
    """Trailing-padded bags: each example behaves as its unpadded self (see module docstring)."""
    b, n_buf, _ = x.shape
    m = self.num_landmarks
    x = x * mask[:, :, None].astype(x.dtype)
    q, k, v = self._qkv(x)
    f32 = lambda t: t.astype(jnp.float32)
    n = jnp.sum(mask, axis=1).astype(jnp.int32)           # [B] real lengths
    front = (-n) % m                                      # [B] virtual front padding
    group = (n + m - 1) // m                              # [B] tokens per landmark, ceil(n / m)
    pos = jnp.arange(n_buf, dtype=jnp.int32)[None, :]
    seg = jnp.where(mask, (pos + front[:, None]) // group[:, None], m)  # [B, N]; m = dropped
    onehot = jax.nn.one_hot(seg, m, dtype=jnp.float32)    # [B, N, m]; padded rows are all zero

    def landmarks(t):
      sums = jnp.einsum("bnj,bhnd->bhjd", onehot, f32(t))
      return sums / group[:, None, None, None].astype(jnp.float32)

    q_land, k_land = landmarks(q), landmarks(k)
    attn1 = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", f32(q), k_land), axis=-1)
    attn2 = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", q_land, k_land), axis=-1)
    # Keys: real tokens, plus `front` virtual zero keys with logit 0 and value 0.
    logits3 = jnp.einsum("bhid,bhjd->bhij", q_land, f32(k))
    logits3 = jnp.where(mask[:, None, None, :], logits3, -jnp.inf)
    has_front = (front > 0)[:, None, None, None]
    peak = jnp.maximum(jnp.max(logits3, axis=-1, keepdims=True),
                       jnp.where(has_front, 0.0, -jnp.inf))
    expo = jnp.exp(logits3 - peak)
    denom = jnp.sum(expo, axis=-1, keepdims=True) + front[:, None, None, None] * jnp.exp(-peak)
    attn3 = expo / denom
    return self._mix(attn1, attn2, attn3, v)


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
