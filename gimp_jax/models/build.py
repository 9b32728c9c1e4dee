"""Builds the stage models from the config."""

from flax import nnx
import jax.numpy as jnp
import ml_collections

from gimp_jax.models.aggregator import PatchAggregator
from gimp_jax.models.gimp import GeneClassifier, GiMP
from gimp_jax.models.group_msa import GroupMSA
from gimp_jax.models.snn import SNN


def pretrain_model_cfg(model_cfg: ml_collections.ConfigDict,
                       pretrain_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `model` block the pre-training stage builds its model from: `pinv_grad` replaced by the
  `pretrain` block's (the pseudo-inverse gradient chosen for pre-training, configs/nsclc.py);
  `model_cfg` itself when `pretrain_cfg` has no such field."""
  if "pinv_grad" not in pretrain_cfg:
    return model_cfg
  out = model_cfg.copy_and_resolve_references()
  out.pinv_grad = pretrain_cfg.pinv_grad
  return out


def build_gene_encoder(model_cfg: ml_collections.ConfigDict, num_genes: int, rngs: nnx.Rngs):
  """The gene encoder of the `model` config block, or None for image-only models."""
  m = model_cfg
  if m.gene_encoder == "none":
    return None
  if m.gene_encoder == "group_msa":
    # Always float32: GroupMSA is small (B x 249 tokens against B x 6000 patches) and frozen in the
    # GiMP stages, and in bfloat16 its CLS_ge is off by ~1%, which moves the triplet loss on
    # squared distances by ~5% at the paper's sizes (with a float32 encoder: 0.01%).
    return GroupMSA(num_genes, num_fragments=m.num_fragments, num_groups=m.num_groups,
                    dim=m.dim, heads=m.heads, dropout=m.gene_dropout, projection=m.gene_projection,
                    input_dropout=m.gene_input_dropout, dtype=jnp.float32, rngs=rngs)
  if m.gene_encoder == "snn":  # blocks of width d: output [B, d] as GroupMSA's CLS_ge
    return SNN(num_genes, (m.dim,) * m.snn_depth, dropout=m.snn_dropout, rngs=rngs)
  raise ValueError(f"Unknown model.gene_encoder {m.gene_encoder!r}.")


def build_gene_classifier(model_cfg: ml_collections.ConfigDict, num_genes: int, num_classes: int,
                          seed: int) -> GeneClassifier:
  """The gene encoder of the `model` config block with a linear head of `num_classes` outputs."""
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  return GeneClassifier(build_gene_encoder(model_cfg, num_genes, rngs), model_cfg.dim,
                        num_classes, rngs=rngs)


def build_gimp(model_cfg: ml_collections.ConfigDict, feature_dim: int, num_genes: int,
               num_classes: int, seed: int, *, dtype: str = "float32",
               objective: nnx.Module | None = None) -> GiMP:
  """GiMP of the `model` config block on patch features [B, N, feature_dim] and `num_genes`
  genes, the aggregator computing in `dtype` (`config.compute_dtype`), with a compared
  objective's heads."""
  m = model_cfg
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  aggregator = PatchAggregator(feature_dim, m.dim, depth=m.depth, heads=m.heads,
                               num_landmarks=m.num_landmarks, dropout=m.attn_dropout,
                               dtype=jnp.dtype(dtype),
                               pinv_grad=m.get("pinv_grad", "unrolled"),
                               exact_cls=m.get("cls_attention", "nystrom") == "exact", rngs=rngs)
  return GiMP(aggregator, build_gene_encoder(m, num_genes, rngs),
              in_dim=feature_dim, dim=m.dim, num_classes=num_classes,
              head_hidden=m.head_hidden, head_dropout=m.head_dropout,
              modality_dropout=m.get("modality_dropout", 0.0),
              fusion=m.get("head_fusion", "concat"), objective=objective, rngs=rngs)
