"""The GiMP model: gene encoder + patch aggregator + reconstruction decoder + fine-tuning head."""

from flax import nnx
import jax
import jax.numpy as jnp

from gimp_jax.models.aggregator import PatchAggregator
from gimp_jax.models import mixed_precision
from gimp_jax.models.group_msa import GroupMSA
from gimp_jax.models.modality_dropout import ModalityDropout, encode_genes


class MLPHead(nnx.Module):
  """Linear(in -> hidden) + ReLU + dropout + Linear(hidden -> classes)."""

  def __init__(self, in_dim: int, hidden: int, num_classes: int, *, dropout: float,
               rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, hidden, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, in_dim] -> logits [B, num_classes] (float32)."""
    return self.fc2(self.drop(jax.nn.relu(self.fc1(x.astype(jnp.float32)))))


class LateFusionHead(nnx.Module):
  """Late fusion: logits = MLP_img(CLS_img) + MLP_ge(CLS_ge), each an `MLPHead` on its half of
  CLS_pat, so each modality adds its own log-odds (the additive form a linear model on both
  inputs has) instead of one MLP on the concatenation."""

  def __init__(self, dim: int, hidden: int, num_classes: int, *, dropout: float,
               rngs: nnx.Rngs):
    self.img = MLPHead(dim, hidden, num_classes, dropout=dropout, rngs=rngs)
    self.ge = MLPHead(dim, hidden, num_classes, dropout=dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, 2d] = [CLS_img; CLS_ge] -> logits [B, num_classes] (float32)."""
    d = x.shape[-1] // 2
    return self.img(x[..., :d]) + self.ge(x[..., d:])


class GeneClassifier(nnx.Module):
  """GroupMSA + a linear head, for the supervised gene pre-training stage."""

  def __init__(self, gene_encoder: nnx.Module, dim: int, num_classes: int, *, rngs: nnx.Rngs):
    self.gene_encoder = gene_encoder
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, genes: jax.Array) -> jax.Array:
    """genes: [B, G] -> logits [B, num_classes]."""
    return self.head(self.gene_encoder(genes))


class GiMP(nnx.Module):
  """CLS_pat = [CLS_img; CLS_ge]; MPM decoder on the patch tokens; MLP head on CLS_pat
  (`fusion="concat"`, the paper's) or one MLP head per half, their logits summed
  (`fusion="late"`, `LateFusionHead`).

  `gene_encoder=None` gives the image-only model (GiMP w/o GroupMSA, Table 1), whose CLS_pat is
  CLS_img alone. `modality_dropout` > 0 adds the learned missing-genes token
  (`models.modality_dropout`): CLS_ge replaced with that probability in fine-tuning, and for
  patients without expression (NaN rows) always. `objective`: the extra parameters of a compared
  pre-training objective (`objectives.heads`), carried along unused by fine-tuning.
  """

  def __init__(self, aggregator: PatchAggregator, gene_encoder: nnx.Module | None, *,
               in_dim: int, dim: int, num_classes: int, head_hidden: int, head_dropout: float,
               modality_dropout: float = 0.0, fusion: str = "concat",
               objective: nnx.Module | None = None, rngs: nnx.Rngs):
    self.aggregator = aggregator
    self.gene_encoder = gene_encoder
    self.objective = objective
    self.missing_genes = (ModalityDropout((dim,), modality_dropout, rngs=rngs)
                          if modality_dropout > 0 and gene_encoder is not None else None)
    self.decoder = mixed_precision.linear(dim, in_dim, dtype=aggregator.dtype,  # compute dtype
                                          rngs=rngs)
    if fusion == "late" and gene_encoder is not None:
      self.head = LateFusionHead(dim, head_hidden, num_classes, dropout=head_dropout, rngs=rngs)
    elif fusion in ("concat", "late"):  # "late" without genes: the one half's head
      pat_dim = dim * (2 if gene_encoder is not None else 1)
      self.head = MLPHead(pat_dim, head_hidden, num_classes, dropout=head_dropout, rngs=rngs)
    else:
      raise ValueError(f"Unknown GiMP fusion {fusion!r}; expected 'concat' or 'late'.")

  def encode(self, patches: jax.Array, genes: jax.Array | None, *,
             mpm_mask: jax.Array | None = None, patch_mask: jax.Array | None = None,
             tokens: bool = True):
    """patches: [B, N, in_dim]; genes: [B, G] -> (cls_img [B, d], cls_ge [B, d] | None, tokens
    [B, N, d], or None with tokens=False: see `PatchAggregator`)."""
    cls_img, tokens = self.aggregator(patches, mpm_mask=mpm_mask, patch_mask=patch_mask,
                                      tokens=tokens)
    cls_ge = None
    if self.gene_encoder is not None:
      cls_ge = encode_genes(self.gene_encoder, self.missing_genes, genes)
    return cls_img, cls_ge, tokens

  def embed_slide(self, patches: jax.Array, patch_mask: jax.Array | None = None) -> jax.Array:
    """CLS_img, the slide embedding the probe reads: [B, N, in_dim] -> [B, d] (float32)."""
    return self.aggregator(patches, patch_mask=patch_mask, tokens=False)[0]

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """CLS -> patch attention of the aggregator's Nyström layers, mean over layers and heads: [B, N]
    (`models.attention`). Every layer's read counts: on a cohort whose class sits in a few
    patches, the first layer's CLS row puts most of its attention on them and the last one's does
    not need to (docs/needle.md)."""
    del genes
    _, _, attn = self.aggregator(patches, patch_mask=patch_mask, return_attention=True,
                                 tokens=False, every_layer=True)
    return jnp.mean(attn.astype(jnp.float32), axis=1)

  def reconstruct(self, tokens: jax.Array) -> jax.Array:
    """tokens: [B, N, d] -> reconstructed patch embeddings [B, N, in_dim] (float32)."""
    return self.decoder(tokens).astype(jnp.float32)

  def __call__(self, patches: jax.Array, genes: jax.Array | None,
               patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Whole-bag classification: (logits [B, num_classes], CLS_pat [B, 2d] or [B, d])."""
    cls_img, cls_ge, _ = self.encode(patches, genes, patch_mask=patch_mask, tokens=False)
    emb = cls_pat(cls_img, cls_ge)
    return self.head(emb), emb


def cls_pat(cls_img: jax.Array, cls_ge: jax.Array | None) -> jax.Array:
  """[CLS_img; CLS_ge] ([B, 2d]), or CLS_img ([B, d]) without a gene encoder."""
  return cls_img if cls_ge is None else jnp.concatenate([cls_img, cls_ge], axis=-1)
