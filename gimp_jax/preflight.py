"""Every input of a run checked before anything is trained, and the one cohort loader.

`check(config, workdir)` returns the cohort or every problem, one line each naming the file, the
patient or slide and the field: the config (`configs.checks`), the labels CSV (malformed rows,
duplicated slide IDs, a patient with conflicting labels or in two splits, unknown label values);
every `.h5` in full (unreadable or truncated, missing `features`/`coords`, wrong width, zero
patches, NaN/Inf, slides without a label row); the expression table (a patient without a column,
NaN/Inf values, a column matched by two patients, genes missing from the stored gene list when
resuming, fine-tuning from `init_from` or predicting); the splits the stages need; whether the
model builds on the gene list; the workdir (writable, room for the checkpoints and the report).
With `data.drop_incomplete` the patients with problems of their own are dropped (logged) instead.

`load_cohort` is the one way a cohort is read (`.h5` files or ArrayRecord shards): `main` (through
`preflight`), `python -m gimp_jax.validate` and `python -m gimp_jax.predict` all call it.
"""

from collections.abc import Mapping, Sequence
import os
import shutil
import tempfile

from flax import nnx
import jax
import ml_collections
import numpy as np

from gimp_jax import methods
from gimp_jax import workdir as workdir_lib
from gimp_jax.checkpoint import MAX_TO_KEEP
from gimp_jax.configs import checks
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import split_checks
from gimp_jax.errors import DataError
from gimp_jax.objectives import survival
from gimp_jax.train import probe

TRAINING_STAGES = ("gene_pretrain", "pretrain", "finetune")
# Config problems after which the inputs are not read (as configured they cannot be); after the
# others (e.g. finetune.epochs) the data problems are reported too.
_BLOCKING = ("config: method", "config: data.", "config: task", "config: survival",
             "config: compute_dtype")
_MIB = float(1 << 20)


def _existing_ancestor(path: str) -> str:
  """`path` or its nearest existing ancestor."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def workdir_problems(workdir: str) -> list[str]:
  """Whether the workdir exists or can be created, and takes files (a real write, not os.access,
  which says yes to root on read-only folders). Nothing is left behind."""
  base = _existing_ancestor(workdir)
  if not os.path.isdir(base):
    return [f"{workdir}: workdir: cannot be created, {base} is a file"]
  try:
    with tempfile.NamedTemporaryFile(dir=base, prefix=".gimp_jax-write-test-"):
      pass
  except OSError as e:
    what = "not writable" if base == os.path.abspath(workdir) else f"cannot be created in {base}"
    return [f"{workdir}: workdir: {what} ({e.strerror or e})"]
  return []


def split_problems(data_cfg: ml_collections.ConfigDict, stages: Sequence[str],
                   cohort: cohort_lib.Cohort) -> list[str]:
  """The splits `stages` need (`data_cfg`: the `data` config block, naming the inputs): train to
  train on, val to pick the best epoch on (gene_pretrain, finetune) and to report, test to
  report."""
  need = {"train": TRAINING_STAGES, "val": ("gene_pretrain", "finetune", "test"),
          "test": ("test",)}
  sizes = {k: int(v.size) for k, v in cohort.splits.items()}
  how = f"{len(cohort.patients)} patients: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
  where = data_cfg.labels or data_cfg.get("tfds_dir", "")
  if data_cfg.get("splits_dir", ""):
    return []  # `split_checks` names the split file and its column
  out = []
  for split, users_of in need.items():
    users = [s for s in stages if s in users_of]
    if users and not sizes.get(split):
      out.append(f"{where}: split: no {split} patients ({how}), but stage(s) "
                 f"{', '.join(users)} need them: add patients, change data.split_fractions, or "
                 "give a split column")
  return out


def abstract_model(config: ml_collections.ConfigDict, cohort: cohort_lib.Cohort) -> nnx.Module:
  """The run's model (`config.method`'s `build` on the cohort's gene list, with the head the run
  trains: `survival.num_outputs`) from shapes only: nothing is allocated.

  Raises:
    DataError: the model cannot be built on the cohort's gene list (MCAT: its signatures are found
      by gene symbol).
  """
  outputs = survival.num_outputs(config.get("task", "classification"), config.get("survival"),
                                 cohort.num_classes)
  return nnx.eval_shape(lambda: methods.build(config, cohort.gene_names, outputs, config.seed))


def parameter_count(model: nnx.Module) -> int:
  """Parameters of `model` (an `abstract_model` will do)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def checkpoint_bytes(params: int, stages: Sequence[str]) -> tuple[int, int]:
  """Disk the checkpoints of a model of `params` parameters need at most over `stages`.

  Returns:
    (bytes, checkpoints K): bytes = params x 3 (weights and two Adam moments) x 4 (float32) x K,
    with K = MAX_TO_KEEP per training stage, plus the best fine-tuned one.
  """
  kept = MAX_TO_KEEP * sum(s in TRAINING_STAGES for s in stages)
  kept += int("finetune" in stages)
  return params * 3 * 4 * kept, kept


def _tree_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path)
             for n in names)


# Upper bounds of what a run writes beside its checkpoints. A report figure is a PNG of at most a
# few hundred KiB (the largest of the tiny run: 140 KiB) and a heatmap grows with the slide; 4 MiB
# each covers both, counted 2.5 times (the PNG, and base64 in report.html). A metrics record
# (metrics.jsonl line and TensorBoard events) takes well under 1 KiB per step.
REPORT_FIGURE_BYTES = 4 << 20
METRICS_STEP_BYTES = 1 << 10


def report_bytes(cohort: cohort_lib.Cohort, stages: Sequence[str],
                 stage_cfgs: Mapping[str, ml_collections.ConfigDict], heatmaps: int
                 ) -> tuple[int, int]:
  """(bytes, figures): disk the report (with `heatmaps` heatmaps: `report.heatmaps`), the
  prediction CSVs and the metrics need at most; `stage_cfgs`: the training stages' config blocks
  (epochs, batch_size) by name."""
  if "test" not in stages:
    return 0, 0
  figures = 4 + 1 + int(heatmaps)  # ROC + confusion (val, test), training curves
  figures += 2 * int("pretrain" in stages)  # t-SNE, pre-training diagnostics
  csv = 64 * (cohort.num_classes + 4) * len(cohort.patients)
  train = int(cohort.split("train").size)
  steps = sum(int(stage_cfgs[s].epochs) * -(-train // max(int(stage_cfgs[s].batch_size), 1))
              for s in TRAINING_STAGES if s in stages and s in stage_cfgs)
  return int(2.5 * figures * REPORT_FIGURE_BYTES) + csv + steps * METRICS_STEP_BYTES, figures


def disk_problems(workdir: str, checkpoints: tuple[int, int, int], report: tuple[int, int]
                  ) -> list[str]:
  """Whether the workdir's disk has room for the checkpoints (bytes, parameters, checkpoints
  kept: `checkpoint_bytes`) and the report (`report_bytes`); those already there count."""
  need, params, kept = checkpoints
  report, figures = report
  have = _tree_bytes(os.path.join(workdir, "checkpoints"))
  free = shutil.disk_usage(_existing_ancestor(workdir)).free
  if free + have < need + report:
    there = f", {have / _MIB:.1f} MiB already there" if have else ""
    return [f"{workdir}: disk: {free / _MIB:.1f} MiB free but the run needs about "
            f"{(need + report) / _MIB:.1f} MiB: checkpoints {need / _MIB:.1f} MiB ({params:,} "
            f"parameters x 3 (weights and two Adam moments) x 4 bytes x {kept} checkpoints "
            f"kept{there}), report and metrics {report / _MIB:.1f} MiB ({figures} figures)"]
  return []


def load_cohort(spec: cohort_lib.CohortSpec, data_cfg: ml_collections.ConfigDict,
                normalizer: genes_lib.GeneNormalizer | None = None, stored: str | None = None
                ) -> tuple[cohort_lib.Cohort | None, list[str]]:
  """The cohort of `spec` with every feature file read in full: (the cohort, []) or (None, every
  problem, one line each).

  Args:
    spec: the cohort's inputs and settings (`CohortSpec.from_config`).
    data_cfg: the `data` config block (`source` "h5" or "tfds", and `tfds_dir`).
    normalizer: the gene list the inputs must provide (resume, fine-tuning, prediction), or None
      to fit one on the training split.
    stored: where `normalizer` is stored, named in the missing-genes messages.
  """
  if data_cfg.get("source", "h5") == "tfds":
    from gimp_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
    try:  # the builder checked the inputs; what is left is its settings and the gene list
      return tfds_source.load_cohort_from_tfds(data_cfg.tfds_dir, spec, normalizer), []
    except DataError as e:
      return None, str(e).split("\n")
  # The scanned cohort itself (not only its problems): with drop_incomplete, the patients whose
  # feature data is broken must be dropped from the cohort that trains, not only reported.
  cohort, problems = cohort_lib.scan_cohort(spec, normalizer)
  if stored:
    problems = [f"{p} (the gene list stored in {stored})" if "genes of the gene list" in p else p
                for p in problems]
  return (None, problems) if problems else (cohort, [])


def check(config: ml_collections.ConfigDict, workdir: str | None = None
          ) -> tuple[cohort_lib.Cohort | None, list[str]]:
  """Runs every check.

  Args:
    config: the run's config.
    workdir: the run's workdir (writability, disk room, stored gene list), or None to skip those.

  Returns:
    (the cohort, []) when everything is fine, else (None, every problem, one line each).
  """
  problems = checks.problems(config)
  if any(p.startswith(_BLOCKING) for p in problems):  # the inputs cannot be read as configured
    return None, problems
  if workdir:
    problems += workdir_problems(workdir)
  try:
    normalizer, stored = workdir_lib.stored_normalizer(workdir, config.get("init_from", ""))
  except DataError as e:
    problems += str(e).split("\n")
    normalizer, stored = None, None
  cohort, found = load_cohort(cohort_lib.CohortSpec.from_config(config), config.data, normalizer,
                              stored)
  problems += found + split_checks.problems(config)
  model = None
  if cohort is not None and not found:
    problems += split_problems(config.data, config.stages, cohort)
    if not any(p.startswith("config:") for p in problems):  # the model is built from the config
      try:
        model = abstract_model(config, cohort)
      except DataError as e:
        problems += str(e).split("\n")
      else:
        problems += probe.encoder_problems(model, config.method, config.stages)
  if model is not None and workdir and not problems:
    params = parameter_count(model)
    need, kept = checkpoint_bytes(params, config.stages)
    stage_cfgs = {s: config[s] for s in TRAINING_STAGES if s in config}
    problems += disk_problems(workdir, (need, params, kept),
                              report_bytes(cohort, config.stages, stage_cfgs,
                                           config.report.heatmaps))
  problems = list(dict.fromkeys(problems))  # a fold's split file is read by two checks
  return (None, problems) if problems else (cohort, [])


def preflight(config: ml_collections.ConfigDict, workdir: str) -> cohort_lib.Cohort:
  """`check` for a run about to start: the cohort, or DataError listing every problem."""
  cohort, problems = check(config, workdir)
  if problems:
    raise DataError("\n".join(problems))
  return cohort


