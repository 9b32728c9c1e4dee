"""TANGLE's pre-training objectives (Jaume et al., CVPR 2024) and its two baselines from the paper.

- TANGLE: symmetric InfoNCE between the L2-normalised slide embedding (ABMIL over `n_tokens`
  patches drawn uniformly with replacement from the slide, the paper's patch-subsampling
  augmentation) and the L2-normalised expression embedding (MLP), in-batch negatives, temperature
  tau: 0.5 (CE(S E^T / tau, I) + CE(E S^T / tau, I)).
- TANGLE-Rec: the expression vector predicted from the slide embedding (MLP decoder), mean squared
  error over patients and genes; no expression encoder, no contrastive term.
- Intra: slide-only self-supervision, two views of a slide (two independent uniform draws of
  `n_tokens` patches) contrasted with the same symmetric InfoNCE (mahmoodlab/TANGLE's
  `contrast_token_views` mode, the paper's Intra baseline).

Batches are pre-training windows drawn with `pretrain.sampling = "uniform"`: patches [B, L, D] with
L = n_tokens (TANGLE, TANGLE-Rec) or 2 n_tokens (Intra: the halves are the two views).
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from gimp_jax import losses
from gimp_jax.models.tangle import Tangle
from gimp_jax.objectives.clip import info_nce


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32",
          variant: str = "tangle") -> Tangle:
  """The TANGLE model of `variant` ("tangle", "tangle_rec" or "intra") on the gene list `genes`;
  the `model` block's dim and the `tangle` block's gene_hidden."""
  del dtype
  num_genes = len(genes)
  return Tangle(data_cfg.feature_dim, num_genes, num_classes, dim=model_cfg.dim,
                gene_hidden=method_cfg.gene_hidden or num_genes, encode_genes=variant == "tangle",
                decode_genes=variant == "tangle_rec",
                rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _match_accuracy(a: jax.Array, b: jax.Array) -> jax.Array:
  """Fraction of rows of a [B, d] whose most similar row of b [B, d] is their own."""
  return jnp.mean((jnp.argmax(a @ b.T, axis=1) == jnp.arange(a.shape[0])).astype(jnp.float32))


def tangle_loss(tangle_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """Symmetric InfoNCE slide <-> expression (the `tangle` block's temperature)."""
  def loss_fn(model, batch):
    s = losses.l2_normalize(model.slide_encoder(batch["patches"]))
    e = losses.l2_normalize(model.expression_encoder(batch["genes"]))
    loss = info_nce(s, e, tangle_cfg.temperature, "symmetric")
    return loss, {"loss": loss, "match_accuracy": _match_accuracy(s, e)}
  return loss_fn


def rec_loss(tangle_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """TANGLE-Rec: mean squared error of the expression predicted from the slide."""
  del tangle_cfg

  def loss_fn(model, batch):
    pred = model.expression_decoder(model.slide_encoder(batch["patches"]))
    loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - batch["genes"].astype(jnp.float32)))
    return loss, {"loss": loss}
  return loss_fn


def intra_loss(tangle_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """Intra: symmetric InfoNCE between the two halves of each window (two patch-subsampled views)."""
  def loss_fn(model, batch):
    patches = batch["patches"]
    half = patches.shape[1] // 2
    a = losses.l2_normalize(model.slide_encoder(patches[:, :half]))
    b = losses.l2_normalize(model.slide_encoder(patches[:, half:2 * half]))
    loss = info_nce(a, b, tangle_cfg.temperature, "symmetric")
    return loss, {"loss": loss, "match_accuracy": _match_accuracy(a, b)}
  return loss_fn
