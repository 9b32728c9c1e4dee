"""gimp_jax.models.group_msa: GroupMSA against an independent NumPy forward (both projections,
gene padding), its group structure (groups permute, fragments are grouped consecutively), dropout
off in eval mode, and the paper's sizes."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax.models.group_msa import GroupMSA

_apply = nnx.jit(lambda m, x: m(x))  # one compile per shape instead of op-by-op dispatch
_fragment_tokens = nnx.jit(lambda m, x: m.fragment_tokens(x))

# float64 NumPy against the float32 module: differences are float32 rounding through two blocks.
ATOL, RTOL = 2e-5, 2e-5


def _randomised(enc, seed=1):
  """Every parameter replaced by N(0, 0.3^2) (LayerNorm scale 1 + N), so no parameter sits at a
  value (0 or 1) that would hide a wrong formula."""
  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  leaves = [jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype) for x in leaves]
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  enc = nnx.merge(graphdef, params, rest)
  enc.eval()
  return enc


def _np(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64),
                                nnx.to_pure_dict(nnx.state(tree, nnx.Param)))


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _gelu(x):  # jax.nn.gelu's default (tanh approximation)
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _block(x, p, heads):
  """Pre-LN transformer block, x: [B, T, d]; qkv columns are [q heads | k heads | v heads]."""
  b, t, d = x.shape
  hd = d // heads
  qkv = _layer_norm(x, p["norm1"]) @ p["attn"]["qkv"]["kernel"] + p["attn"]["qkv"]["bias"]
  q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, t, heads, hd) for i in range(3))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d)
  x = x + o @ p["attn"]["out"]["kernel"] + p["attn"]["out"]["bias"]
  h = _gelu(_layer_norm(x, p["norm2"]) @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  return x + h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def numpy_group_msa(p, genes, *, num_fragments, num_groups, heads, projection):
  """GroupMSA in float64 NumPy: genes [B, G] -> (CLS_ge [B, d], fragment tokens [B, N_f, d])."""
  b, g = genes.shape
  size = -(-g // num_fragments)
  x = np.zeros((b, num_fragments * size))
  x[:, :g] = genes  # zero padding at the end
  x = x.reshape(b, num_fragments, size)
  if projection == "shared":
    h = x @ p["project"]["kernel"] + p["project"]["bias"]
  else:
    h = np.einsum("bfg,fgd->bfd", x, p["project"]["kernel"]) + p["project"]["bias"]
  h = h + p["pos_embed"]
  per = num_fragments // num_groups
  d = h.shape[-1]
  groups = []
  for j in range(num_groups):  # group j: fragments j*per .. (j+1)*per - 1, its token first
    tokens = np.concatenate([np.broadcast_to(p["group_tokens"][j], (b, 1, d)),
                             h[:, j * per:(j + 1) * per]], axis=1)
    groups.append(_block(tokens, p["intra"], heads))
  fragments = np.concatenate([grp[:, 1:] for grp in groups], axis=1)
  top = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, d))]
                       + [grp[:, :1] for grp in groups], axis=1)
  return _layer_norm(_block(top, p["inter"], heads)[:, 0], p["norm"]), fragments


def _genes(b, g, seed=0):
  return np.random.default_rng(seed).standard_normal((b, g)).astype(np.float32)


@pytest.mark.parametrize("projection", ["per_fragment", "shared"])
def test_forward_matches_numpy(projection):
  # 30 genes in 4 fragments: fragment size 8, two zero-padded genes; 2 groups of 2 fragments.
  enc = _randomised(GroupMSA(30, num_fragments=4, num_groups=2, dim=8, heads=2,
                             projection=projection, rngs=nnx.Rngs(0)))
  assert (enc.fragment_size, enc.pad) == (8, 2)
  genes = _genes(3, 30)
  want, want_fragments = numpy_group_msa(_np(enc), genes.astype(np.float64), num_fragments=4,
                                         num_groups=2, heads=2, projection=projection)
  out = _apply(enc, jnp.asarray(genes))
  assert out.shape == (3, 8) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), want, rtol=RTOL, atol=ATOL)
  fragments = _fragment_tokens(enc, jnp.asarray(genes))
  assert fragments.shape == (3, 4, 8)
  np.testing.assert_allclose(np.asarray(fragments), want_fragments, rtol=RTOL, atol=ATOL)


def test_padded_genes_have_no_weight():
  """The projection rows of the padding genes multiply zeros: changing them changes neither
  CLS_ge nor any fragment token, while the same change on the last real gene moves fragment 3."""
  enc = _randomised(GroupMSA(30, num_fragments=4, num_groups=2, dim=8, heads=2,
                             rngs=nnx.Rngs(0)))
  genes = jnp.asarray(_genes(2, 30))
  before = np.asarray(_apply(enc, genes)), np.asarray(_fragment_tokens(enc, genes))
  kernel = enc.project.kernel[...]
  change = jnp.asarray(np.random.default_rng(2).normal(0, 2.0, (8,)), jnp.float32)
  enc.project.kernel[...] = kernel.at[3, 6:].add(change)  # fragment 3: genes 24..29 + 2 pads
  np.testing.assert_array_equal(np.asarray(_apply(enc, genes)), before[0])
  np.testing.assert_array_equal(np.asarray(_fragment_tokens(enc, genes)), before[1])
  enc.project.kernel[...] = kernel.at[3, 5].add(change)  # gene 29
  moved = np.abs(np.asarray(_fragment_tokens(enc, genes)) - before[1]).max(axis=(0, 2))
  assert moved[3] > 0.1 and np.all(moved[:2] == 0), moved  # fragments 0, 1: the other group


def _permute_fragments(enc, order, group_order=None):
  """A copy of `enc` whose fragment f takes the parameters of fragment order[f] (projection and
  position embedding) and whose group j takes group token group_order[j]."""
  enc = nnx.clone(enc)
  enc.project.kernel[...] = enc.project.kernel[...][order]
  enc.project.bias[...] = enc.project.bias[...][order]
  enc.pos_embed[...] = enc.pos_embed[...][:, order]
  if group_order is not None:
    enc.group_tokens[...] = enc.group_tokens[...][np.asarray(group_order)]
  return enc


def test_groups_are_consecutive_fragments_and_permute_freely():
  """Moving whole groups (their fragments' genes and parameters, and their group tokens) leaves
  CLS_ge unchanged: the inter-group block has no group order. So does reordering fragments inside
  a group. Swapping two fragments between groups changes CLS_ge: groups are fixed sets."""
  enc = _randomised(GroupMSA(48, num_fragments=6, num_groups=3, dim=8, heads=2,
                             rngs=nnx.Rngs(0)))
  genes = _genes(2, 48)  # 6 fragments of 8 genes, no padding; groups {0,1}, {2,3}, {4,5}
  base = np.asarray(_apply(enc, jnp.asarray(genes)))

  def moved(order, group_order=None):
    cols = np.concatenate([np.arange(8 * f, 8 * f + 8) for f in order])
    return np.asarray(_apply(_permute_fragments(enc, np.asarray(order), group_order),
                             jnp.asarray(genes[:, cols])))

  np.testing.assert_allclose(moved([4, 5, 0, 1, 2, 3], [2, 0, 1]), base, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(moved([1, 0, 2, 3, 5, 4]), base, rtol=1e-5, atol=1e-5)
  assert np.abs(moved([0, 2, 1, 3, 4, 5]) - base).max() > 1e-3


def test_eval_mode_turns_dropout_off_train_mode_samples_it():
  enc = _randomised(GroupMSA(30, num_fragments=4, num_groups=2, dim=8, heads=2, dropout=0.5,
                             rngs=nnx.Rngs(0)))
  genes = jnp.asarray(_genes(2, 30))
  want, _ = numpy_group_msa(_np(enc), np.asarray(genes, np.float64), num_fragments=4,
                            num_groups=2, heads=2, projection="per_fragment")
  first, second = np.asarray(_apply(enc, genes)), np.asarray(_apply(enc, genes))
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first, want, rtol=RTOL, atol=ATOL)
  enc.train()
  # The dropout RNG stream advances from call to call.
  a, b = np.asarray(_apply(enc, genes)), np.asarray(_apply(enc, genes))
  assert np.abs(a - first).max() > 1e-3 and np.abs(a - b).max() > 1e-3


def test_input_dropout_zeroes_genes_and_rescales_the_rest_in_training_only():
  p = 0.5
  enc = _randomised(GroupMSA(30, num_fragments=4, num_groups=2, dim=8, heads=2, dropout=0.0,
                             input_dropout=p, rngs=nnx.Rngs(0)))
  genes = jnp.asarray(_genes(2, 30))
  want, _ = numpy_group_msa(_np(enc), np.asarray(genes, np.float64), num_fragments=4,
                            num_groups=2, heads=2, projection="per_fragment")
  np.testing.assert_allclose(np.asarray(_apply(enc, genes)), want, rtol=RTOL, atol=ATOL)
  enc.train()
  weights = jnp.asarray(_genes(2, 8, seed=3))

  def loss(m, x):
    out = m(x)
    return jnp.sum(out * weights), out

  # One forward pass: its output and which genes it saw (a dropped gene gets no gradient).
  (_, out), grad = nnx.value_and_grad(loss, argnums=1, has_aux=True)(enc, genes)
  kept = np.asarray(grad) != 0
  assert 0.25 < 1 - kept.mean() < 0.75
  masked, _ = numpy_group_msa(_np(enc), np.asarray(genes, np.float64) * kept / (1 - p),
                              num_fragments=4, num_groups=2, heads=2, projection="per_fragment")
  np.testing.assert_allclose(np.asarray(out), masked, rtol=RTOL, atol=ATOL)
  assert np.abs(np.asarray(out) - want).max() > 1e-3


def test_bfloat16_compute_returns_float32_close_to_float32():
  kwargs = dict(num_fragments=4, num_groups=2, dim=16, heads=2, rngs=nnx.Rngs(0))
  full = _randomised(GroupMSA(30, **kwargs))
  half = _randomised(GroupMSA(30, dtype=jnp.bfloat16, **dict(kwargs, rngs=nnx.Rngs(0))))
  genes = jnp.asarray(_genes(2, 30))
  out = _apply(half, genes)
  assert out.dtype == jnp.float32
  # bfloat16 has an 8-bit mantissa: relative error ~ 2^-8 per op, a few % after two blocks.
  np.testing.assert_allclose(np.asarray(out), np.asarray(_apply(full, genes)), rtol=0,
                             atol=0.15)


def test_invalid_settings_raise():
  with pytest.raises(ValueError, match="multiple of num_groups"):
    GroupMSA(30, num_fragments=5, num_groups=2, dim=8, heads=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="projection"):
    GroupMSA(30, num_fragments=4, num_groups=2, dim=8, heads=2, projection="conv",
             rngs=nnx.Rngs(0))


@pytest.mark.parametrize("genes,frag", [(60480, 252), (60483, 253)])
def test_group_msa_paper_sizes(genes, frag):
  enc = GroupMSA(genes, rngs=nnx.Rngs(0))
  assert enc.fragment_size == frag
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, genes)), jnp.float32)
  enc.eval()
  out = jax.jit(lambda m, x: m(x))(enc, x)
  assert out.shape == (2, 512) and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))
  # Output after the final LayerNorm (scale 1, bias 0 at init): zero mean, unit variance per row.
  np.testing.assert_allclose(np.asarray(out).mean(-1), 0.0, atol=1e-4)


def test_group_msa_rejects_wrong_gene_count():
  enc = GroupMSA(100, num_fragments=8, num_groups=2, dim=16, heads=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="100 genes"):
    enc(jnp.zeros((1, 99)))


def test_group_msa_depends_on_fragment_position():
  """The fragment position embedding lets the encoder tell which genes are expressed."""
  enc = GroupMSA(64, num_fragments=8, num_groups=2, dim=16, heads=2, rngs=nnx.Rngs(0))
  enc.eval()
  a = np.zeros((1, 64), np.float32)
  a[0, :8] = 1.0
  b = np.roll(a, 8, axis=1)  # same values in another fragment of the same group
  assert not np.allclose(np.asarray(_apply(enc, jnp.asarray(a))),
                         np.asarray(_apply(enc, jnp.asarray(b))))
