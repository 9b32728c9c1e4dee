"""Global cross-modal InfoNCE (CLIP; the BioViL role in GiMP's Table 1).

BioViL's image-text objective is CLIP's symmetric InfoNCE over in-batch negatives on projected,
L2-normalised global embeddings; here the image is the bag's CLS_img and the "text" the expression
vector's CLS_ge.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gimp_jax import losses
from gimp_jax.losses import l2_normalize
from gimp_jax.objectives.heads import Projection, build_with_objective


def info_nce(a: jax.Array, b: jax.Array, temperature: float,
             direction: str = "symmetric") -> jax.Array:
  """InfoNCE with in-batch negatives; pair i of `a` matches pair i of `b`.

  Args:
    a: [B, d] L2-normalised (image side).
    b: [B, d] L2-normalised (gene side).
    temperature: tau; logits = a b^T / tau.
    direction: "a2b" (rows: -log softmax_j(l_ij)[i]), "b2a" (columns) or "symmetric" (their mean).

  Returns:
    Scalar mean over the batch.
  """
  logits = (a.astype(jnp.float32) @ b.astype(jnp.float32).T) / temperature
  labels = jnp.arange(a.shape[0])
  a2b = lambda: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  b2a = lambda: optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  if direction == "a2b":
    return a2b()
  if direction == "b2a":
    return b2a()
  if direction == "symmetric":
    return 0.5 * (a2b() + b2a())
  raise ValueError(f"Unknown InfoNCE direction {direction!r}; expected a2b, b2a or symmetric.")


class ClipHeads(nnx.Module):
  """Image and gene projections to the shared space."""

  def __init__(self, dim: int, proj_dim: int, *, rngs: nnx.Rngs):
    self.img_proj = Projection(dim, dim, proj_dim, rngs=rngs)
    self.gene_proj = Projection(dim, dim, proj_dim, rngs=rngs)


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  """GiMP + ClipHeads (the `clip` block's proj_dim)."""
  return build_with_objective(
      model_cfg, data_cfg.feature_dim, genes, num_classes, seed,
      lambda rngs: ClipHeads(model_cfg.dim, method_cfg.proj_dim, rngs=rngs), dtype=dtype,
      method="clip")


def make_loss(clip_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """Symmetric InfoNCE between the window's CLS_img and CLS_ge (the `clip` block's
  temperature)."""
  def loss_fn(model, batch):
    cls_img, _ = model.aggregator(batch["patches"], tokens=False)
    cls_ge = model.gene_encoder(batch["genes"])
    v = l2_normalize(model.objective.img_proj(cls_img))
    t = l2_normalize(model.objective.gene_proj(cls_ge))
    loss = info_nce(v, t, clip_cfg.temperature, "symmetric")
    return loss, {"loss": loss, "match_accuracy": _match_accuracy(v, t)}
  return loss_fn


def _match_accuracy(v: jax.Array, t: jax.Array) -> jax.Array:
  """Fraction of images whose most similar gene embedding in the batch is their own."""
  return jnp.mean((jnp.argmax(v @ t.T, axis=1) == jnp.arange(v.shape[0])).astype(jnp.float32))
