"""TANGLE's encoders (Jaume et al., "Transcriptomics-guided Slide Representation Learning in
Computational Pathology", CVPR 2024): an ABMIL slide encoder and an MLP expression encoder, with the
expression decoder of TANGLE-Rec.

Read for understanding in mahmoodlab/TANGLE (core/models/mmssl.py, core/models/abmil.py); written
here in Flax NNX:
- slide encoder: two pre-attention blocks Linear -> LayerNorm -> GELU -> Dropout(0.1), gated
  attention (tanh x sigmoid, dropout 0.25, one score per patch), softmax over the patches, the
  attention-weighted sum of the pre-attention embeddings: [B, N, D] -> [B, dim];
- expression encoder: two blocks Linear -> LayerNorm -> ReLU -> Dropout(0.2), then Linear to dim;
- TANGLE-Rec's decoder: the same MLP from the slide embedding to the expression vector.
The fine-tuning head is a linear layer on the slide embedding: a TANGLE model is a slide-only
model, whatever genes the batch carries.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from gimp_jax.models.mil import GatedAttention, full_mask, masked_softmax


class MLP(nnx.Module):
  """[Linear -> LayerNorm -> act -> Dropout] x 2 -> Linear: [..., in_dim] -> [..., out_dim]."""

  def __init__(self, in_dim: int, hidden: int, out_dim: int, *, act, dropout: float,
               rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, hidden, rngs=rngs)
    self.norm1 = nnx.LayerNorm(hidden, epsilon=1e-5, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.norm2 = nnx.LayerNorm(hidden, epsilon=1e-5, rngs=rngs)
    self.out = nnx.Linear(hidden, out_dim, rngs=rngs) if out_dim else None
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.drop(self.act(self.norm1(self.fc1(x.astype(jnp.float32)))))
    h = self.drop(self.act(self.norm2(self.fc2(h))))
    return h if self.out is None else self.out(h)


class SlideEncoder(nnx.Module):
  """TANGLE's ABMIL: pre-attention MLP (GELU, dropout 0.1), gated attention, softmax pooling."""

  def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs):
    self.pre = MLP(in_dim, dim, 0, act=jax.nn.gelu, dropout=0.1, rngs=rngs)
    self.attention = GatedAttention(dim, dim, 1, dropout=0.25, rngs=rngs)

  def __call__(self, patches: jax.Array, patch_mask: jax.Array | None = None,
               return_attention: bool = False):
    """patches: [B, N, D]; patch_mask: [B, N] bool or None -> slide embedding [B, dim] (float32)
    (and the attention [B, N], summing to 1 over the real patches)."""
    h = self.pre(patches)
    attn = masked_softmax(self.attention(h)[..., 0], full_mask(patches, patch_mask), axis=-1)
    emb = jnp.einsum("bn,bnd->bd", attn, h)
    return (emb, attn) if return_attention else emb


class Tangle(nnx.Module):
  """Slide encoder, optional expression encoder (TANGLE) or decoder (TANGLE-Rec), linear head.

  Attributes:
    slide_encoder: SlideEncoder.
    expression_encoder: MLP genes -> [B, dim], or None (TANGLE-Rec, Intra).
    expression_decoder: MLP slide embedding -> genes, or None (TANGLE, Intra).
    head: Linear(dim, classes) on the slide embedding (fine-tuning).
  """

  def __init__(self, in_dim: int, num_genes: int, num_classes: int, *, dim: int,
               gene_hidden: int, encode_genes: bool, decode_genes: bool, rngs: nnx.Rngs):
    self.slide_encoder = SlideEncoder(in_dim, dim, rngs=rngs)
    self.expression_encoder = (MLP(num_genes, gene_hidden, dim, act=jax.nn.relu, dropout=0.2,
                                   rngs=rngs) if encode_genes else None)
    self.expression_decoder = (MLP(dim, dim, num_genes, act=jax.nn.relu, dropout=0.2, rngs=rngs)
                               if decode_genes else None)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def embed_slide(self, patches: jax.Array, patch_mask: jax.Array | None = None) -> jax.Array:
    """The slide embedding the probe reads: [B, N, D] -> [B, dim]."""
    return self.slide_encoder(patches, patch_mask)

  def __call__(self, patches: jax.Array, genes: jax.Array | None = None,
               patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(logits [B, C], slide embedding [B, dim]); genes are not used."""
    del genes
    emb = self.embed_slide(patches, patch_mask)
    return self.head(emb), emb

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The slide encoder's gated attention [B, N] (`models.attention`)."""
    del genes
    return self.slide_encoder(patches, patch_mask, return_attention=True)[1]
