"""The config's fields that have a valid range or set of values, checked before anything runs.

`problems(config)` returns one line per field out of range (`config: pretrain.window: 0, expected
an integer >= 1`), so that `gimp_jax.main` exits with code 2 before reading any input. Fields a
config does not have (a method's config without a stage block) are skipped.
"""

import math
import os
from typing import Any

import ml_collections

from gimp_jax import methods
from gimp_jax import workdir

STAGES = ("gene_pretrain", "pretrain", "finetune", "test", "probe")  # the order they run in
SELECT = ("val_accuracy", "val_auc", "val_f1")

# field -> (kind, low, high, low included, high included); kind "int" or "float".
_RANGES = {
    "data.feature_dim": ("int", 1, None, True, True),
    "data.num_genes": ("int", 0, None, True, True),
    "data.num_folds": ("int", 0, None, True, True),
    "data.fold": ("int", -1, None, True, True),
    "survival.num_bins": ("int", 2, None, True, True),
    "survival.alpha": ("float", 0, 1, True, True),
    "data.prefetch": ("int", 0, None, True, True),
    "data.std_floor": ("float", 0, None, True, True),
    "model.dim": ("int", 1, None, True, True),
    "model.heads": ("int", 1, None, True, True),
    "model.depth": ("int", 1, None, True, True),
    "model.num_landmarks": ("int", 1, None, True, True),
    "model.attn_dropout": ("float", 0, 1, True, False),
    "model.num_fragments": ("int", 1, None, True, True),
    "model.num_groups": ("int", 1, None, True, True),
    "model.gene_dropout": ("float", 0, 1, True, False),
    "model.gene_input_dropout": ("float", 0, 1, True, False),
    "model.snn_depth": ("int", 1, None, True, True),
    "model.snn_dropout": ("float", 0, 1, True, False),
    "model.head_hidden": ("int", 1, None, True, True),
    "model.head_dropout": ("float", 0, 1, True, False),
    "model.modality_dropout": ("float", 0, 1, True, False),
    "probe.draws": ("int", 1, None, True, True),
    "probe.max_iter": ("int", 1, None, True, True),
    "tangle.n_tokens": ("int", 1, None, True, True),
    "tangle.temperature": ("float", 0, None, False, True),
    "tangle.gene_hidden": ("int", 0, None, True, True),
    "optim.learning_rate": ("float", 0, None, False, True),
    "optim.weight_decay": ("float", 0, None, True, True),
    "optim.warmup_epochs": ("float", 0, None, True, True),
    "optim.end_lr_fraction": ("float", 0, 1, True, True),
    "optim.grad_clip": ("float", 0, None, True, True),
    "optim.grad_accum_steps": ("int", 1, None, True, True),
    "gene_pretrain.epochs": ("int", 1, None, True, True),
    "gene_pretrain.batch_size": ("int", 1, None, True, True),
    "gene_pretrain.patience": ("int", 0, None, True, True),
    "pretrain.epochs": ("int", 1, None, True, True),
    "pretrain.batch_size": ("int", 1, None, True, True),
    "pretrain.window": ("int", 1, None, True, True),
    "pretrain.mask_ratio": ("float", 0, 1, False, False),
    "pretrain.margin": ("float", 0, None, True, True),
    "pretrain.tri_weight": ("float", 0, None, True, True),
    "pretrain.rec_weight": ("float", 0, None, True, True),
    "pretrain.img_variance_weight": ("float", 0, None, True, True),
    "pretrain.checkpoint_every": ("int", 1, None, True, True),
    "finetune.epochs": ("int", 1, None, True, True),
    "finetune.batch_size": ("int", 1, None, True, True),
    "finetune.label_smoothing": ("float", 0, 1, True, False),
    "finetune.patience": ("int", 0, None, True, True),
    "finetune.checkpoint_every": ("int", 1, None, True, True),
    "report.heatmaps": ("int", 0, None, True, True),
    "mcat.num_gene_groups": ("int", 1, None, True, True),
}
_CHOICES = {
    "compute_dtype": ("float32", "bfloat16", "float16"),
    "task": ("classification", "survival"),
    "data.source": ("h5", "tfds"),
    "survival.loss": ("nll", "cox"),
    "gene_pretrain.select_metric": SELECT,
    "finetune.select_metric": SELECT,
    "pretrain.mining": ("batch_hard", "batch_all"),
    "pretrain.triplet_on": ("pat", "img", "pat+img"),
    "pretrain.sampling": ("window", "uniform"),
    "model.pinv_grad": ("unrolled", "implicit"),
    "model.cls_attention": ("nystrom", "exact"),
    "report.heatmap_scale": ("mass", "rank", "minmax"),
    "model.head_fusion": ("concat", "late"),
    "pretrain.pinv_grad": ("unrolled", "implicit"),
    "mcat.gene_groups": ("signatures", "slices"),
}


def _get(config: ml_collections.ConfigDict, field: str) -> tuple[bool, Any]:
  node = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _expected(kind: str, low, high, low_in: bool, high_in: bool) -> str:
  what = "an integer" if kind == "int" else "a number"
  lo = f"{'>=' if low_in else '>'} {low}" if low is not None else ""
  hi = f"{'<=' if high_in else '<'} {high}" if high is not None else ""
  return f"{what} {lo}{' and ' if lo and hi else ''}{hi}"


def _in_range(value, kind: str, low, high, low_in: bool, high_in: bool) -> bool:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  if kind == "int" and not isinstance(value, int) or not math.isfinite(value):
    return False
  if low is not None and (value < low or (value == low and not low_in)):
    return False
  return high is None or value < high or (value == high and high_in)


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every field out of its range or set, one line each (empty when all are fine)."""
  out = []
  stages = tuple(config.get("stages", ()))
  unknown = [s for s in stages if s not in STAGES]
  if unknown or not stages:
    out.append(f"config: stages: {stages!r}: unknown stage(s) {', '.join(map(repr, unknown))}; "
               f"known: {', '.join(STAGES)}" if unknown else "config: stages: empty")
  elif list(stages) != sorted(stages, key=STAGES.index) or len(set(stages)) != len(stages):
    out.append(f"config: stages: {stages!r}: each stage at most once, in the order "
               f"{', '.join(STAGES)}")
  method = config.get("method", "")
  if method not in methods.known():
    out.append(f"config: method: {method!r}, expected one of {', '.join(methods.known())}")
  if config.get("task", "") == "survival" and config.data.get("source", "h5") == "tfds":
    out.append("config: data.source: 'tfds' datasets carry class labels only; survival reads the "
               "labels CSV (data.source='h5')")
  init_from = config.get("init_from", "")
  if init_from and not os.path.exists(os.path.join(init_from, workdir.NORMALIZER)):
    out.append(f"{init_from}: init_from: no {workdir.NORMALIZER}, so the gene list its model was "
               "trained on is unknown (not a gimp_jax workdir?)")
  for field, spec in _RANGES.items():
    present, value = _get(config, field)
    if present and not _in_range(value, *spec):
      out.append(f"config: {field}: {value!r}, expected {_expected(*spec)}")
  for field, choices in _CHOICES.items():
    present, value = _get(config, field)
    if present and value not in choices:
      out.append(f"config: {field}: {value!r}, expected one of {', '.join(choices)}")
  present, heads = _get(config, "model.heads")
  _, dim = _get(config, "model.dim")
  if present and isinstance(heads, int) and isinstance(dim, int) and heads > 0 and dim % heads:
    out.append(f"config: model.heads: {heads} does not divide model.dim {dim}")
  present, folds = _get(config, "data.num_folds")
  _, fold = _get(config, "data.fold")
  if present and folds and (folds < 3 or not -1 <= fold < folds):
    out.append(f"config: data.num_folds/fold: {folds}/{fold}, expected num_folds >= 3 and "
               "-1 <= fold < num_folds (-1: every fold; or num_folds 0: one split)")
  _, splits_dir = _get(config, "data.splits_dir")
  if present and folds and splits_dir:
    out.append(f"config: data.num_folds/splits_dir: both set ({folds} and {splits_dir!r}): the "
               "split files define the folds; set data.num_folds=0, or data.splits_dir='' for "
               f"{folds} seeded folds")
  _, task = _get(config, "task")
  _, loss = _get(config, "survival.loss")
  present, batch = _get(config, "finetune.batch_size")
  if (task == "survival" and loss == "cox" and "finetune" in stages and present
      and isinstance(batch, int) and 0 < batch < 2):
    out.append(f"config: finetune.batch_size: {batch} with survival.loss='cox': the Cox partial "
               "likelihood ranks the cases of a batch against each other, so a batch of one case "
               "has no gradient (every loss 0, nothing trained); set finetune.batch_size >= 2 "
               "(e.g. 16) or survival.loss='nll'")
  present, shots = _get(config, "probe.shots")
  if present and not (isinstance(shots, (tuple, list)) and all(
      isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in shots)):
    out.append(f"config: probe.shots: {shots!r}, expected positive integers (k training patients "
               "per class; the fit on all of them is always added)")
  present, window = _get(config, "pretrain.window")
  _, ratio = _get(config, "pretrain.mask_ratio")
  _, mpm = _get(config, "pretrain.use_mpm")
  if (present and mpm and "pretrain" in stages and isinstance(window, int) and window >= 1
      and isinstance(ratio, (int, float)) and 0 < ratio < 1
      and not 1 <= round(ratio * window) <= window - 1):
    out.append(f"config: pretrain.mask_ratio: {ratio} of a window of {window} patches masks "
               f"{round(ratio * window)}: L_rec needs at least one masked and one visible patch")
  return out
