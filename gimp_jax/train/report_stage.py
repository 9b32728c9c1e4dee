"""The report of a run (`report/`): numbers, ROC and confusion figures, training curves, the
t-SNE of CLS_pat after pre-training, the pre-training diagnostics and attention heatmaps."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from gimp_jax import report as report_lib
from gimp_jax.data import pipeline
from gimp_jax.train import evaluate, loop, pretrain_stage
from gimp_jax.train.state import TrainState, restored


def cls_attention(run, state: TrainState, index: int) -> tuple[np.ndarray, np.ndarray]:
  """CLS -> patch attention of the last Nyström layer (mean over heads) on a patient's first slide.

  Returns:
    coords [N, 2] level-0 (x, y) and attention [N] for the N patches of that slide.
  """
  n = run.cohort.patients[index].slide_patches[0]
  rows = np.arange(n)
  bag = run.cohort.bag(index)
  size = pipeline.bucket_size(n, run.config.data.bucket_sizes)  # padded: one compile per bucket
  patches = np.zeros((1, size, run.cohort.feature_dim), np.float32)
  patches[0, :n] = bag.features(rows)
  attn = _cls_attention(state.model(train=False), jnp.asarray(patches),
                        jnp.asarray(np.arange(size)[None] < n))
  return bag.coords(rows), np.asarray(attn[0, :n])


@jax.jit
def _cls_attention(model, patches: jax.Array, patch_mask: jax.Array) -> jax.Array:
  """[1, N, D] padded bag -> [1, N] CLS attention of the last layer, mean over heads."""
  _, _, attn = model.aggregator(patches, patch_mask=patch_mask, return_attention=True)
  return attn.mean(1)


def write_report(run, evaluation: evaluate.Evaluation, results: dict) -> str:
  """Writes `report/` of `run` (a `train.run.Run`) from the test stage's `evaluation` and the
  run's `results` so far; returns the report's path."""
  cfg = run.config
  model = run.build()
  tsne = None
  if cfg.report.tsne and "pretrain" in cfg.stages:
    train = evaluate.predict(run, restored(model, run.workdir, "pretrain"),
                             run.patients("train", "finetune"), stoppable=True)
    tsne = (train["embedding"], train["label"])
  heatmaps = []
  best = restored(model, run.workdir, evaluate.BEST)
  if hasattr(model, "aggregator"):
    for index in run.cohort.split("test")[:cfg.report.heatmaps]:
      evaluate.check_stop(run)
      coords, attention = cls_attention(run, best, int(index))
      heatmaps.append((run.cohort.patients[index].patient_id, coords, attention))
  stages = results["stages"]
  history = {name: loop.stage_records(run.workdir, name) for name in stages}
  val_history = {name: [(epoch, scores) for epoch, (_, scores) in
                        enumerate(loop.stage_records(run.workdir, f"{name}_val"))]
                 for name in stages}
  evaluate.check_stop(run)
  diagnostics = None
  if "pretrain" in cfg.stages:
    diagnostics = (loop.stage_records(run.workdir, "pretrain"), cfg.pretrain.margin,
                   pretrain_stage.COLLAPSE_SPREAD)
  survival_cutoff = None
  if evaluation.train_risk is not None:
    survival_cutoff = float(np.median(evaluation.train_risk))
  return report_lib.write_report(
      os.path.join(run.workdir, "report"), results=results,
      class_names=list(run.cohort.class_names), predictions=evaluation.predictions, tsne=tsne,
      heatmaps=heatmaps, history=history, val_history=val_history, diagnostics=diagnostics,
      seed=cfg.seed, survival_cutoff=survival_cutoff)
