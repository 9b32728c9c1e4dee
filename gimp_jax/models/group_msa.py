"""GroupMSA gene encoder (GiMP section 2.1).

The expression vector is zero-padded to N_f * ceil(G / N_f) genes and cut into N_f non-overlapping
fragments, each projected to d ("a linear projection head"; project choice, the paper is silent:
`projection="per_fragment"` gives every fragment its own 252 x d matrix, since a gene's identity
matters; "shared" uses one matrix for all fragments, like a ViT patch embedding) plus a learned
fragment position embedding (without it a shared projection cannot tell fragments apart). Fragments are split into N_gr consecutive groups; each group gets its own learned
group token; one transformer block runs inside every group ((N_f / N_gr + 1) tokens), then a second
block runs over [CLS_ge; the N_gr group tokens]; CLS_ge after a LayerNorm is the output.

`input_dropout` (project choice, off in the paper's recipe) zeroes each standardised gene (sets it
to its training mean) with that probability in training, before the projection: for a linear
model this is an adaptive L2 penalty (Wager, Wang & Liang, NeurIPS 2013), the regulariser that
lets a penalised logistic regression learn from a few hundred patients and 2,000+ genes.
"""

import math

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp

from gimp_jax.models import mixed_precision


class SelfAttention(nnx.Module):
  """Multi-head softmax self-attention: fused qkv projection, output projection with bias."""

  def __init__(self, dim: int, *, heads: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.heads = heads
    self.qkv = mixed_precision.linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.out = mixed_precision.linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, dim] -> [B, T, dim]; softmax in float32."""
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    attn = jax.nn.softmax(logits * (d // self.heads) ** -0.5, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v, preferred_element_type=jnp.float32)
    return self.out(out.astype(v.dtype).reshape(b, t, d))


class TransformerBlock(nnx.Module):
  """Pre-LN transformer block: x + MSA(LN(x)); x + MLP(LN(x)) (GELU, ratio 4, dropout)."""

  def __init__(self, dim: int, *, heads: int, mlp_ratio: int = 4, dropout: float = 0.1,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = SelfAttention(dim, heads=heads, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.fc1 = mixed_precision.linear(dim, mlp_ratio * dim, dtype=dtype, rngs=rngs)
    self.fc2 = mixed_precision.linear(mlp_ratio * dim, dim, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, dim] -> [B, T, dim]."""
    x = x + self.drop(self.attn(self.norm1(x)))
    return x + self.drop(self.fc2(self.drop(jax.nn.gelu(self.fc1(self.norm2(x))))))


class GroupMSA(nnx.Module):
  """Gene encoder: expression [B, G] -> CLS_ge [B, dim] (float32)."""

  def __init__(self, num_genes: int = 60480, *, num_fragments: int = 240, num_groups: int = 8,
               dim: int = 512, heads: int = 8, dropout: float = 0.1,
               projection: str = "per_fragment", input_dropout: float = 0.0,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if num_fragments % num_groups:
      raise ValueError(f"num_fragments={num_fragments} must be a multiple of num_groups={num_groups}")
    self.num_genes = num_genes
    self.num_fragments = num_fragments
    self.num_groups = num_groups
    self.fragment_size = math.ceil(num_genes / num_fragments)
    self.pad = self.fragment_size * num_fragments - num_genes
    if self.pad:
      logging.info("GroupMSA: %d genes zero-padded by %d to %d fragments of %d genes.",
                   num_genes, self.pad, num_fragments, self.fragment_size)
    self.dtype = dtype
    if projection == "shared":
      self.project = mixed_precision.linear(self.fragment_size, dim, dtype=dtype, rngs=rngs)
    elif projection == "per_fragment":
      self.project = nnx.Einsum("bfg,fgd->bfd", (num_fragments, self.fragment_size, dim),
                                (num_fragments, dim), dtype=dtype,
                                kernel_init=nnx.initializers.variance_scaling(
                                    1.0, "fan_in", "truncated_normal", batch_axis=(0,)),
                                rngs=rngs)
    else:
      raise ValueError(f"Unknown GroupMSA projection {projection!r}: 'per_fragment' or 'shared'.")
    init = nnx.initializers.truncated_normal(0.02)
    self.pos_embed = nnx.Param(init(rngs.params(), (1, num_fragments, dim)))
    self.group_tokens = nnx.Param(init(rngs.params(), (num_groups, 1, dim)))
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim)))
    self.intra = TransformerBlock(dim, heads=heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.inter = TransformerBlock(dim, heads=heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.input_drop = nnx.Dropout(input_dropout, rngs=rngs)

  def _intra(self, genes: jax.Array) -> jax.Array:
    """genes: [B, G] -> intra-group block output [B, N_gr, N_f/N_gr + 1, d], group token first."""
    b, g = genes.shape
    if g != self.num_genes:
      raise ValueError(f"GroupMSA built for {self.num_genes} genes, got {g}.")
    x = jnp.pad(self.input_drop(genes.astype(self.dtype)), ((0, 0), (0, self.pad)))
    x = x.reshape(b, self.num_fragments, self.fragment_size)
    h = self.project(x) + self.pos_embed[...].astype(self.dtype)          # [B, N_f, d]
    per_group = self.num_fragments // self.num_groups
    h = h.reshape(b, self.num_groups, per_group, -1)                      # [B, N_gr, N_f/N_gr, d]
    tokens = jnp.broadcast_to(self.group_tokens[...].astype(self.dtype),
                              (b, self.num_groups, 1, h.shape[-1]))
    h = jnp.concatenate([tokens, h], axis=2).reshape(b * self.num_groups, per_group + 1, -1)
    return self.intra(h).reshape(b, self.num_groups, per_group + 1, -1)

  def fragment_tokens(self, genes: jax.Array) -> jax.Array:
    """genes: [B, G] -> the N_f fragment tokens after the intra-group block [B, N_f, dim]."""
    out = self._intra(genes)[:, :, 1:]
    return out.reshape(out.shape[0], self.num_fragments, -1)

  def __call__(self, genes: jax.Array) -> jax.Array:
    """genes: [B, G] normalised expression -> CLS_ge [B, dim]."""
    b = genes.shape[0]
    group_out = self._intra(genes)[:, :, 0]                               # [B, N_gr, d]
    cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, group_out.shape[-1]))
    out = self.inter(jnp.concatenate([cls, group_out], axis=1))
    return self.norm(out[:, 0]).astype(jnp.float32)
