"""Supervised objectives: the bag loss of `config.task` (cross-entropy on patient labels, or a
survival loss, `objectives/survival.py`) for the fine-tuning of every method and for the
supervised pre-training of the gene encoder."""

import ml_collections

from gimp_jax import losses
from gimp_jax.objectives import survival


def finetune_loss(method_cfg: ml_collections.ConfigDict | None,
                  finetune_cfg: ml_collections.ConfigDict, task: str,
                  survival_cfg: ml_collections.ConfigDict | None) -> losses.LossFn:
  """The loss of `task` (`survival.bag_loss`, with the `finetune` block's label_smoothing) on the
  logits of `model(patches, genes, patch_mask) -> (logits, embedding)` over whole (padded) bags;
  the method's own block is not read."""
  del method_cfg
  head_loss = survival.bag_loss(task, survival_cfg, finetune_cfg.label_smoothing)

  def loss_fn(model, batch):
    logits, _ = model(batch["patches"], batch.get("genes"), batch.get("patch_mask"))
    loss, metrics = head_loss(logits, batch)
    return loss, {"loss": loss, **metrics}
  return loss_fn


def gene_loss(task: str, survival_cfg: ml_collections.ConfigDict | None) -> losses.LossFn:
  """The loss of `task` (`survival.bag_loss`) of GroupMSA + linear head on genes [B, G] (label
  [B], and for survival censorship / time [B])."""
  head_loss = survival.bag_loss(task, survival_cfg)

  def loss_fn(model, batch):
    loss, metrics = head_loss(model(batch["genes"]), batch)
    return loss, {"loss": loss, **metrics}
  return loss_fn
