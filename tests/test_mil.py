"""MIL baselines: NumPy references, PPEG against PyTorch, and padded-bag invariance."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gimp_jax.models import mil

RNG = np.random.default_rng(0)
IN, DIM, C = 12, 16, 3


def params(module, *path):
  node = module
  for p in path:
    node = getattr(node, p)
  return np.asarray(node[...])


def np_softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def np_gated(att, h):
  """CLAM's Attn_Net_Gated in NumPy: [N, dim] -> [N, outputs]."""
  a = np.tanh(h @ params(att, "attention_a", "kernel") + params(att, "attention_a", "bias"))
  b = 1 / (1 + np.exp(-(h @ params(att, "attention_b", "kernel")
                        + params(att, "attention_b", "bias"))))
  return (a * b) @ params(att, "attention_c", "kernel") + params(att, "attention_c", "bias")


def padded(x, length):
  """One bag [1, n, D] zero-padded to `length`, with its mask."""
  out = np.zeros((1, length, x.shape[-1]), np.float32)
  out[:, :x.shape[1]] = x
  return jnp.asarray(out), jnp.asarray(np.arange(length)[None] < x.shape[1])


def test_abmil_matches_numpy():
  model = mil.ABMIL(IN, DIM, C, dropout=0.0, rngs=nnx.Rngs(0))
  model.eval()
  x = RNG.standard_normal((1, 9, IN)).astype(np.float32)
  h = np.maximum(x[0] @ params(model, "fc", "kernel") + params(model, "fc", "bias"), 0)
  a = np_softmax(np_gated(model.attention_net, h)[:, 0])
  bag = a @ h
  want = bag @ params(model, "head", "kernel") + params(model, "head", "bias")
  logits, emb = model(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(logits)[0], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(emb)[0], bag, rtol=1e-4, atol=1e-5)


def test_dsmil_matches_numpy():
  model = mil.DSMIL(IN, C, query_dim=8, rngs=nnx.Rngs(1))
  model.eval()
  x = RNG.standard_normal((9, IN)).astype(np.float32)
  c = x @ params(model, "instance", "kernel") + params(model, "instance", "bias")     # [N, C]
  q = np.tanh(np.maximum(x @ params(model, "q1", "kernel") + params(model, "q1", "bias"), 0)
              @ params(model, "q2", "kernel") + params(model, "q2", "bias"))
  q_max = q[np.argmax(c, axis=0)]                                                  # [C, Q]
  a = np_softmax(q @ q_max.T / math.sqrt(8), axis=0)                               # [N, C]
  b = a.T @ x                                                                       # [C, IN]
  bag = np.einsum("ocd,cd->o", params(model, "fcc_kernel"), b) + params(model, "fcc_bias")
  got_bag, got_max, _ = model.streams(jnp.asarray(x[None]))
  np.testing.assert_allclose(np.asarray(got_bag)[0], bag, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_max)[0], c.max(0), rtol=1e-5, atol=1e-6)
  probs = np.exp(np.asarray(model(jnp.asarray(x[None]))[0]))[0]
  np.testing.assert_allclose(probs, 0.5 * np_softmax(bag) + 0.5 * np_softmax(c.max(0)),
                             rtol=1e-5)


@pytest.mark.parametrize("multi_branch", [False, True])
def test_clam_matches_numpy(multi_branch):
  model = mil.CLAM(IN, DIM, C, multi_branch=multi_branch, dropout=0.0, rngs=nnx.Rngs(2))
  model.eval()
  x = RNG.standard_normal((9, IN)).astype(np.float32)
  h = np.maximum(x @ params(model, "fc", "kernel") + params(model, "fc", "bias"), 0)
  a = np_softmax(np_gated(model.attention_net, h).T, axis=-1)                            # [K, N]
  pooled = a @ h                                                                      # [K, dim]
  if multi_branch:
    want = np.einsum("cd,cd->c", pooled, params(model, "head_kernel")) + params(model, "head_bias")
  else:
    want = pooled[0] @ params(model, "head", "kernel") + params(model, "head", "bias")
  logits, att, hh, _ = model.attend(jnp.asarray(x[None]))
  np.testing.assert_allclose(np.asarray(logits)[0], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(att)[0], a, rtol=1e-4, atol=1e-6)
  inst = np.asarray(model.instance_logits(hh))[0]
  for k in range(C):
    np.testing.assert_allclose(inst[k], h @ params(model, "instance_kernel")[k]
                               + params(model, "instance_bias")[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", list(range(1, 30)))
def test_square_layout_matches_transmil_padding(n):
  """TransMIL: side = ceil(sqrt(n)), then cat([h, h[:, :side^2 - n]])."""
  mask = jnp.asarray(np.arange(32)[None] < n)
  source, valid, side = mil.square_layout(mask)
  s = math.ceil(math.sqrt(n))
  assert int(side[0]) == s and source.shape == (1, 36)
  want = list(range(n)) + list(range(s * s - n))
  np.testing.assert_array_equal(np.asarray(source)[0, :s * s], want)
  np.testing.assert_array_equal(np.asarray(valid)[0], np.arange(36) < s * s)


class TorchPPEG(torch.nn.Module):
  """TransMIL's PPEG, verbatim."""

  def __init__(self, dim):
    super().__init__()
    self.proj = torch.nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
    self.proj1 = torch.nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
    self.proj2 = torch.nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

  def forward(self, x, h, w):
    b, _, c = x.shape
    cls_token, feat_token = x[:, 0], x[:, 1:]
    cnn_feat = feat_token.transpose(1, 2).view(b, c, h, w)
    x = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
    x = x.flatten(2).transpose(1, 2)
    return torch.cat((cls_token.unsqueeze(1), x), dim=1)


def test_ppeg_matches_pytorch_inside_a_larger_grid():
  dim, side = 6, 4
  ours = mil.PPEG(dim, rngs=nnx.Rngs(3))
  ref = TorchPPEG(dim)
  with torch.no_grad():
    for name in ("proj", "proj1", "proj2"):
      conv, mine = getattr(ref, name), getattr(ours, name)
      conv.weight.copy_(torch.tensor(np.asarray(mine.kernel[...]).transpose(3, 2, 0, 1)))
      conv.bias.copy_(torch.tensor(np.asarray(mine.bias[...])))
  x = RNG.standard_normal((1, 1 + side * side, dim)).astype(np.float32)
  want = ref(torch.tensor(x), side, side).detach().numpy()[:, 1:]
  # The same 4 x 4 grid inside a 6 x 6 buffer (a longer padded batch member): identical result.
  buf = np.zeros((1, 36, dim), np.float32)
  buf[:, :16] = x[:, 1:]
  valid = np.arange(36)[None] < 16
  got = ours(jnp.asarray(buf), jnp.asarray(valid), jnp.asarray([side]))
  np.testing.assert_allclose(np.asarray(got)[:, :16], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got)[:, 16:], 0.0)


BUILDERS = {
    "abmil": lambda rngs: mil.ABMIL(IN, DIM, C, rngs=rngs),
    "dsmil": lambda rngs: mil.DSMIL(IN, C, rngs=rngs),
    "clam_sb": lambda rngs: mil.CLAM(IN, DIM, C, multi_branch=False, rngs=rngs),
    "clam_mb": lambda rngs: mil.CLAM(IN, DIM, C, multi_branch=True, rngs=rngs),
    "transmil": lambda rngs: mil.TransMIL(IN, DIM, C, heads=2, num_landmarks=4, rngs=rngs),
}


@pytest.mark.parametrize("name", ["abmil", "dsmil", "clam_sb", "clam_mb", "transmil"])
def test_padded_bag_gives_the_unpadded_logits(name):
  model = BUILDERS[name](nnx.Rngs(4))
  model.eval()
  x = RNG.standard_normal((1, 11, IN)).astype(np.float32)
  xp, mask = padded(x, 32)
  xp = xp.at[:, 11:].set(100.0)  # garbage in the padding must not matter
  forward = jax.jit(lambda m, a, k: m(a, None, k)[0])
  want = forward(model, jnp.asarray(x), None)
  got = forward(model, xp, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)


def test_attention_is_zero_on_padding_and_sums_to_one():
  model = mil.CLAM(IN, DIM, C, multi_branch=True, rngs=nnx.Rngs(5))
  model.eval()
  xp, mask = padded(RNG.standard_normal((1, 7, IN)).astype(np.float32), 16)
  _, att, _, _ = model.attend(xp, mask)
  np.testing.assert_allclose(np.asarray(att).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(att)[..., 7:], 0.0)
