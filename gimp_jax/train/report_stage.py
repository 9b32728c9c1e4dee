"""The report of a run (`report/`): numbers, ROC and confusion figures, training curves, the
t-SNE of CLS_pat after pre-training, the pre-training diagnostics, and for every model that
answers the attention protocol (`models.attention`) its heatmaps on the test patients' slides."""

import os

import jax
import numpy as np

from gimp_jax import report as report_lib
from gimp_jax.models import attention
from gimp_jax.report import run_facts
from gimp_jax.report import slides
from gimp_jax.train import evaluate, loop, pretrain_stage
from gimp_jax.train.state import restored


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
  if attention.supports(model):
    for index in run.cohort.split("test")[:cfg.report.heatmaps]:
      evaluate.check_stop(run)
      heatmaps += slides.patient_scores(
          best.model(train=False), run.cohort, int(index), bucket_sizes=cfg.data.bucket_sizes,
          slides_dir=cfg.data.get("slides_dir", ""),
          default_patch_size=cfg.report.get("patch_size_level0", 256),
          caption=slides.caption(evaluation.predictions["test"],
                                 run.cohort.patients[index].patient_id, run.cohort.class_names,
                                 cfg.report.get("time_unit", "")))
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
  chosen_epochs = run_facts.chosen_epochs(run.workdir, stages)  # every process: orbax reads
  if jax.process_index() != 0:  # of a job of several processes, process 0 writes
    return os.path.join(run.workdir, "report")
  return report_lib.write_report(
      os.path.join(run.workdir, "report"), results=results,
      class_names=list(run.cohort.class_names), predictions=evaluation.predictions, tsne=tsne,
      heatmaps=heatmaps, history=history, val_history=val_history, diagnostics=diagnostics,
      seed=cfg.seed, survival_cutoff=survival_cutoff,
      slide_options={k: cfg.report[k] for k in ("top_k", "thumbnail_size", "deepzoom_size", "heatmap_scale")
                     if k in cfg.report},
      facts=dict(splits=run_facts.split_balance(run.cohort), command=run_facts.command(),
                 config_diff=run_facts.config_diff(cfg), time_unit=cfg.report.get("time_unit", ""),
                 chosen_epochs=chosen_epochs))
