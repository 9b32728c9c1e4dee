"""Contrastive cross-modal pre-training by image-report matching (Liang et al., IEEE JBHI 2022,
"TIMNet") adapted to patch bags x expression vectors.

Image and gene embeddings are projected to one space; a matching head scores |e_img - e_gene| and
is trained with binary cross-entropy on the B true pairs (label 1) and B shuffled pairs (the batch's
genes rolled by `shift`: patient i with patient i + shift's genes, label 0 unless that is patient i
itself). Batches are drawn in a fresh random order every epoch, so the roll is a random pairing;
it never pairs a patient with itself when B > shift.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gimp_jax import losses
from gimp_jax.objectives.heads import Projection, build_with_objective


def matching_pairs(batch_size: int, shift: int = 1) -> tuple[jax.Array, jax.Array]:
  """(gene index of each negative pair [B], its label [B]: 1 where it is the patient's own)."""
  partner = (jnp.arange(batch_size) + shift) % batch_size
  return partner, (partner == jnp.arange(batch_size)).astype(jnp.float32)


def itm_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean sigmoid binary cross-entropy. logits, targets: [N] -> scalar."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets))


class ITMHeads(nnx.Module):
  """Projections and the matching head MLP(|e_img - e_gene|) -> logit."""

  def __init__(self, dim: int, proj_dim: int, *, rngs: nnx.Rngs):
    self.img_proj = Projection(dim, dim, proj_dim, rngs=rngs)
    self.gene_proj = Projection(dim, dim, proj_dim, rngs=rngs)
    self.match1 = nnx.Linear(proj_dim, proj_dim, rngs=rngs)
    self.match2 = nnx.Linear(proj_dim, 1, rngs=rngs)

  def match(self, e_img: jax.Array, e_gene: jax.Array) -> jax.Array:
    """e_img, e_gene: [B, p] -> matching logits [B]."""
    return self.match2(jax.nn.relu(self.match1(jnp.abs(e_img - e_gene))))[:, 0]


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  """GiMP + ITMHeads (the `itm` block's proj_dim)."""
  return build_with_objective(
      model_cfg, data_cfg.feature_dim, genes, num_classes, seed,
      lambda rngs: ITMHeads(model_cfg.dim, method_cfg.proj_dim, rngs=rngs), dtype=dtype,
      method="itm")


def make_loss(itm_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """BCE of the matching head on B true and B shifted image-gene pairs (the `itm` block's
  shift)."""
  def loss_fn(model, batch):
    head = model.objective
    cls_img, _ = model.aggregator(batch["patches"], tokens=False)
    e_img = head.img_proj(cls_img)
    e_gene = head.gene_proj(model.gene_encoder(batch["genes"]))
    partner, neg_targets = matching_pairs(e_img.shape[0], itm_cfg.shift)
    logits = jnp.concatenate([head.match(e_img, e_gene), head.match(e_img, e_gene[partner])])
    targets = jnp.concatenate([jnp.ones(e_img.shape[0]), neg_targets])
    loss = itm_bce(logits, targets)
    accuracy = jnp.mean(((logits > 0) == (targets > 0.5)).astype(jnp.float32))
    return loss, {"loss": loss, "match_accuracy": accuracy}
  return loss_fn
