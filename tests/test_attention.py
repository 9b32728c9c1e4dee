"""The attention protocol (`models.attention`): every attention model's patch scores equal that
model's attention computed here in NumPy from its parameters; padding changes nothing."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax.models import attention
from gimp_jax.models import fusion
from gimp_jax.models import mil
from gimp_jax.models import tangle
from gimp_jax.models.aggregator import PatchAggregator
from gimp_jax.models.gimp import GeneClassifier, GiMP
from gimp_jax.models.group_msa import GroupMSA

D, G, C, N = 12, 10, 3, 11
RTOL, ATOL = 1e-4, 1e-6


def p(v):
  return np.asarray(v[...], np.float64)


def linear(x, layer):
  out = x @ p(layer.kernel)
  return out + p(layer.bias) if layer.bias is not None else out


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def relu(x):
  return np.maximum(x, 0.0)


def layer_norm(x, norm):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p(norm.scale) + p(norm.bias)


def gelu(x):  # jax.nn.gelu's default tanh approximation
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gated(h, module):
  """CLAM's gated attention scores, [N, dim] -> [N, K]."""
  a = np.tanh(linear(h, module.attention_a))
  b = 1 / (1 + np.exp(-linear(h, module.attention_b)))
  return linear(a * b, module.attention_c)


def nystrom_cls_row(x, attn):
  """The first row of the Nyström attention matrix of `attn` (NystromAttention) over x [n, dim],
  without its own first column, mean over heads: [n - 1]. The package's algorithm, unmasked."""
  n = x.shape[0]
  h, dh, m = attn.heads, attn.dim_head, attn.num_landmarks
  pad = (-n) % m
  x = np.concatenate([np.zeros((pad, x.shape[1])), x])
  q, k, _ = np.split(x @ p(attn.to_qkv.kernel), 3, axis=-1)
  q = q.reshape(-1, h, dh).transpose(1, 0, 2) * dh ** -0.5
  k = k.reshape(-1, h, dh).transpose(1, 0, 2)
  l = math.ceil(n / m)
  q_land, k_land = q.reshape(h, m, l, dh).mean(2), k.reshape(h, m, l, dh).mean(2)
  a1 = softmax(q @ k_land.transpose(0, 2, 1))
  a2 = softmax(q_land @ k_land.transpose(0, 2, 1))
  a3 = softmax(q_land @ k.transpose(0, 2, 1))
  z = a2.transpose(0, 2, 1) / (np.abs(a2).sum(-1).max() * np.abs(a2).sum(-2).max())
  eye = np.eye(m)
  for _ in range(6):
    xz = a2 @ z
    z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
  full = a1 @ z @ a3                                                     # [h, n + pad, n + pad]
  return full[:, pad, pad + 1:].mean(0)


def rngs(seed=0):
  return nnx.Rngs(params=seed, dropout=seed + 1)


def eval_mode(model):
  model.eval()
  return model


def bag(seed=0, n=N):
  r = np.random.default_rng(seed)
  return (r.standard_normal((1, n, D)).astype(np.float32),
          r.standard_normal((1, G)).astype(np.float32))


# --- independent NumPy attention, one per model family -----------------------------------------

def abmil_np(model, x, genes):
  return softmax(gated(relu(linear(x, model.fc)), model.attention_net)[:, 0])


def clam_np(model, x, genes):
  h = relu(linear(x, model.fc))
  attn = softmax(gated(h, model.attention_net).T)                            # [K, N]
  pooled = attn @ h
  if not model.multi_branch:
    return attn[0]
  logits = (pooled * p(model.head_kernel)).sum(-1) + p(model.head_bias)
  return attn[np.argmax(logits)]


def dsmil_np(model, x, genes):
  scores = linear(x, model.instance)                                     # [N, C]
  critical = np.argmax(scores, axis=0)
  q = np.tanh(linear(relu(linear(x, model.q1)), model.q2))
  attn = softmax(q @ q[critical].T / math.sqrt(q.shape[-1]), axis=0)     # [N, C]
  bag_logits = np.einsum("ocd,cd->o", p(model.fcc_kernel), attn.T @ x) + p(model.fcc_bias)
  probs = softmax(bag_logits) + softmax(scores.max(0))
  return attn[:, np.argmax(probs)]


def fusion_np(model, x, genes):
  return softmax(gated(relu(linear(x, model.fc)), model.attention_net)[:, 0])


def tangle_np(model, x, genes):
  pre = model.slide_encoder.pre
  h = gelu(layer_norm(linear(x, pre.fc1), pre.norm1))
  h = gelu(layer_norm(linear(h, pre.fc2), pre.norm2))
  return softmax(gated(h, model.slide_encoder.attention)[:, 0])


def mcat_np(model, x, genes):
  h_path = relu(linear(x, model.fc))
  h_omic = np.asarray(model.gene_encoder(jnp.asarray(genes[None])))[0]  # SNNs: tested elsewhere
  co = model.coattn
  logits = linear(h_omic, co.q) @ linear(h_path, co.k).T / math.sqrt(h_path.shape[-1])
  return softmax(logits).mean(0)


def gimp_np(model, x, genes):
  agg = model.aggregator
  (layer,) = agg.layers
  h = relu(linear(x, agg.embed))
  h = np.concatenate([p(agg.cls_token)[0], h])
  return nystrom_cls_row(layer_norm(h, layer.norm), layer.attn)


def transmil_np(model, x, genes):
  """Layer 2's input from the model's own (separately tested) layers, then the CLS row in NumPy and
  each patch's copies in the square layout summed."""
  n = x.shape[0]
  mask = jnp.ones((1, n), bool)
  h = jax.nn.relu(model.fc1(jnp.asarray(x[None], jnp.float32)))
  source, valid, side = mil.square_layout(mask)
  h = jnp.take_along_axis(h, source[..., None], axis=1)
  cls = model.cls_token[...]
  tokens_mask = jnp.concatenate([jnp.ones((1, 1), bool), valid], axis=1)
  h = model.layer1(jnp.concatenate([cls, h], axis=1), tokens_mask)
  h = jnp.concatenate([h[:, :1], model.pos_layer(h[:, 1:], valid, side)], axis=1)
  t = int(side[0]) ** 2
  h = np.asarray(h[0, :1 + t], np.float64)
  row = nystrom_cls_row(layer_norm(h, model.layer2.norm), model.layer2.attn)
  out = np.zeros(n)
  np.add.at(out, np.asarray(source[0, :t]), row)
  return out


MODELS = {
    "abmil": (lambda: mil.ABMIL(D, 8, C, rngs=rngs()), abmil_np),
    "clam_sb": (lambda: mil.CLAM(D, 8, C, multi_branch=False, rngs=rngs()), clam_np),
    "clam_mb": (lambda: mil.CLAM(D, 8, C, multi_branch=True, rngs=rngs()), clam_np),
    "dsmil": (lambda: mil.DSMIL(D, C, query_dim=6, rngs=rngs()), dsmil_np),
    "transmil": (lambda: mil.TransMIL(D, 8, C, heads=2, num_landmarks=2, rngs=rngs()),
                 transmil_np),
    "gimp": (lambda: GiMP(PatchAggregator(D, 8, depth=1, heads=2, num_landmarks=4, rngs=rngs()),
                          None, in_dim=D, dim=8, num_classes=C, head_hidden=4, head_dropout=0.0,
                          rngs=rngs()), gimp_np),
    "porpoise": (lambda: fusion.AttentionFusion(D, G, C, path_hidden=8, path_dim=4,
                                                snn_hidden=(4,), rngs=rngs()), fusion_np),
    "mcat": (lambda: fusion.MCAT(D, G, C, gene_groups=((0, 1, 2), (3, 4), (5, 6, 7, 8, 9)),
                                 dim=8, heads=2, depth=1, rngs=rngs()), mcat_np),
    "tangle": (lambda: tangle.Tangle(D, G, C, dim=8, gene_hidden=4, encode_genes=True,
                                     decode_genes=False, rngs=rngs()), tangle_np),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_protocol_scores_equal_numpy_attention(name):
  make, reference = MODELS[name]
  model = eval_mode(make())
  assert attention.supports(model)
  for seed in range(2):  # two bags: CLAM-MB / DSMIL may pick different classes
    x, genes = bag(seed)
    got = np.asarray(attention.scores(model, jnp.asarray(x), jnp.asarray(genes), None))
    expected = reference(model, x[0].astype(np.float64), genes[0].astype(np.float64))
    assert got.shape == (1, N)
    np.testing.assert_allclose(got[0], expected, rtol=RTOL, atol=ATOL)
    if name not in ("gimp", "transmil"):  # Nyström rows also weigh CLS and the front padding
      np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-4)  # a distribution over the patches


@pytest.mark.parametrize("name", ["clam_mb", "dsmil", "transmil", "gimp", "mcat"])
def test_padded_bag_scores_equal_unpadded(name):
  model = eval_mode(MODELS[name][0]())
  x, genes = bag(3)
  padded = np.concatenate([x, np.full((1, 5, D), 7.0, np.float32)], axis=1)
  mask = np.arange(N + 5)[None] < N
  alone = attention.scores(model, jnp.asarray(x), jnp.asarray(genes), None)
  with_pad = attention.scores(model, jnp.asarray(padded), jnp.asarray(genes), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(with_pad)[:, :N], np.asarray(alone), rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(with_pad)[:, N:] == 0)


def test_gene_only_classifier_has_no_attention():
  encoder = GroupMSA(G, num_fragments=2, num_groups=2, dim=8, heads=2, dropout=0.0,
                     dtype=jnp.float32, rngs=rngs())
  assert not attention.supports(GeneClassifier(encoder, 8, C, rngs=rngs()))
