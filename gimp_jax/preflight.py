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

from collections.abc import Sequence
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


def split_problems(config: ml_collections.ConfigDict, cohort: cohort_lib.Cohort) -> list[str]:
  """The splits the stages need: train to train on, val to pick the best epoch on (gene_pretrain,
  finetune) and to report, test to report."""
  need = {"train": TRAINING_STAGES, "val": ("gene_pretrain", "finetune", "test"),
          "test": ("test",)}
  sizes = {k: int(v.size) for k, v in cohort.splits.items()}
  how = f"{len(cohort.patients)} patients: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
  where = config.data.labels or config.data.get("tfds_dir", "")
  if config.data.get("splits_dir", ""):
    return []  # `split_checks` names the split file and its column
  out = []
  for split, stages in need.items():
    users = [s for s in config.stages if s in stages]
    if users and not sizes.get(split):
      out.append(f"{where}: split: no {split} patients ({how}), but stage(s) "
                 f"{', '.join(users)} need them: add patients, change data.split_fractions, or "
                 "give a split column")
  return out


def parameter_count(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int
                    ) -> int:
  """Parameters of the run's model on the gene list `genes`, from shapes only (nothing is
  allocated)."""
  model = nnx.eval_shape(
      lambda: methods.get(config.method).build(config, genes, num_classes, config.seed))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def model_problems(config: ml_collections.ConfigDict, cohort: cohort_lib.Cohort) -> list[str]:
  """Whether the method's model can be built on the cohort's gene list (MCAT: its signatures are
  found by gene symbol), from shapes only."""
  try:
    parameter_count(config, cohort.gene_names, cohort.num_classes)
  except DataError as e:
    return str(e).split("\n")
  return []


def checkpoint_bytes(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int
                     ) -> tuple[int, int, int]:
  """Disk the run's checkpoints need at most.

  Returns:
    (bytes, parameters P, checkpoints K): bytes = P x 3 (weights and two Adam moments) x 4 (float32)
    x K, with K = MAX_TO_KEEP per training stage, plus the best fine-tuned one.
  """
  params = parameter_count(config, genes, num_classes)
  kept = MAX_TO_KEEP * sum(s in TRAINING_STAGES for s in config.stages)
  kept += int("finetune" in config.stages)
  return params * 3 * 4 * kept, params, kept


def _tree_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path)
             for n in names)


# Upper bounds of what a run writes beside its checkpoints. A report figure is a PNG of at most a
# few hundred KiB (the largest of the tiny run: 140 KiB) and a heatmap grows with the slide; 4 MiB
# each covers both, counted 2.5 times (the PNG, and base64 in report.html). A metrics record
# (metrics.jsonl line and TensorBoard events) takes well under 1 KiB per step.
REPORT_FIGURE_BYTES = 4 << 20
METRICS_STEP_BYTES = 1 << 10


def report_bytes(config: ml_collections.ConfigDict, cohort: cohort_lib.Cohort) -> tuple[int, int]:
  """(bytes, figures): disk the report, the prediction CSVs and the metrics need at most."""
  if "test" not in config.stages:
    return 0, 0
  stages = config.stages
  figures = 4 + 1 + int(config.report.heatmaps)  # ROC + confusion (val, test), training curves
  figures += 2 * int("pretrain" in stages)  # t-SNE, pre-training diagnostics
  csv = 64 * (cohort.num_classes + 4) * len(cohort.patients)
  train = int(cohort.split("train").size)
  steps = sum(int(config[s].epochs) * -(-train // max(int(config[s].batch_size), 1))
              for s in TRAINING_STAGES if s in stages and s in config)
  return int(2.5 * figures * REPORT_FIGURE_BYTES) + csv + steps * METRICS_STEP_BYTES, figures


def disk_problems(workdir: str, config: ml_collections.ConfigDict,
                  cohort: cohort_lib.Cohort) -> list[str]:
  """Whether the workdir's disk has room for the checkpoints and the report (those already there
  count)."""
  need, params, kept = checkpoint_bytes(config, cohort.gene_names, cohort.num_classes)
  report, figures = report_bytes(config, cohort)
  have = _tree_bytes(os.path.join(workdir, "checkpoints"))
  free = shutil.disk_usage(_existing_ancestor(workdir)).free
  if free + have < need + report:
    there = f", {have / _MIB:.1f} MiB already there" if have else ""
    return [f"{workdir}: disk: {free / _MIB:.1f} MiB free but the run needs about "
            f"{(need + report) / _MIB:.1f} MiB: checkpoints {need / _MIB:.1f} MiB ({params:,} "
            f"parameters x 3 (weights and two Adam moments) x 4 bytes x {kept} checkpoints "
            f"kept{there}), report and metrics {report / _MIB:.1f} MiB ({figures} figures)"]
  return []


def load_cohort(config: ml_collections.ConfigDict,
                normalizer: genes_lib.GeneNormalizer | None = None, stored: str | None = None
                ) -> tuple[cohort_lib.Cohort | None, list[str]]:
  """The cohort of `config.data` with every feature file read in full: (the cohort, []) or (None,
  every problem, one line each).

  Args:
    config: the run's config (`config.data` names the inputs; `data.source` "h5" or "tfds").
    normalizer: the gene list the inputs must provide (resume, fine-tuning, prediction), or None
      to fit one on the training split.
    stored: where `normalizer` is stored, named in the missing-genes messages.
  """
  spec = cohort_lib.CohortSpec.from_config(config)
  if config.data.get("source", "h5") == "tfds":
    from gimp_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
    try:  # the builder checked the inputs; what is left is its settings and the gene list
      return tfds_source.load_cohort_from_tfds(config.data.tfds_dir, spec, normalizer), []
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
    normalizer, stored = workdir_lib.stored_normalizer(config, workdir)
  except DataError as e:
    problems += str(e).split("\n")
    normalizer, stored = None, None
  cohort, found = load_cohort(config, normalizer, stored)
  problems += found + split_checks.problems(config)
  if cohort is not None and not found:
    problems += split_problems(config, cohort)
    if not any(p.startswith("config:") for p in problems):  # the model is built from the config
      problems += model_problems(config, cohort) + probe.encoder_problems(config, cohort)
  if cohort is not None and workdir and not problems:
    problems += disk_problems(workdir, config, cohort)
  problems = list(dict.fromkeys(problems))  # a fold's split file is read by two checks
  return (None, problems) if problems else (cohort, [])


def preflight(config: ml_collections.ConfigDict, workdir: str) -> cohort_lib.Cohort:
  """`check` for a run about to start: the cohort, or DataError listing every problem."""
  cohort, problems = check(config, workdir)
  if problems:
    raise DataError("\n".join(problems))
  return cohort


