"""Vision Transformers as timm builds them (Dosovitskiy et al., 2021; DINOv2; registers), in NNX.

One `VisionTransformer` covers the patch encoders of computational pathology that are timm ViTs
(UNI, UNI2-h, Virchow2, H-optimus, Phikon-v2's DINOv2) and CONCH v1.5's trunk; `ConchVisionTower`
adds CONCH's attentional pooler. What timm does, and what is reproduced here:

- patch embedding: a stride-p p x p convolution, i.e. a Linear over flattened [p, p, 3] patches;
- prefix tokens: [CLS, register_1..register_R, patches]; with `no_embed_class` the position
  embedding covers the patches only (added before the prefix tokens are put in front), otherwise it
  covers every token (added after; Virchow2's registers have positions);
- a position-embedding grid trained at `img_size / patch_size` is resampled when the input grid
  differs (`pos_embed.py`: timm's antialiased bicubic, or DINO's scale-factor bicubic for CONCH);
- pre-norm blocks `x + ls1(attn(norm1(x)))`, `x + ls2(mlp(norm2(x)))`, LayerScale `gamma * x`;
- MLP: fc1 -> exact GELU -> fc2, or timm's SwiGLUPacked: fc1 to 2h, split into halves (a, b),
  `silu(a) * b` (the gate is the first half), fc2 from h;
- final LayerNorm, then pooling: CLS ('token'), mean of patch tokens ('avg'), CLS concatenated with
  the mean of patch tokens ('cls_mean', Virchow2), or every token ('').

Parameters are float32; `dtype` is the compute dtype of the matmuls. LayerNorm statistics and the
softmax run in float32. Module and parameter names follow timm's state dict (`vit_convert.py`).
"""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from gimp_jax.models import mixed_precision
from gimp_jax.preprocess import pos_embed


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """A timm ViT's shape.

  Attributes:
    patch_size: p, pixels per patch side.
    embed_dim: D.
    depth: blocks.
    num_heads: attention heads (D divisible by it).
    mlp_hidden: width of fc1 (timm's `int(D * mlp_ratio)`); SwiGLUPacked's fc2 takes half of it.
    mlp: 'gelu' or 'swiglu_packed'.
    img_size: training resolution; the position-embedding grid is img_size // p per side.
    reg_tokens: register tokens R after CLS.
    no_embed_class: the position embedding covers patches only.
    init_values: LayerScale init value; None for no LayerScale.
    pool: 'token', 'avg', 'cls_mean' or '' (all tokens).
    pos_interp: 'timm' (antialiased bicubic to the new grid) or 'dino' (bicubic by (g + 0.1) / g0).
    norm_eps: LayerNorm epsilon (timm: 1e-6).
  """
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_hidden: int
  mlp: str = 'gelu'
  img_size: int = 224
  reg_tokens: int = 0
  no_embed_class: bool = False
  init_values: float | None = None
  pool: str = 'token'
  pos_interp: str = 'timm'
  norm_eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.img_size // self.patch_size

  @property
  def num_prefix(self) -> int:
    return 1 + self.reg_tokens

  @property
  def feature_dim(self) -> int:
    return 2 * self.embed_dim if self.pool == 'cls_mean' else self.embed_dim


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """PyTorch's LayerNorm: two-pass variance, statistics in float32."""
  return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def _norm(norm: nnx.LayerNorm, x: jax.Array) -> jax.Array:
  return norm(x.astype(jnp.float32))


class LayerScale(nnx.Module):
  """`gamma * x`, gamma: [D]."""

  def __init__(self, dim: int, init_values: float):
    self.gamma = nnx.Param(jnp.full((dim,), init_values, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.gamma[...].astype(x.dtype)


class Attention(nnx.Module):
  """timm's Attention: one qkv Linear, softmax(q k^T / sqrt(d)) v per head, output projection."""

  def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = mixed_precision.linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = mixed_precision.linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, D] -> [B, T, D]."""
    b, t, d = x.shape
    head = d // self.num_heads
    qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, head).transpose(2, 0, 3, 1, 4)
    out = attention(qkv[0] * head ** -0.5, qkv[1], qkv[2])  # [B, H, T, d]
    return self.proj(out.transpose(0, 2, 1, 3).reshape(b, t, d))


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T) v per head (q pre-scaled), logits and normalisation in float32.

  q: [B, H, Tq, d], k, v: [B, H, Tk, d] -> [B, H, Tq, d].

  On CPU one (batch, head) pair at a time (`lax.map`), so that its T x T logits stay in cache:
  2-3x faster than the batched einsum at 200-800 tokens, near PyTorch's fused kernel. Elsewhere
  (GPU, TPU) batched, where a sequential map would idle the device.
  """
  def one(q, k, v):
    logits = jnp.einsum('...qd,...kd->...qk', q, k, preferred_element_type=jnp.float32)
    weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    out = jnp.einsum('...qk,...kd->...qd', weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return (out / weights.sum(axis=-1, keepdims=True)).astype(v.dtype)

  if jax.default_backend() != 'cpu':
    return one(q, k, v)
  b, h, t, d = q.shape
  flat = [x.reshape(b * h, x.shape[2], d) for x in (q, k, v)]
  return jax.lax.map(lambda qkv: one(*qkv), flat).reshape(b, h, t, d)


class Mlp(nnx.Module):
  """fc1 -> GELU (exact) -> fc2, or SwiGLUPacked: fc1 -> silu(first half) * second half -> fc2."""

  def __init__(self, dim: int, hidden: int, kind: str, *, dtype, rngs: nnx.Rngs):
    if kind not in ('gelu', 'swiglu_packed'):
      raise ValueError(f'unknown mlp {kind!r}')
    self.kind = kind
    self.fc1 = mixed_precision.linear(dim, hidden, dtype=dtype, rngs=rngs)
    inner = hidden // 2 if kind == 'swiglu_packed' else hidden
    self.fc2 = mixed_precision.linear(inner, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, D] -> [B, T, D]."""
    h = self.fc1(x)
    if self.kind == 'gelu':
      h = jax.nn.gelu(h, approximate=False)
    else:
      gate, value = jnp.split(h, 2, axis=-1)
      h = jax.nn.silu(gate) * value
    return self.fc2(h)


class Block(nnx.Module):
  """Pre-norm transformer block with optional LayerScale."""

  def __init__(self, config: ViTConfig, *, dtype, rngs: nnx.Rngs):
    d = config.embed_dim
    self.dtype = dtype
    self.norm1 = layer_norm(d, config.norm_eps, rngs)
    self.attn = Attention(d, config.num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(d, config.norm_eps, rngs)
    self.mlp = Mlp(d, config.mlp_hidden, config.mlp, dtype=dtype, rngs=rngs)
    scaled = config.init_values is not None
    self.ls1 = LayerScale(d, config.init_values) if scaled else None
    self.ls2 = LayerScale(d, config.init_values) if scaled else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, D] float32 residual stream -> [B, T, D] float32."""
    y = self.attn(_norm(self.norm1, x).astype(self.dtype))
    x = x + (y if self.ls1 is None else self.ls1(y)).astype(jnp.float32)
    y = self.mlp(_norm(self.norm2, x).astype(self.dtype))
    return x + (y if self.ls2 is None else self.ls2(y)).astype(jnp.float32)


class PatchEmbed(nnx.Module):
  """Non-overlapping p x p patches -> D: timm's stride-p Conv2d written as a Linear."""

  def __init__(self, patch_size: int, dim: int, *, dtype, rngs: nnx.Rngs):
    self.patch_size = patch_size
    self.proj = mixed_precision.linear(patch_size * patch_size * 3, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, 3] (H, W multiples of p) -> [B, H / p, W / p, D]."""
    b, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f'input {h} x {w} is not a multiple of the patch size {p}')
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return self.proj(x.reshape(b, h // p, w // p, p * p * c))


class VisionTransformer(nnx.Module):
  """[B, H, W, 3] normalised RGB -> pooled features (float32), as timm's `VisionTransformer`."""

  def __init__(self, config: ViTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    d = config.embed_dim
    init = nnx.initializers.normal(0.02)
    self.patch_embed = PatchEmbed(config.patch_size, d, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, d)))
    self.reg_token = (nnx.Param(init(rngs.params(), (1, config.reg_tokens, d)))
                      if config.reg_tokens else None)
    length = config.grid ** 2 + (0 if config.no_embed_class else config.num_prefix)
    self.pos_embed = nnx.Param(init(rngs.params(), (1, length, d)))
    self.blocks = nnx.List([Block(config, dtype=dtype, rngs=rngs) for _ in range(config.depth)])
    self.norm = layer_norm(d, config.norm_eps, rngs)

  def _patch_pos_embed(self, gh: int, gw: int) -> jax.Array:
    """The position embedding of a gh x gw patch grid: [gh * gw, D] float32."""
    c = self.config
    table = self.pos_embed[...][0].astype(jnp.float32)
    grid = table if c.no_embed_class else table[c.num_prefix:]
    if (gh, gw) == (c.grid, c.grid):
      return grid
    grid = grid.reshape(c.grid, c.grid, -1)
    if c.pos_interp == 'timm':
      wy, wx = pos_embed.timm_bicubic(c.grid, gh), pos_embed.timm_bicubic(c.grid, gw)
    else:  # DINO: F.interpolate(scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0))
      wy = pos_embed.dino_bicubic(c.grid, (gh + 0.1) / c.grid)
      wx = pos_embed.dino_bicubic(c.grid, (gw + 0.1) / c.grid)
    return pos_embed.resample(grid, wy, wx).reshape(gh * gw, -1)

  def tokens(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, 3] -> [B, 1 + R + (H / p) * (W / p), D] float32 tokens after the final norm."""
    c = self.config
    patches = self.patch_embed(x.astype(self.dtype)).astype(jnp.float32)
    b, gh, gw, d = patches.shape
    patches = patches.reshape(b, gh * gw, d)
    pos = self._patch_pos_embed(gh, gw)
    prefix = [jnp.broadcast_to(self.cls_token[...], (b, 1, d))]
    if self.reg_token is not None:
      prefix.append(jnp.broadcast_to(self.reg_token[...], (b, c.reg_tokens, d)))
    if c.no_embed_class:
      x = jnp.concatenate(prefix + [patches + pos], axis=1)
    else:
      prefix_pos = self.pos_embed[...][0, :c.num_prefix].astype(jnp.float32)
      x = jnp.concatenate(prefix + [patches], axis=1) + jnp.concatenate([prefix_pos, pos])[None]
    for block in self.blocks:
      x = block(x)
    return _norm(self.norm, x)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, 3] -> [B, feature_dim] ('token', 'avg', 'cls_mean') or [B, T, D] ('')."""
    return pool(self.tokens(x), self.config.pool, self.config.num_prefix)


def pool(tokens: jax.Array, kind: str, num_prefix: int) -> jax.Array:
  """tokens: [B, T, D] -> [B, D] ('token', 'avg'), [B, 2D] ('cls_mean') or [B, T, D] ('')."""
  if kind == 'token':
    return tokens[:, 0]
  if kind == 'avg':
    return tokens[:, num_prefix:].mean(axis=1)
  if kind == 'cls_mean':
    return jnp.concatenate([tokens[:, 0], tokens[:, num_prefix:].mean(axis=1)], axis=-1)
  if kind == '':
    return tokens
  raise ValueError(f'unknown pool {kind!r}')


class AttentionalPooler(nnx.Module):
  """CoCa/CONCH attentional pooler: learnt queries attend to the (LayerNormed) tokens.

  `q = to_q(ln_q(query))`, `(k, v) = split(to_kv(ln_k(x)))` (k the first half), per-head
  softmax(q k^T / sqrt(d)) v, then `to_out`; no biases. LayerNorm epsilon 1e-5 (PyTorch default).
  """

  def __init__(self, d_model: int, context_dim: int, num_heads: int, num_queries: int, *,
               dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.dtype = dtype
    self.query = nnx.Param(jax.random.normal(rngs.params(), (num_queries, d_model)))
    self.ln_k = layer_norm(context_dim, 1e-5, rngs)
    self.ln_q = layer_norm(d_model, 1e-5, rngs)
    self.to_q = mixed_precision.linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_kv = mixed_precision.linear(context_dim, 2 * d_model, use_bias=False, dtype=dtype,
                                        rngs=rngs)
    self.to_out = mixed_precision.linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, context_dim] -> [B, num_queries, d_model] float32."""
    b = x.shape[0]
    q = self.to_q(_norm(self.ln_q, self.query[...]).astype(self.dtype))
    k, v = jnp.split(self.to_kv(_norm(self.ln_k, x).astype(self.dtype)), 2, axis=-1)
    nq, d = q.shape
    head = d // self.num_heads
    q = jnp.broadcast_to(q.reshape(nq, self.num_heads, head).transpose(1, 0, 2),
                         (b, self.num_heads, nq, head))
    k, v = (t.reshape(b, -1, self.num_heads, head).transpose(0, 2, 1, 3) for t in (k, v))
    out = attention(q * head ** -0.5, k, v).transpose(0, 2, 1, 3).reshape(b, nq, d)
    return self.to_out(out).astype(jnp.float32)


class ConchVisionTower(nnx.Module):
  """CONCH v1.5's image encoder: ViT-L/16 trunk tokens -> attentional pooler (1 query) -> LayerNorm.

  [B, H, W, 3] normalised RGB -> [B, 768] float32 (TRIDENT's `conch_v15`, no projection).
  """

  def __init__(self, trunk: ViTConfig, d_model: int = 768, num_heads: int = 8, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.trunk = VisionTransformer(trunk, dtype=dtype, rngs=rngs)
    self.attn_pool_contrast = AttentionalPooler(d_model, trunk.embed_dim, num_heads, 1,
                                                dtype=dtype, rngs=rngs)
    self.ln_contrast = layer_norm(d_model, 1e-5, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = self.attn_pool_contrast(self.trunk.tokens(x))[:, 0]
    return _norm(self.ln_contrast, pooled)
