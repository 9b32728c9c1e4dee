"""Pure, jitted, donating steps: (state, batch, key) -> (state, metrics).

Batches are dicts of arrays:
  gene_pretrain: genes [B, G], label [B].
  pretrain: patches [B, L, D], mpm_mask [B, L] bool, genes [B, G], label [B].
  finetune / eval: patches [B, N, D], patch_mask [B, N] bool (optional), genes [B, G], label [B].
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from gimp_jax import losses
from gimp_jax.models.gimp import cls_pat
from gimp_jax.train.optim import frozen_mask
from gimp_jax.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def gene_pretrain_loss(model, batch) -> tuple[jax.Array, dict]:
  """Supervised cross-entropy of GroupMSA + linear head on patient labels."""
  logits = model(batch["genes"])
  loss = losses.cross_entropy(logits, batch["label"])
  return loss, {"loss": loss, "accuracy": _accuracy(logits, batch["label"])}


def make_pretrain_loss(cfg: ml_collections.ConfigDict) -> LossFn:
  """GiMP pre-training: L_pre = L_tri + L_rec, either term switchable for the ablations.

  Args:
    cfg: the `pretrain` config block (use_mpm, use_triplet, triplet_on, margin, mining).
  """
  def loss_fn(model, batch):
    mpm_mask = batch["mpm_mask"] if cfg.use_mpm else None
    cls_img, tokens = model.aggregator(batch["patches"], mpm_mask=mpm_mask)
    metrics = {}
    loss = jnp.zeros((), jnp.float32)
    if cfg.use_mpm:
      rec = losses.masked_l1(model.reconstruct(tokens), batch["patches"], batch["mpm_mask"])
      metrics["rec_loss"] = rec
      loss = loss + rec
    if cfg.use_triplet:
      cls_ge = None
      if cfg.triplet_on == "pat" and model.gene_encoder is not None:
        cls_ge = model.gene_encoder(batch["genes"])
      tri = losses.triplet_loss(cls_pat(cls_img, cls_ge), batch["label"], cfg.margin, cfg.mining)
      metrics["tri_loss"] = tri
      loss = loss + tri
    metrics["loss"] = loss
    return loss, metrics
  return loss_fn


def make_finetune_loss(label_smoothing: float = 0.0) -> LossFn:
  """Cross-entropy of the MLP head on CLS_pat over whole (possibly padded) bags."""
  def loss_fn(model, batch):
    logits = model(batch["patches"], batch.get("genes"), batch.get("patch_mask"))
    loss = losses.cross_entropy(logits, batch["label"], label_smoothing)
    return loss, {"loss": loss, "accuracy": _accuracy(logits, batch["label"])}
  return loss_fn


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def make_train_step(loss_fn: LossFn, frozen_regex: str = ""):
  """Jitted step donating the state: forward in train mode with dropout keyed by `key`.

  Parameters whose path matches `frozen_regex` are held constant (stop_gradient): the optimizer
  ignores their gradients anyway, and not computing them skips the backward pass through a frozen
  encoder (17% of a CPU pre-training step at the paper's sizes); `grad_norm` is then the norm of
  the trainable gradients.
  """
  def step(state: TrainState, batch: dict, key: jax.Array):
    def objective(params):
      params = jax.tree_util.tree_map(
          lambda frozen, x: jax.lax.stop_gradient(x) if frozen else x,
          frozen_mask(params, frozen_regex), params)
      model = state.replace(params=params).model(key, train=True)
      return loss_fn(model, batch)
    grads, metrics = jax.grad(objective, has_aux=True)(state.params)
    metrics["grad_norm"] = _global_norm(grads)
    return state.apply_gradients(grads), metrics
  return jax.jit(step, donate_argnums=0)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree_util.tree_leaves(tree)))


def make_eval_step(forward: Callable):
  """Jitted evaluation: (state, batch, key) -> {"logits", "probs", "embedding"} in eval mode.

  Args:
    forward: `(model, batch) -> (logits [B, C], embedding [B, E])`, e.g. `methods.gimp_forward`.
  """
  def step(state: TrainState, batch: dict, key: jax.Array):
    del key  # evaluation is deterministic; the key keeps the step signature uniform
    logits, emb = forward(state.model(train=False), batch)
    return {"logits": logits, "probs": jax.nn.softmax(logits, -1), "embedding": emb}
  return jax.jit(step)


gene_pretrain_step = make_train_step(gene_pretrain_loss)


def make_pretrain_step(cfg: ml_collections.ConfigDict):
  """pretrain_step(state, batch, key): L_rec + L_tri on [CLS_img; CLS_ge]; `cfg.frozen` fixed."""
  return make_train_step(make_pretrain_loss(cfg), cfg.get("frozen", ""))


def make_finetune_step(label_smoothing: float = 0.0, frozen_regex: str = ""):
  """finetune_step(state, batch, key): cross-entropy of the head on CLS_pat."""
  return make_train_step(make_finetune_loss(label_smoothing), frozen_regex)
