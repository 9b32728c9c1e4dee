"""The best epoch, chosen on validation: the score a stage selects on, and the `on_epoch_end`
callback that keeps the best epoch's checkpoint and stops early after `patience` epochs."""

from absl import logging
import numpy as np

from gimp_jax import metrics as metrics_lib
from gimp_jax.checkpoint import StageCheckpoints


def selection_key(scores: dict, select_metric: str) -> tuple[float, float]:
  """(selected validation score, tie-breaker) from `metrics.classification_metrics` or
  `metrics.survival_metrics` scores.

  select_metric: "val_accuracy" (ties by AUC), "val_auc" or "val_f1" (ties by accuracy), or
  "val_c_index" (survival; no tie-breaker: the earlier epoch stays).
  """
  name = select_metric.removeprefix("val_")
  if name == "c_index":
    return float(np.nan_to_num(scores[name])), 0.0
  if name not in ("accuracy", "auc", "f1"):
    raise ValueError(f"Unknown select_metric {select_metric!r}; expected val_accuracy, val_auc, "
                     "val_f1 or val_c_index.")
  tie = "auc" if name == "accuracy" else "accuracy"
  return float(np.nan_to_num(scores[name])), float(np.nan_to_num(scores[tie]))


def task_metric(task: str, select_metric: str) -> str:
  """The stage's selection metric: the config's, or the C-index for survival."""
  return "val_c_index" if task == "survival" else select_metric


def split_scores(task: str, pred: dict) -> dict:
  """The task's metrics of one split's predictions (`evaluate.predict`'s output)."""
  if task == "survival":
    return metrics_lib.survival_metrics(pred["time"], pred["censorship"], pred["risk"])
  return metrics_lib.classification_metrics(pred["label"], pred["probs"])


def scalars(scores: dict) -> dict:
  """The scalar entries of a scores dict, NaN as 0 (for metrics.jsonl and TensorBoard)."""
  return {k: float(np.nan_to_num(v)) for k, v in scores.items()
          if isinstance(v, (int, float)) and k != "num_examples"}


def keep_best(run, stage: str, evaluate, select_metric: str, patience: int):
  """Validation after every epoch: the best epoch is saved to `<stage>_best`, and the stage stops
  after `patience` epochs without a better score (0 = never).

  Args:
    run: the `train.run.Run` (its workdir and metrics writer).
    evaluate: state -> the task's metrics of the validation split (`split_scores`).

  Returns:
    (the best-checkpoint manager, to close; the on_epoch_end callback of the stage).
  """
  best = StageCheckpoints(run.workdir, f"{stage}_best", max_to_keep=1)

  def on_epoch_end(state, epoch, meta):
    del meta
    scores = evaluate(state)
    key = selection_key(scores, select_metric)
    shown = {k: v for k, v in scalars(scores).items() if k in ("accuracy", "auc", "c_index")}
    logging.info("%s epoch %d: val %s (%s %.4f)", stage, epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), select_metric, key[0])
    run.writer.write(f"{stage}_val", int(state.step), shown)
    previous = best.meta()
    if previous is None or key > tuple(previous["score"]):
      best.save(state, {"epoch": epoch, "score": list(key)})
    best_epoch = best.meta()["epoch"]
    return {"best_epoch": best_epoch, "patience": patience,
            "stop_early": bool(patience) and epoch - best_epoch >= patience}
  return best, on_epoch_end
