"""A run is data plus stages: `Run` holds what every stage reads (config, workdir, cohort, the
patients each stage uses, metrics writer); `train_and_evaluate` runs `config.stages` in the
paper's order, gene_pretrain -> pretrain -> finetune -> test (-> probe, TANGLE's few-shot
protocol), each stage a function `stage(run) -> results` in its own module, reading the previous
stage's checkpoint from the workdir. Finished stages are skipped and an interrupted stage resumes
from its last checkpoint.
"""

import dataclasses
import os
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from gimp_jax import methods
from gimp_jax import preflight
from gimp_jax import provenance
from gimp_jax import workdir as workdir_lib
from gimp_jax.configs.checks import STAGES
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.models import build
from gimp_jax.objectives import survival
from gimp_jax.train import evaluate, finetune_stage, folds, gene_stage, loop, partial
from gimp_jax.train import pretrain_stage
from gimp_jax.train import probe, report_stage, steps


@dataclasses.dataclass(frozen=True)
class Run:
  """What the stages share. Built once (`open_run` for training, `predict.predict` for new
  patients); nothing is added to it afterwards.

  Attributes:
    config: the run's config.
    workdir: where its checkpoints and metrics are.
    cohort: the patients, splits and gene list.
    writer: metrics.jsonl and TensorBoard (None when the run only reads: `predict`).
    uses: with data.allow_missing, the patients each stage takes (`partial.method_uses`, the
      keyword arguments of `partial.stage_patients`); None: every stage takes its whole split.
    stop: returns True once SIGTERM/SIGINT asked the run to stop.
    eval_step: the jitted evaluation step (one compilation per bag shape).
  """
  config: ml_collections.ConfigDict
  workdir: str
  cohort: cohort_lib.Cohort
  writer: loop.MetricsWriter | None = None
  uses: dict[str, Any] | None = None
  stop: Callable[[], bool] = lambda: False
  eval_step: Callable = dataclasses.field(default_factory=steps.make_eval_step)

  @property
  def num_classes(self) -> int:
    """Outputs of the head: classes, or the survival head's (`survival.num_outputs`; the config's
    task: `predict` loads a survival run's new patients as a classification cohort)."""
    return survival.num_outputs(self.config.get("task", "classification"),
                                self.config.get("survival"), self.cohort.num_classes)

  def patients(self, split: str, stage: str) -> np.ndarray | str:
    """The patients of `split` that `stage` uses (`train.partial`): the split itself unless
    data.allow_missing (`uses`)."""
    if self.uses is None:
      return split
    return partial.stage_patients(self.cohort, split, stage, **self.uses)

  def stage_key(self, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), STAGES.index(name))

  def build(self, model_cfg: ml_collections.ConfigDict | None = None):
    """The method's model on the cohort's gene list (`methods.build`; `model_cfg`: the `model`
    block it is built from, default the run's)."""
    return methods.build(self.config, self.cohort.gene_names, self.num_classes, self.config.seed,
                         model_cfg)

  def gene_classifier(self):
    """The supervised GroupMSA of the run (gene encoder + head: `gene_pretrain`)."""
    return build.build_gene_classifier(self.config.model, self.cohort.num_genes, self.num_classes,
                                       self.config.seed)


def open_run(config: ml_collections.ConfigDict, workdir: str,
             cohort: cohort_lib.Cohort | None = None,
             stop: Callable[[], bool] = lambda: False) -> Run:
  """The run that trains in `workdir`: stores the gene list once and opens the metrics writer.
  Without `cohort`, it is loaded and checked (`preflight.preflight`)."""
  if cohort is None:
    cohort = preflight.preflight(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.save_normalizer(cohort.normalizer, workdir)
  uses = None
  if config.data.get("allow_missing", False):
    uses = partial.method_uses(methods.get(config.method),
                               preflight.abstract_model(config, cohort))
  return Run(config, workdir, cohort, loop.MetricsWriter(workdir), uses, stop)


TRAINING = {"gene_pretrain": gene_stage.gene_pretrain, "pretrain": pretrain_stage.pretrain,
            "finetune": finetune_stage.finetune}


def run_stages(run: Run) -> dict[str, Any]:
  """`config.stages` in order, then the report; the run's results (without the config)."""
  results: dict[str, Any] = {"stages": {}}
  evaluation = None
  for k, name in enumerate(run.config.stages, 1):
    if run.stop():
      raise KeyboardInterrupt
    logging.info("Stage %d/%d: %s", k, len(run.config.stages), name)
    if name in TRAINING:
      results["stages"][name] = TRAINING[name](run)
    elif name == "test":
      evaluation = evaluate.test(run)
      results.update(evaluation.results)
    else:
      results["probe"] = probe.probe(run)
  if evaluation is not None:
    results["report"] = report_stage.write_report(run, evaluation, results)
    logging.info("Report: %s", results["report"])
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop=lambda: False, allow_config_change: bool = False) -> dict[str, Any]:
  """The run a config asks for: every fold of a cross-validation in `<workdir>/fold_<i>` and
  the summary over them (`folds.every_fold`, when `folds.num_folds(config.data)` > 0), or the one
  split (`train_split`)."""
  def split(cfg, where):
    return train_split(cfg, where, stop, allow_config_change)
  if folds.num_folds(config.data):
    return folds.every_fold(config, workdir, split)
  return split(config, workdir)


def train_split(config: ml_collections.ConfigDict, workdir: str,
                stop=lambda: False, allow_config_change: bool = False) -> dict[str, Any]:
  """Runs `config.stages` in order on one split and writes `results.json` (and the report) to
  `workdir`.

  The config and every input are checked first (`preflight.preflight`: DataError listing every
  problem), then the workdir is locked for this run (`workdir.lock`: another run on it is
  refused) and a config that differs from the one the workdir was made with is refused unless
  `allow_config_change`; the seed, config, library versions and input checksums go to `provenance.json`.
  """
  cohort = preflight.preflight(config, workdir)  # reads only: nothing is created on a bad input
  with workdir_lib.lock(workdir):
    changes = workdir_lib.check_config(workdir, config, allow_config_change)
    run = open_run(config, workdir, cohort, stop)
    if run.uses is not None:
      logging.info("Patients each stage uses (data.allow_missing):\n%s",
                   partial.usage_table(run.cohort, config.stages, **run.uses))
    writer = jax.process_index() == 0  # of a job of several processes, process 0 writes
    if writer:
      provenance.record(workdir, config, run.cohort)
      workdir_lib.record_config(workdir, config, changes)
    try:
      results = run_stages(run)
    finally:
      run.writer.close()
    results.update(method=config.method, seed=config.seed, config=workdir_lib.as_json(config),
                   versions=provenance.library_versions(), num_classes=run.num_classes,
                   num_genes=run.cohort.num_genes, class_names=list(run.cohort.class_names),
                   splits={k: int(v.size) for k, v in run.cohort.splits.items()})
    history = workdir_lib.change_history(workdir)  # the workdir's earlier configs, if any
    if history:
      results["config_changes"] = history
    if writer:
      provenance.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
