"""REFERS (Zhou et al., Nat. Mach. Intell. 2022) adapted to patch bags x expression vectors.

A REFERS study holds several radiographs and one report; a patient here holds one or more slides
(concatenated into one bag) and one expression profile. Each pre-training window is cut into V
contiguous views (consecutive patches, so mostly one slide each), every view goes through the
shared patch aggregator, and the paper's view fusion combines them: an MLP on the concatenated view
features scores the views, a masked softmax weights them, and the weighted views are concatenated
(v = [a_1 f_1; ...; a_V f_V]). Two tasks with weight 1 each (paper):
- contrastive alignment of the fused study vector with the gene embedding: InfoNCE, study -> genes
  only (paper Eq. 2; tau = 0.1 from the code);
- the report-generation task turned into predicting the normalised expression vector from the
  fused study vector (MSE), since genes are unordered and there is no token sequence to decode.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from gimp_jax import losses
from gimp_jax.models.mil import masked_softmax
from gimp_jax.objectives.clip import info_nce
from gimp_jax.losses import l2_normalize
from gimp_jax.objectives.heads import Projection, build_with_objective


def fuse_views(features: jax.Array, scores: jax.Array, view_mask: jax.Array):
  """REFERS view fusion with a variable number of views.

  Args:
    features: [B, V, d] per-view features.
    scores: [B, V] fusion-MLP outputs.
    view_mask: [B, V] bool, True for real views (missing views get weight 0).

  Returns:
    (fused [B, V * d] = concat_v(alpha_v f_v), alpha [B, V] = masked softmax of the scores).
  """
  alpha = masked_softmax(scores, view_mask, axis=-1)
  fused = features.astype(jnp.float32) * alpha[..., None]
  return fused.reshape(features.shape[0], -1), alpha


def expression_loss(predicted: jax.Array, genes: jax.Array) -> jax.Array:
  """Mean squared error of the predicted expression; both [B, G] -> scalar."""
  return jnp.mean(jnp.square(predicted.astype(jnp.float32) - genes.astype(jnp.float32)))


class REFERSHeads(nnx.Module):
  """View-fusion MLP, projections for the contrast, and the expression decoder."""

  def __init__(self, dim: int, views: int, proj_dim: int, num_genes: int, *, rngs: nnx.Rngs):
    self.views = views
    self.fusion1 = nnx.Linear(views * dim, dim, rngs=rngs)
    self.fusion2 = nnx.Linear(dim, views, rngs=rngs)
    self.img_proj = Projection(views * dim, dim, proj_dim, rngs=rngs)
    self.gene_proj = Projection(dim, dim, proj_dim, rngs=rngs)
    self.decoder1 = nnx.Linear(views * dim, dim, rngs=rngs)
    self.decoder2 = nnx.Linear(dim, num_genes, rngs=rngs)

  def fusion_scores(self, features: jax.Array) -> jax.Array:
    """features: [B, V, d] -> scores [B, V] from the concatenation of all views."""
    flat = features.reshape(features.shape[0], -1)
    return self.fusion2(jax.nn.relu(self.fusion1(flat)))

  def decode(self, fused: jax.Array) -> jax.Array:
    """fused: [B, V * d] -> predicted expression [B, G]."""
    return self.decoder2(jax.nn.relu(self.decoder1(fused)))


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  """GiMP + REFERSHeads (the `refers` block's views, proj_dim)."""
  return build_with_objective(
      model_cfg, data_cfg.feature_dim, genes, num_classes, seed,
      lambda rngs: REFERSHeads(model_cfg.dim, method_cfg.views, method_cfg.proj_dim, len(genes),
                               rngs=rngs), dtype=dtype, method="refers")


def split_views(patches: jax.Array, views: int) -> jax.Array:
  """patches: [B, L, D] -> [B * V, L // V, D]: V contiguous views (a remainder is dropped)."""
  b, length, d = patches.shape
  per_view = length // views
  if per_view == 0:
    raise ValueError(f"pretrain.window={length} is shorter than refers.views={views}.")
  return patches[:, :views * per_view].reshape(b * views, per_view, d)


def make_loss(refers_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """L = InfoNCE(fused views, genes) + generation_weight * MSE(decoded expression, genes)."""
  cfg = refers_cfg

  def loss_fn(model, batch):
    head = model.objective
    b = batch["patches"].shape[0]
    cls, _ = model.aggregator(split_views(batch["patches"], cfg.views), tokens=False)
    features = cls.reshape(b, cfg.views, -1)
    fused, alpha = fuse_views(features, head.fusion_scores(features),
                              jnp.ones((b, cfg.views), bool))
    v = l2_normalize(head.img_proj(fused))
    t = l2_normalize(head.gene_proj(model.gene_encoder(batch["genes"])))
    contrast = info_nce(v, t, cfg.temperature, cfg.direction)
    generation = expression_loss(head.decode(fused), batch["genes"])
    loss = contrast + cfg.generation_weight * generation
    return loss, {"loss": loss, "contrast_loss": contrast, "generation_loss": generation,
                  "view_weight_max": jnp.mean(jnp.max(alpha, axis=-1))}
  return loss_fn
