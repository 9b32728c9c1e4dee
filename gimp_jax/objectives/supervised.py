"""Supervised objectives: cross-entropy of a classifier on patient labels (fine-tuning of every
method, and GiMP's supervised GroupMSA pre-training)."""

import ml_collections

from gimp_jax import losses


def finetune_loss(config: ml_collections.ConfigDict) -> losses.LossFn:
  """Cross-entropy of the logits of `model(patches, genes, patch_mask) -> (logits, embedding)`
  over whole (padded) bags."""
  smoothing = config.finetune.label_smoothing

  def loss_fn(model, batch):
    logits, _ = model(batch["patches"], batch.get("genes"), batch.get("patch_mask"))
    loss = losses.cross_entropy(logits, batch["label"], smoothing)
    return loss, {"loss": loss, "accuracy": losses.accuracy(logits, batch["label"])}
  return loss_fn


def gene_loss(model, batch):
  """Supervised cross-entropy of GroupMSA + linear head: genes [B, G], label [B]."""
  logits = model(batch["genes"])
  loss = losses.cross_entropy(logits, batch["label"])
  return loss, {"loss": loss, "accuracy": losses.accuracy(logits, batch["label"])}
