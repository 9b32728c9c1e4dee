"""Nyström attention against the PyTorch `nystrom-attention` package with the same weights."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from nystrom_attention import NystromAttention as TorchNystrom

from gimp_jax.interop.torch import nystrom_attention_from_torch
from gimp_jax.models import nystrom


def _pair(dim=64, heads=8, landmarks=256, seed=0):
  torch.manual_seed(seed)
  ref = TorchNystrom(dim=dim, dim_head=dim // heads, heads=heads, num_landmarks=landmarks,
                     pinv_iterations=6, residual=True, residual_conv_kernel=33).eval()
  return ref, nystrom_attention_from_torch(ref)


@pytest.mark.parametrize("n", [1, 255, 256, 1000, 6001])
def test_parity_with_pytorch(n):
  ref, ours = _pair()
  x = np.random.default_rng(n).standard_normal((1, n, 64)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x)).numpy()
  got = np.asarray(jax.jit(lambda m, x: m(x))(ours, jnp.asarray(x)))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_parity_batch_couples_pinv_scale_like_pytorch():
  ref, ours = _pair(landmarks=16)
  x = np.random.default_rng(1).standard_normal((3, 100, 64)).astype(np.float32)
  x[1] *= 4.0  # different logit scales per example: a per-matrix pinv scale would differ
  with torch.no_grad():
    expected = ref(torch.from_numpy(x)).numpy()
  got = jax.jit(lambda m, x: m(x))(ours, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_iterative_pinv_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 8, 8)).astype(np.float64)
  x = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
  a = np.abs(x)
  z = np.swapaxes(x, -1, -2) / (a.sum(-1).max() * a.sum(-2).max())
  eye = np.eye(8)
  for _ in range(6):
    xz = x @ z
    z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
  got = nystrom.iterative_pinv(jnp.asarray(x, jnp.float32), 6)
  np.testing.assert_allclose(np.asarray(got), z, rtol=1e-4, atol=1e-5)


def test_depthwise_conv_matches_numpy():
  rng = np.random.default_rng(0)
  v = rng.standard_normal((2, 3, 20, 4)).astype(np.float32)
  w = rng.standard_normal((3, 5)).astype(np.float32)
  vp = np.pad(v, ((0, 0), (0, 0), (2, 2), (0, 0)))
  expected = sum(w[None, :, k, None, None] * vp[:, :, k:k + 20] for k in range(5))
  got = nystrom.depthwise_conv_seq(jnp.asarray(v), jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


@pytest.mark.parametrize("n,pad", [(1, 7), (255, 300), (256, 10), (700, 400)])
def test_padded_bag_equals_unpadded(n, pad):
  """Semantics of the key-padding mask: real rows as the unpadded computation, padded rows zero."""
  _, ours = _pair(landmarks=256)
  x = np.random.default_rng(n).standard_normal((1, n, 64)).astype(np.float32)
  run = jax.jit(lambda m, x, mask=None: m(x, mask))
  unpadded = np.asarray(run(ours, jnp.asarray(x)))
  xp = np.concatenate([x, 3.0 * np.ones((1, pad, 64), np.float32)], axis=1)
  mask = np.arange(n + pad)[None] < n
  padded = np.asarray(run(ours, jnp.asarray(xp), jnp.asarray(mask)))
  np.testing.assert_allclose(padded[:, :n], unpadded, atol=1e-4, rtol=0)
  # Padded rows carry the output bias only (attention output zeroed before the projection).
  np.testing.assert_allclose(padded[:, n:], np.broadcast_to(ours.to_out.bias[...], (1, pad, 64)),
                             atol=1e-6)


def test_attention_rows_match_explicit_product():
  ref, ours = _pair(landmarks=8)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 50, 64)).astype(np.float32))
  _, factors = ours(x, return_landmark_attention=True)
  with torch.no_grad():
    _, attn = ref(torch.from_numpy(np.array(x)), return_attn=True)
  attn = attn.numpy()[:, :, -50:, -50:]  # drop the front padding rows/columns
  rows = nystrom.attention_rows(factors, jnp.array([0, 7]))
  np.testing.assert_allclose(np.asarray(rows), attn[:, :, [0, 7]], atol=1e-5)


@pytest.mark.parametrize("b,n,taps", [(1, 30, 7), (2, 100, 33)])
def test_depthwise_conv_gradients_match_autodiff_of_numpy_definition(b, n, taps):
  rng = np.random.default_rng(1)
  v = jnp.asarray(rng.standard_normal((b, 2, n, 3)).astype(np.float32))
  w = jnp.asarray(rng.standard_normal((2, taps)).astype(np.float32))
  cot = jnp.asarray(rng.standard_normal((b, 2, n, 3)).astype(np.float32))

  def reference(v, w):  # dense banded matrix form: out[i] = sum_j T[h, i, j] v[j]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    k = j - i + taps // 2
    band = jnp.where((k >= 0) & (k < taps), w[:, np.clip(k, 0, taps - 1)], 0.0)  # [H, N, N]
    return jnp.einsum("hij,bhjd->bhid", band, v)

  ours = jax.grad(lambda v, w: jnp.sum(nystrom.depthwise_conv_seq(v, w) * cot), (0, 1))(v, w)
  ref = jax.grad(lambda v, w: jnp.sum(reference(v, w) * cot), (0, 1))(v, w)
  np.testing.assert_allclose(np.asarray(reference(v, w)),
                             np.asarray(nystrom.depthwise_conv_seq(v, w)), atol=1e-5)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _softmax_rows(rng, shape, temperature=1.0):
  x = rng.standard_normal(shape) * temperature
  return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def test_implicit_pinv_gradient():
  """The implicit gradient is the exact inverse's, -Z^T G Z^T (NumPy, float64), once the iteration
  has converged, as the unrolled gradient then is; the forward pass is iterative_pinv's. (At the
  package's 6 iterations the two gradients differ: `python -m experiments.bench.profile` states by
  how much on the paper model.)"""
  rng = np.random.default_rng(0)
  a = _softmax_rows(rng, (2, 3, 16, 16), 3.0)
  g = rng.standard_normal(a.shape)
  inv = np.linalg.inv(a)
  exact = -np.swapaxes(inv, -1, -2) @ g @ np.swapaxes(inv, -1, -2)
  aj, gj = jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32)
  grad = lambda f, it: jax.grad(lambda x: jnp.sum(f(x, it) * gj))(aj)
  np.testing.assert_array_equal(np.asarray(nystrom.implicit_pinv(aj, 6)),
                                np.asarray(nystrom.iterative_pinv(aj, 6)))
  np.testing.assert_allclose(np.asarray(grad(nystrom.implicit_pinv, 30)), exact, rtol=1e-3,
                             atol=1e-3 * np.abs(exact).max())
  unrolled30 = np.asarray(grad(nystrom.iterative_pinv, 30))
  np.testing.assert_allclose(unrolled30, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())


@pytest.mark.parametrize("pinv_grad,scale,bound", [("unrolled", 1.0, 1e-5), ("unrolled", 3.0, 1e-5),
                                                  ("implicit", 1.0, 0.02), ("implicit", 3.0, 0.35)])
def test_gradients_against_pytorch_autograd(pinv_grad, scale, bound):
  """Gradients of sum(out * c) w.r.t. the input and W_qkv against the package's autograd (relative
  L2 error). "unrolled" back-propagates through the same 6 iterations: equal up to float rounding
  (~5e-7). "implicit" is the exact inverse's gradient at the 6-step result, off by the iteration's
  distance from convergence, which grows with the logit scale: measured 0.7% / 0.8% (input / W_qkv)
  for unit-scale inputs and 27% / 24% for inputs scaled by 3; the bounds are 2% and 35%."""
  ref, ours = _pair(landmarks=32)
  ours.pinv_grad = pinv_grad
  rng = np.random.default_rng(0)
  x = scale * rng.standard_normal((2, 300, 64)).astype(np.float32)
  cot = rng.standard_normal((2, 300, 64)).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_(True)
  (ref(xt) * torch.from_numpy(cot)).sum().backward()
  g_model, g_x = jax.jit(nnx.grad(lambda m, x: jnp.sum(m(x) * cot), argnums=(0, 1)))(
      ours, jnp.asarray(x))
  rel = lambda a, b: np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)  # noqa: E731
  assert rel(g_x, xt.grad.numpy()) < bound
  assert rel(g_model.to_qkv.kernel[...], ref.to_qkv.weight.grad.numpy().T) < bound


def test_masked_batch_gives_each_bag_its_package_result_alone():
  """Bags of different lengths and logit scales, padded into one batch: each bag's rows are the
  package's output for that bag alone (batch size 1), whatever its batch-mates: the pinv scale is
  per bag under a mask (a global scale couples them, see the batched parity test above)."""
  ref, ours = _pair(landmarks=16)
  rng = np.random.default_rng(5)
  lengths, scales = (40, 100, 7), (1.0, 4.0, 0.3)
  bags = [s * rng.standard_normal((n, 64)).astype(np.float32) for n, s in zip(lengths, scales)]
  n_buf = 128
  x = np.zeros((3, n_buf, 64), np.float32)
  for i, bag in enumerate(bags):
    x[i, :len(bag)] = bag
  mask = np.arange(n_buf)[None] < np.asarray(lengths)[:, None]
  run = jax.jit(lambda m, x, mask: m(x, mask))
  got = np.asarray(run(ours, jnp.asarray(x), jnp.asarray(mask)))
  for i, bag in enumerate(bags):
    with torch.no_grad():
      expected = ref(torch.from_numpy(bag[None])).numpy()[0]
    np.testing.assert_allclose(got[i, :len(bag)], expected, atol=1e-4, rtol=0)
  alone = np.asarray(run(ours, jnp.asarray(x[:1]), jnp.asarray(mask[:1])))
  np.testing.assert_allclose(got[0], alone[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("n,landmarks,masked", [(300, 16, False), (100, 256, False),
                                                 (300, 16, True), (100, 256, True)])
def test_first_rows_alone_match_package_rows_and_gradient(n, landmarks, masked):
  """rows=R outputs the package's first R rows, and back-propagates the package's gradient of
  those rows (to the input and to every parameter): keys, values and landmarks from all tokens."""
  ref, ours = _pair(landmarks=landmarks)
  rng = np.random.default_rng(n)
  x = rng.standard_normal((1, n, 64)).astype(np.float32)
  g = rng.standard_normal((1, 3, 64)).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_(True)
  out_t = ref(xt)[:, :3]
  (out_t * torch.from_numpy(g)).sum().backward()
  mask = jnp.ones((1, n), bool) if masked else None
  got = ours(jnp.asarray(x), mask, rows=3)
  np.testing.assert_allclose(np.asarray(got), out_t.detach().numpy(), atol=1e-4, rtol=0)
  graph, params, rest = nnx.split(ours, nnx.Param, ...)
  loss = lambda p, x: jnp.sum(nnx.merge(graph, p, rest)(x, mask, rows=3) * g)  # noqa: E731
  dp, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(dp["to_qkv"]["kernel"][...]),
                             ref.to_qkv.weight.grad.numpy().T, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(dp["to_out"]["kernel"][...]),
                             ref.to_out[0].weight.grad.numpy().T, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(dp["res_conv"][...]),
                             ref.res_conv.weight.grad.numpy()[:, 0, :, 0], atol=1e-4, rtol=0)


def _exact_first_row_torch(ref, bag: np.ndarray) -> np.ndarray:
  """Row 0 of `ref`'s layer with exact softmax attention: to_out(softmax(q_0 k^T) v + conv(v)_0)
  with the package's own weights, in PyTorch [dim]."""
  heads = ref.heads
  with torch.no_grad():
    x = torch.from_numpy(bag)
    q, k, v = ref.to_qkv(x).chunk(3, dim=-1)                      # [n, heads * d]
    split = lambda t: t.reshape(len(bag), heads, -1).transpose(0, 1)  # noqa: E731
    q, k, v = split(q) * ref.scale, split(k), split(v)            # [heads, n, d]
    row = torch.softmax(q[:, :1] @ k.transpose(1, 2), dim=-1) @ v   # [heads, 1, d]
    conv = ref.res_conv(v[None])[0][:, :1]                         # [heads, 1, d]
    return ref.to_out((row + conv).transpose(0, 1).reshape(1, -1)).numpy()[0]


@pytest.mark.parametrize("rows", [None, 1])
def test_exact_first_row_is_softmax_attention_and_leaves_the_other_rows(rows):
  """exact_cls: each padded bag's row 0 is exact softmax attention over its own real keys (PyTorch,
  the package's weights), rows 1.. the package's Nyström rows for that bag alone; the attention
  factors give that exact row."""
  ref, ours = _pair(landmarks=16)
  ours.exact_cls = True
  rng = np.random.default_rng(9)
  lengths = (120, 37)
  x = np.zeros((2, 128, 64), np.float32)
  for i, n in enumerate(lengths):
    x[i, :n] = rng.standard_normal((n, 64))
  mask = np.arange(128)[None] < np.asarray(lengths)[:, None]
  out, (left, attn3) = jax.jit(lambda m, x, k: m(x, k, return_landmark_attention=True, rows=rows))(
      ours, jnp.asarray(x), jnp.asarray(mask))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(np.asarray(out[i, 0]), _exact_first_row_torch(ref, x[i, :n]),
                               atol=1e-4, rtol=0)
    if rows is None:
      with torch.no_grad():
        expected = ref(torch.from_numpy(x[i:i + 1, :n])).numpy()[0]
      np.testing.assert_allclose(np.asarray(out[i, 1:n]), expected[1:], atol=1e-4, rtol=0)
    with torch.no_grad():
      qk = ref.to_qkv(torch.from_numpy(x[i, :n])).chunk(3, dim=-1)
      q = qk[0].reshape(n, ref.heads, -1).transpose(0, 1)[:, :1] * ref.scale
      k = qk[1].reshape(n, ref.heads, -1).transpose(0, 1)
      expected_attn = torch.softmax(q @ k.transpose(1, 2), dim=-1)[:, 0].numpy()  # [heads, n]
    got_attn = np.asarray((left[i, :, :1] @ attn3[i])[:, 0, :n])
    np.testing.assert_allclose(got_attn, expected_attn, atol=1e-6, rtol=0)
