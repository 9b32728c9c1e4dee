"""SNN, gated Kronecker fusion, MCAT gene groups: NumPy/PyTorch references and padded bags."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gimp_jax.models import fusion, snn

RNG = np.random.default_rng(0)


def w(module, *path):
  node = module
  for p in path:
    node = getattr(node, p)
  return np.asarray(node[...])


def np_linear(x, layer):
  return x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])


def np_selu(x):
  return snn.SELU_SCALE * np.where(x > 0, x, snn.SELU_ALPHA * (np.exp(x) - 1))


def test_alpha_dropout_keeps_zero_mean_unit_variance():
  x = jax.random.normal(jax.random.key(0), (400_000,))
  y = np.asarray(snn.alpha_dropout(x, 0.25, jax.random.key(1)))
  assert abs(y.mean()) < 0.01 and abs(y.var() - 1.0) < 0.01
  a = (0.75 * (1 + 0.25 * snn.ALPHA_PRIME ** 2)) ** -0.5
  dropped = np.isclose(y, a * snn.ALPHA_PRIME * (1 - 0.25))  # a alpha' + b, b = -a alpha' q
  assert abs(dropped.mean() - 0.25) < 0.01


def test_snn_matches_numpy_and_is_deterministic_in_eval():
  model = snn.SNN(20, (8, 6), dropout=0.25, rngs=nnx.Rngs(0))
  x = RNG.standard_normal((3, 20)).astype(np.float32)
  model.eval()
  want = np_selu(np_linear(np_selu(np_linear(x, model.blocks[0].linear)), model.blocks[1].linear))
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)
  model.train()
  assert not np.allclose(np.asarray(model(jnp.asarray(x))), want)
  # LeCun-normal init: weight variance 1 / fan_in.
  big = snn.SNN(2000, (512,), rngs=nnx.Rngs(1))
  np.testing.assert_allclose(w(big.blocks[0], "linear", "kernel").var(), 1 / 2000, rtol=0.05)


def test_bilinear_matches_pytorch():
  ours = fusion.Bilinear(4, 5, 3, rngs=nnx.Rngs(0))
  ref = torch.nn.Bilinear(4, 5, 3)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(w(ours, "kernel")))
    ref.bias.copy_(torch.tensor(w(ours, "bias")))
  a, b = RNG.standard_normal((2, 2, 4)).astype(np.float32)[0], RNG.standard_normal(
      (2, 5)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(a), jnp.asarray(b))),
                             ref(torch.tensor(a), torch.tensor(b)).detach().numpy(), rtol=1e-5,
                             atol=1e-6)


def test_gated_kronecker_fusion_matches_numpy():
  f = fusion.GatedKroneckerFusion(8, 6, scale1=2, scale2=1, mmhid=5, rngs=nnx.Rngs(2))
  f.eval()
  x1, x2 = RNG.standard_normal((2, 8)).astype(np.float32), RNG.standard_normal((2, 6)).astype(
      np.float32)
  relu = lambda t: np.maximum(t, 0)
  sig = lambda t: 1 / (1 + np.exp(-t))
  bil = lambda m: np.einsum("bi,oij,bj->bo", x1, w(m, "kernel"), x2) + w(m, "bias")
  o1 = relu(np_linear(sig(bil(f.linear_z1)) * relu(np_linear(x1, f.linear_h1)), f.linear_o1))
  o2 = relu(np_linear(sig(bil(f.linear_z2)) * relu(np_linear(x2, f.linear_h2)), f.linear_o2))
  o1 = np.concatenate([o1, np.ones((2, 1))], 1)
  o2 = np.concatenate([o2, np.ones((2, 1))], 1)
  kron = np.stack([np.outer(o1[i], o2[i]).reshape(-1) for i in range(2)])
  assert kron.shape == (2, 5 * 7)
  out = relu(np_linear(kron, f.encoder1))
  want = relu(np_linear(np.concatenate([out, o1, o2], 1), f.encoder2))
  np.testing.assert_allclose(np.asarray(f(jnp.asarray(x1), jnp.asarray(x2))), want, rtol=1e-4,
                             atol=1e-5)


def test_gene_groups_of_different_sizes_are_each_embedded_by_their_own_snn():
  groups = ((0, 5, 9), (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12), (12,), (3, 9, 14, 15, 16))  # overlap
  enc = fusion.GeneGroupSNN(17, groups, 8, rngs=nnx.Rngs(3))
  enc.eval()
  x = RNG.standard_normal((2, 17)).astype(np.float32)
  base = np.asarray(enc(jnp.asarray(x)))
  assert base.shape == (2, 4, 8)
  for k, g in enumerate(groups):  # NumPy: SNN_k on that group's genes, with its own weights
    blocks = enc.snns[k].blocks
    assert w(blocks[0].linear, "kernel").shape == (len(g), 8)
    want = np_selu(np_linear(np_selu(np_linear(x[:, list(g)], blocks[0].linear)), blocks[1].linear))
    np.testing.assert_allclose(base[:, k], want, rtol=1e-4, atol=1e-5)
  y = x.copy()
  y[:, 14] += 1.0  # a gene of group 3 only
  changed = np.abs(np.asarray(enc(jnp.asarray(y))) - base).max(axis=(0, 2)) > 1e-6
  np.testing.assert_array_equal(changed, [False, False, False, True])


def test_consecutive_slices_cover_the_genes_in_order():
  assert fusion.consecutive_groups(23, 4) == (tuple(range(6)), tuple(range(6, 12)),
                                              tuple(range(12, 18)), tuple(range(18, 23)))
  with pytest.raises(ValueError):
    fusion.consecutive_groups(4, 6)


def test_coattention_matches_numpy_with_padding():
  att = fusion.CoAttention(6, rngs=nnx.Rngs(4))
  q = RNG.standard_normal((1, 3, 6)).astype(np.float32)
  k = RNG.standard_normal((1, 5, 6)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0]], bool)
  logits = np_linear(q[0], att.q) @ np_linear(k[0, :3], att.k).T / np.sqrt(6)
  a = np.exp(logits - logits.max(1, keepdims=True))
  a /= a.sum(1, keepdims=True)
  want = np_linear(a @ np_linear(k[0, :3], att.v), att.out)
  got, got_a = att(jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_a)[0, :, 3:], 0.0)


@pytest.mark.parametrize("kind", ["porpoise", "pathomic_concat", "mcat"])
def test_fusion_models_ignore_padding(kind):
  rngs = nnx.Rngs(5)
  if kind == "mcat":
    model = fusion.MCAT(12, 30, 2, gene_groups=fusion.consecutive_groups(30, 3), dim=16, heads=2,
                        rngs=rngs)
  else:
    model = fusion.AttentionFusion(12, 30, 2, path_hidden=16, path_dim=8, snn_hidden=(8, 8),
                                   fusion="kronecker" if kind == "porpoise" else "concat",
                                   scale=2, mmhid=8, rngs=rngs)
  model.eval()
  x = RNG.standard_normal((1, 9, 12)).astype(np.float32)
  genes = jnp.asarray(RNG.standard_normal((1, 30)).astype(np.float32))
  xp = np.full((1, 20, 12), 50.0, np.float32)
  xp[:, :9] = x
  mask = jnp.asarray(np.arange(20)[None] < 9)
  want, emb = model(jnp.asarray(x), genes)
  got, emb_p = model(jnp.asarray(xp), genes, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(emb_p), np.asarray(emb), rtol=1e-4, atol=1e-5)
  assert np.asarray(got).shape == (1, 2)
