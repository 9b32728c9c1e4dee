"""Fine-tuning objectives of the MIL baselines: CLAM's instance clustering loss, DSMIL's two streams.

CLAM (Lu et al. 2021, `models/model_clam.py`): for the true class, the k patches with the highest
attention are pseudo-labelled positive and the k lowest negative for that class's instance
classifier; for every other class (subtyping), its k highest-attended patches are pseudo-labelled
negative. The per-class losses are summed and divided by the number of classes (subtyping), and
L = bag_weight * CE(bag) + (1 - bag_weight) * L_inst with bag_weight 0.7 and k = 8. CLAM's default
instance loss is the smooth top-1 SVM of Berrada et al. (the `topk` package, alpha = tau = 1);
cross-entropy is its `--inst_loss ce` option. Both are here.

DSMIL (Li et al. 2021): L = 0.5 CE(bag stream) + 0.5 CE(max-instance stream) (for survival, the
survival loss of `objectives/survival.py` on each stream). The authors use BCE
on one-hot targets; this library's classification heads use softmax cross-entropy throughout.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gimp_jax import losses
from gimp_jax.objectives import survival


def smooth_top1_svm(logits: jax.Array, labels: jax.Array, alpha: float = 1.0,
                    tau: float = 1.0) -> jax.Array:
  """Smooth top-1 multiclass SVM loss per sample (Berrada et al., ICLR 2018).

  Args:
    logits: [..., K] scores.
    labels: [...] int targets.
    alpha: margin added to every non-target score.
    tau: smoothing temperature.

  Returns:
    [...] tau * logsumexp_j((s_j + alpha [j != y] - s_y) / tau).
  """
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  target = jnp.sum(logits * onehot, axis=-1, keepdims=True)
  x = logits + alpha * (1.0 - onehot) - target
  return tau * jax.nn.logsumexp(x / tau, axis=-1)


def _pointwise(logits: jax.Array, targets: jax.Array, kind: str) -> jax.Array:
  if kind == "svm":
    return smooth_top1_svm(logits, targets)
  if kind == "ce":
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  raise ValueError(f"Unknown CLAM instance loss {kind!r}; expected 'svm' or 'ce'.")


def clam_instance_loss(instance_logits: jax.Array, attention: jax.Array, mask: jax.Array,
                       labels: jax.Array, *, k: int = 8, loss: str = "svm",
                       subtyping: bool = True) -> jax.Array:
  """CLAM's instance clustering loss, averaged over the batch.

  Args:
    instance_logits: [B, C, N, 2] every class's instance classifier on every patch.
    attention: [B, K, N] attention (K = 1 for CLAM-SB: one branch ranks the patches for every
      class; K = C for CLAM-MB: class c uses branch c).
    mask: [B, N] bool, True for real patches; padding is never selected (bags with fewer than k
      real patches use the real ones only).
    labels: [B] int bag labels.
    k: patches per pseudo-labelled set (CLAM's k_sample).
    loss: "svm" (smooth top-1 SVM) or "ce".
    subtyping: also apply the out-of-class term (CLAM's `subtyping=True` for subtype tasks).

  Returns:
    Scalar: mean over the batch of sum_c loss_c (divided by C when subtyping), where loss_c is the
    mean pointwise loss over the selected real patches.
  """
  b, c, n, _ = instance_logits.shape
  k = min(k, n)
  branch = jnp.arange(c) if attention.shape[1] > 1 else jnp.zeros((c,), jnp.int32)
  att = attention.astype(jnp.float32)[:, branch]                          # [B, C, N]
  real = mask[:, None, :]
  _, top = jax.lax.top_k(jnp.where(real, att, -jnp.inf), k)               # [B, C, k]
  _, bottom = jax.lax.top_k(jnp.where(real, -att, -jnp.inf), k)
  maskc = jnp.broadcast_to(real, att.shape)
  top_ok = jnp.take_along_axis(maskc, top, axis=-1).astype(jnp.float32)
  bottom_ok = jnp.take_along_axis(maskc, bottom, axis=-1).astype(jnp.float32)
  pick = lambda idx: jnp.take_along_axis(instance_logits, idx[..., None], axis=2)  # [B, C, k, 2]
  in_class = jax.nn.one_hot(labels, c, dtype=bool)                        # [B, C]
  # In-class: top -> 1, bottom -> 0. Out-of-class: top -> 0.
  top_target = jnp.broadcast_to(in_class[..., None], top.shape).astype(jnp.int32)
  top_loss = _pointwise(pick(top), top_target, loss)                      # [B, C, k]
  bottom_loss = _pointwise(pick(bottom), jnp.zeros_like(bottom), loss)
  in_sum = jnp.sum(top_loss * top_ok, -1) + jnp.sum(bottom_loss * bottom_ok, -1)
  in_mean = in_sum / jnp.maximum(jnp.sum(top_ok, -1) + jnp.sum(bottom_ok, -1), 1.0)
  out_mean = jnp.sum(top_loss * top_ok, -1) / jnp.maximum(jnp.sum(top_ok, -1), 1.0)
  per_class = jnp.where(in_class, in_mean, out_mean if subtyping else 0.0)  # [B, C]
  total = jnp.sum(per_class, axis=-1)
  if subtyping:
    total = total / c
  return jnp.mean(total)


def make_clam_loss(method_cfg: ml_collections.ConfigDict | None,
                   finetune_cfg: ml_collections.ConfigDict, task: str,
                   survival_cfg: ml_collections.ConfigDict | None) -> losses.LossFn:
  """bag_weight * CE(bag) + (1 - bag_weight) * instance loss (`method_cfg`, the `clam` block:
  bag_weight, k_sample, instance_loss, subtyping); the bag loss is `task`'s (`survival.bag_loss`,
  with the `finetune` block's label_smoothing)."""
  cfg = method_cfg
  head_loss = survival.bag_loss(task, survival_cfg, finetune_cfg.label_smoothing)

  def loss_fn(model, batch):
    mask = batch.get("patch_mask")
    if mask is None:
      mask = jnp.ones(batch["patches"].shape[:2], bool)
    logits, attention, h, _ = model.attend(batch["patches"], mask)
    bag, bag_metrics = head_loss(logits, batch)
    inst = clam_instance_loss(model.instance_logits(h), attention, mask, batch["label"],
                              k=cfg.k_sample, loss=cfg.instance_loss, subtyping=cfg.subtyping)
    loss = cfg.bag_weight * bag + (1.0 - cfg.bag_weight) * inst
    return loss, {"loss": loss, "bag_loss": bag, "instance_loss": inst, **bag_metrics}
  return loss_fn


def make_dsmil_loss(method_cfg: ml_collections.ConfigDict | None,
                    finetune_cfg: ml_collections.ConfigDict, task: str,
                    survival_cfg: ml_collections.ConfigDict | None) -> losses.LossFn:
  """DSMIL's 0.5 bag + 0.5 max-instance loss: cross-entropy (`dsmil_loss`), or for survival the
  task's survival loss on each stream (`survival.bag_loss`; no label smoothing)."""
  del method_cfg, finetune_cfg
  head_loss = survival.bag_loss(task, survival_cfg)

  def loss_fn(model, batch):
    bag_logits, max_logits, _ = model.streams(batch["patches"], batch.get("patch_mask"))
    bag, metrics = head_loss(bag_logits, batch)
    loss = 0.5 * bag + 0.5 * head_loss(max_logits, batch)[0]
    if "accuracy" in metrics:
      metrics["accuracy"] = losses.accuracy(bag_logits + max_logits, batch["label"])
    return loss, {"loss": loss, **metrics}
  return loss_fn
