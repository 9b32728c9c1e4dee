"""What `masking.mpm_slots` saves in the CLI's pre-training step: interleaved A/B in one process.

  nice -n 5 python -m experiments.bench.mpm_slots --size cpu [--repeats 7] [--pinv_grad implicit]

A (before): L_pre with every window position embedded (masked ones then replaced by the mask token)
and decoded, L_rec selecting the masked ones, as `objectives.gimp` computed it before the slots.
B (after): `objectives.gimp.make_loss` as the CLI runs it: the embedding on the L - K visible
patches, the decoder on the K masked ones. Both through `steps.make_train_step` (the stage's
frozen regex) on the bench's pre-training batch (`workloads.pretrain_batch`: the CLI's pipeline, the
paper model, the config's `pretrain.pinv_grad`). Prints process CPU seconds and wall seconds
(medians), the matmul GFLOP, and both first losses (equal up to float rounding).
"""

import os
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.bench import measure
from experiments.bench import workloads as wl
from gimp_jax import losses
from gimp_jax.models import build
from gimp_jax.models.gimp import cls_pat
from gimp_jax.objectives import gimp as gimp_objective

_SIZE = flags.DEFINE_enum("size", "cpu", list(wl.SIZES), "Workload sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved repeats.")
_PINV_GRAD = flags.DEFINE_enum("pinv_grad", None, ["unrolled", "implicit"],
                               "model.pinv_grad (default: the config's pretrain.pinv_grad).")


def every_position_loss(config):
  """L_pre (the config's terms: L_rec, the triplet on CLS_pat and on CLS_img, the variance hinge)
  with every position embedded and decoded: the formulation before `masking.mpm_slots`."""
  cfg = config.pretrain
  assert cfg.use_mpm and cfg.use_triplet and cfg.triplet_on == "pat+img"

  def loss_fn(model, batch):
    cls_img, tokens = model.aggregator(batch["patches"], mpm_mask=batch["mpm_mask"])
    img, ge = gimp_objective.triplet_inputs(cls_img, model.gene_encoder(batch["genes"]),
                                            cfg.triplet_normalize)
    use = batch["label"] >= 0
    rec = losses.masked_l1(model.reconstruct(tokens), batch["patches"], batch["mpm_mask"])
    loss = (cfg.rec_weight * rec
            + cfg.tri_weight * losses.triplet_loss(cls_pat(img, ge), batch["label"], cfg.margin,
                                                   cfg.mining, use)
            + cfg.tri_weight * losses.triplet_loss(img, batch["label"], cfg.margin, cfg.mining,
                                                   use)
            + cfg.img_variance_weight * losses.variance_hinge(cls_img))
    return loss, {"loss": loss, "rec_loss": rec}
  return loss_fn


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", "highest")
  sizes = wl.SIZES[_SIZE.value]
  cfg = wl.model_config("float32")
  cfg.model = build.pretrain_model_cfg(cfg.model, cfg.pretrain)
  cfg.pretrain.window = sizes.window
  cfg.model.pinv_grad = _PINV_GRAD.value or cfg.model.pinv_grad
  print(f"load at start {os.getloadavg()}; pinv_grad {cfg.model.pinv_grad}", flush=True)
  with tempfile.TemporaryDirectory(prefix="gimp_mpm_slots_") as tmp:
    cohort = wl.write_cohort(tmp, [sizes.window] * sizes.pretrain_batch, sizes.genes)
    batch = wl.pretrain_batch(cohort, cfg)
  runners = []
  for name, loss_fn in (("before: every position embedded and decoded", every_position_loss(cfg)),
                        ("after: masking.mpm_slots (objectives.gimp)",
                         gimp_objective.make_loss(cfg.pretrain))):
    model, _ = wl.model_and_params(cfg, sizes.genes)
    runners.append(wl.jax_step_runner(name, cfg, model, loss_fn, cfg.pretrain.frozen, batch))
  times = measure.interleaved(runners, _REPEATS.value)
  print(f"B={sizes.pretrain_batch}, L={sizes.window}, genes={sizes.genes}; "
        f"{_REPEATS.value} interleaved repeats")
  print("| step | CPU s median [min, max] | wall s median | matmul GFLOP | first loss |")
  print("|---|---|---|---|---|")
  for r in runners:
    t = times[r.name]
    print(f"| {r.name} | {np.median(t['cpu_s']):.3f} [{min(t['cpu_s']):.3f}, "
          f"{max(t['cpu_s']):.3f}] | {np.median(t['wall_s']):.3f} | "
          f"{r.info['model_flops'] / 1e9:.1f} | {r.info['first_loss']:.6f} |")
  print(f"load at end {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
