"""Whole-bag predictions of a trained model, and the `test` stage: the best fine-tuned model on
val and test (and from the slides alone, the genes-only baseline, the penalised linear
reference on the same patients, `gimp_jax.reference`, and the two stacked, `gimp_jax.stacking`)."""

import dataclasses
import os
from typing import Any

from absl import logging
import jax
import numpy as np

from gimp_jax import reference
from gimp_jax import stacking
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import pipeline
from gimp_jax.objectives import survival
from gimp_jax.train import gene_stage, loop, partial, selection
from gimp_jax.train.state import TrainState, restored

BEST = "finetune_best"


def check_stop(run) -> None:
  """Raises KeyboardInterrupt when a stop was requested (SIGTERM/SIGINT): for the stages that
  save nothing (test, report), which the same command simply runs again."""
  if run.stop():
    logging.warning("Stopping on request.")
    raise KeyboardInterrupt


def predict(run, state: TrainState, split: str | np.ndarray, *, stoppable: bool = False,
            cohort: cohort_lib.Cohort | None = None) -> dict:
  """Whole-bag predictions of a split (or of patient indices) of `cohort` (default: the run's),
  batched as fine-tuning (`finetune.batch_size`, `data.bucket_sizes`).

  Returns:
    patient_id [N], label [N], logits [N, C], probs [N, C], embedding [N, E]; for survival also
    risk [N], time [N] and censorship [N]. With `stoppable`, a stop request (`check_stop`) ends
    it between batches.
  """
  cohort = run.cohort if cohort is None else cohort
  surv = cohort.task == "survival"
  out = {"patient_id": [], "label": [], "logits": [], "probs": [], "embedding": []}
  if surv:
    out.update(time=[], censorship=[])
  for batch in pipeline.bag_batches(
      cohort, split, batch_size=run.config.finetune.batch_size,
      bucket_sizes=run.config.data.bucket_sizes, prefetch=run.config.data.prefetch):
    if stoppable:
      check_stop(run)
    res = run.eval_step(state, loop.to_device(batch), jax.random.key(0))
    out["patient_id"].extend(str(p) for p in batch["patient_id"])
    out["label"].append(batch["label"])
    for k in ("logits", "probs", "embedding"):
      out[k].append(np.asarray(res[k]))
    if surv:
      out["time"].append(batch["time"])
      out["censorship"].append(batch["censorship"])
  for k in out:
    if k != "patient_id":
      out[k] = np.concatenate(out[k]) if out[k] else np.zeros((0,))
  out["patient_id"] = np.asarray(out["patient_id"])
  if surv:
    out["risk"] = survival.risk(out["logits"], run.config.survival.loss)
  return out


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What the `test` stage found, for results.json and the report.

  Attributes:
    results: the scalars and metrics that go to results.json (`val_accuracy`, `test_c_index`, ...).
    predictions: split -> `predict`'s output, for "val" and "test".
    train_risk: survival: the training cases' risks (the report splits at their median); else None.
  """
  results: dict[str, Any]
  predictions: dict[str, dict]
  train_risk: np.ndarray | None = None


def test(run) -> Evaluation:
  """The stage (`run`: a `train.run.Run`): the best fine-tuned model on val and test; with a
  missing-genes token, the same model from the slides alone; with `gene_pretrain`, the genes-only
  model."""
  model = run.build()
  state = restored(model, run.workdir, BEST)
  task = run.cohort.task
  keys = ("c_index",) if task == "survival" else ("accuracy", "auc", "f1")
  results, predictions = {}, {}
  for split in ("val", "test"):
    predictions[split] = predict(run, state, run.patients(split, "test"), stoppable=True)
    scores = selection.split_scores(task, predictions[split])
    results.update({f"{split}_{k}": float(scores[k]) for k in keys})
    results[f"{split}_metrics"] = scores
  # The statistician's row on the same patients, val and test in the predictions' row order.
  index = {p.patient_id: i for i, p in enumerate(run.cohort.patients)}
  ref_splits = {split: np.array([index[str(p)] for p in predictions[split]["patient_id"]], np.int64)
                for split in ("val", "test")}
  ref_splits["train"] = run.cohort.split(run.patients("train", "finetune"))
  pooled = reference.mean_pooled(run.cohort)
  results["reference"], fit = reference.linear_reference(run.cohort, ref_splits, pooled)
  results.update(reference.scalars(results["reference"], results))
  if fit is not None:
    x = reference.inputs(run.cohort, pooled)[reference.MAIN]
    linear = {split: fit.predict(x[ref_splits[split]]) for split in ("val", "test")}
    results.update(stacking.stack(task, predictions, linear))
    if jax.process_index() == 0:  # kept for `gimp_jax.predict`
      stacking.save(os.path.join(run.workdir, stacking.FILE), fit, results["stack_weight"],
                    predictions["val"], linear["val"], stacking.fingerprint(state.params))
  train_risk = None
  if task == "survival":  # the report splits the test cases at the median training risk
    train_risk = predict(run, state, "train", stoppable=True)["risk"]
  if getattr(model, "missing_genes", None) is not None:  # the same model from the slides alone
    slides = partial.slide_only(run.cohort)
    for split in ("val", "test"):
      scores = selection.split_scores(
          task, predict(run, state, run.patients(split, "test"), cohort=slides))
      results.update({f"{split}_slide_only_{k}": float(scores[k]) for k in keys})
  if "gene_pretrain" in run.config.stages:  # the genes-only baseline of the same run
    genes = restored(run.gene_classifier(), run.workdir, "gene_pretrain_best").model(train=False)
    for split in ("val", "test"):
      results[f"gene_only_{split}_{keys[0]}"] = float(gene_stage.gene_only_scores(
          run.cohort, genes, run.patients(split, "gene_pretrain"),
          run.config.survival.loss)[keys[0]])
  return Evaluation(results, predictions, train_risk)
