"""The `pretrain` stage: GiMP pre-training (L_pre = L_tri + L_rec on B windows of L patches, 50%
masked) or the method's own objective, and its diagnostics (is L_tri active, has CLS_img
collapsed)."""

from absl import logging
import ml_collections

from gimp_jax import methods
from gimp_jax.data import pipeline
from gimp_jax.models import build
from gimp_jax.train import loop, transfer, triplet_advice
from gimp_jax.train.state import TrainState, frozen_regex, train_state

COLLAPSE_SPREAD = 0.05  # relative spread of CLS_img below which the slide token has collapsed


def pretrain_stage(run) -> tuple[loop.StageSpec, TrainState, int]:
  """The pre-training stage as the CLI runs it (`run`: a `train.run.Run`): (spec, initial state,
  batch size)."""
  cfg = run.config
  loss_fn = methods.pretrain_loss(cfg)  # ValueError: the method has no pre-training stage
  model = run.build(build.pretrain_model_cfg(cfg.model, cfg.pretrain))
  params = transfer.initial_params(run, model, "pretrain")
  train = run.patients("train", "pretrain")
  n_train = run.cohort.split(train).size
  bsz = min(cfg.pretrain.batch_size, n_train)
  per_epoch = pipeline.num_batches(n_train, bsz, True)
  frozen = frozen_regex(cfg.pretrain.frozen, params)
  state = train_state(model, cfg.optim, steps_per_epoch=per_epoch, epochs=cfg.pretrain.epochs,
                      frozen=frozen, params=params)
  spec = loop.StageSpec(
      name="pretrain", loss_fn=loss_fn,
      batches=lambda e, s: pipeline.pretrain_batches(
          run.cohort, train, batch_size=bsz, window=cfg.pretrain.window,
          ratio=cfg.pretrain.mask_ratio, seed=cfg.seed, epoch=e, start_batch=s,
          prefetch=cfg.data.prefetch, sampling=cfg.pretrain.get("sampling", "window")),
      steps_per_epoch=per_epoch, epochs=cfg.pretrain.epochs,
      checkpoint_every=cfg.pretrain.checkpoint_every, frozen=frozen,
      on_epoch_end=lambda state, epoch, meta: diagnose_pretrain(cfg.pretrain, epoch, meta))
  return spec, state, bsz


def pretrain(run) -> dict:
  """The stage; returns its entry of results.json["stages"]."""
  spec, state, bsz = pretrain_stage(run)
  return loop.fit_stage(run, spec, state, batch_size=bsz)[1]  # full batches: data parallel


def diagnose_pretrain(cfg: ml_collections.ConfigDict, epoch: int, meta: dict) -> dict:
  """Warns once per run when an epoch's mean diagnostics show L_tri inactive or CLS_img collapsed.

  Args:
    cfg: the `pretrain` config block.
    meta: the stage's meta; `history[-1]` holds the epoch's mean metrics.

  Returns:
    {"warned": [...]}, kept in the checkpoint meta so a resumed run does not warn again.
  """
  means, warned = meta["history"][-1], list(meta.get("warned", []))
  if means.get("tri_active", 1.0) == 0.0 and "triplet" not in warned:
    warned.append("triplet")
    logging.warning("%s", triplet_advice.message(cfg, epoch, means))
  if means.get("img_spread", 1.0) < COLLAPSE_SPREAD and "collapse" not in warned:
    warned.append("collapse")
    logging.warning(
        "pretrain epoch %d: CLS_img has collapsed (relative spread %.3g < %g: every slide gets "
        "nearly the same token), so fine-tuning starts from a constant slide embedding. Set "
        "pretrain.img_variance_weight (e.g. 1.0), add pretrain.triplet_on='pat+img', or lower "
        "pretrain.rec_weight.", epoch, means["img_spread"], COLLAPSE_SPREAD)
  return {"warned": warned}
