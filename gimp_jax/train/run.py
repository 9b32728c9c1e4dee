"""The paper's stages from one call: gene_pretrain -> pretrain -> finetune -> test (-> probe,
TANGLE's few-shot protocol on the frozen slide encoder, `train.probe`).

Each stage reads the previous stage's checkpoint from the workdir; finished stages are skipped and
an interrupted stage resumes from its last checkpoint.
"""

import json
import os
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gimp_jax import methods
from gimp_jax import metrics as metrics_lib
from gimp_jax import parallel
from gimp_jax import provenance
from gimp_jax import reference
from gimp_jax import report as report_lib
from gimp_jax import validate
from gimp_jax import workdir as workdir_lib
from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.configs.checks import STAGES
from gimp_jax.errors import DataError
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import pipeline
from gimp_jax.models import build
from gimp_jax.objectives import supervised
from gimp_jax.objectives import survival
from gimp_jax.train import loop, optim, partial, probe, steps, transfer
from gimp_jax.train.state import TrainState, create_state

_STAGE_IDS = {name: i for i, name in enumerate(STAGES)}


class Run:
  """What the stages share: config, workdir, cohort, method, metrics writer, root key."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, stop=lambda: False,
               cohort: cohort_lib.Cohort | None = None):
    self.config = config
    self.workdir = workdir
    self.stop = stop
    os.makedirs(workdir, exist_ok=True)
    self.method = methods.get(config.method)
    self.cohort = load_cohort(config, workdir) if cohort is None else cohort
    save_normalizer(self.cohort, workdir)
    self.num_genes = self.cohort.num_genes
    self.num_classes = survival.num_outputs(config, self.cohort.num_classes)  # head outputs
    self.key = jax.random.key(config.seed)
    self.writer = loop.MetricsWriter(workdir)
    self.results: dict[str, Any] = {"stages": {}}
    self.eval_step = steps.make_eval_step()  # one compilation per bag shape

  def patients(self, split: str, stage: str) -> np.ndarray | str:
    """The patients of `split` that `stage` uses (`train.partial`): the split itself unless
    data.allow_missing."""
    if not self.config.data.get("allow_missing", False):
      return split
    model = nnx.eval_shape(self.build)  # its structure only: is there a missing-genes token?
    return partial.stage_patients(
        self.cohort, split, stage, pretrain_uses=getattr(self.method, "pretrain_uses", "pairs"),
        model_needs_genes=partial.needs_genes(model))

  def stage_key(self, name: str) -> jax.Array:
    return jax.random.fold_in(self.key, _STAGE_IDS[name])

  def build(self, seed_offset: int = 0):
    return self.method.build(self.config, self.cohort.gene_names, self.num_classes,
                             self.config.seed + seed_offset)

  def mesh_for(self, batch_size: int):
    """The device mesh when there are several devices and the batch splits evenly over them."""
    if jax.device_count() == 1:
      return None
    mesh = parallel.mesh_from_config(self.config)
    if batch_size % mesh.size:
      logging.warning("Batch size %d does not split over %d devices: this stage runs on one "
                      "device.", batch_size, mesh.size)
      return None
    return mesh

  def fit(self, spec: loop.StageSpec, state: TrainState,
          batch_size: int = 1) -> tuple[TrainState, dict]:
    state, meta = loop.fit(spec, state, workdir=self.workdir, key=self.stage_key(spec.name),
                           writer=self.writer, stop=self.stop,
                           mesh=self.mesh_for(batch_size), parallel_cfg=self.config.parallel)
    self.results["stages"][spec.name] = {
        "steps": int(state.step), "wall_s": round(meta.get("wall_s", 0.0), 2),
        "final_metrics": meta.get("last_metrics", {}), "history": meta.get("history", []),
        **loop.step_time_summary(stage_records(self.workdir, spec.name))}
    return state, meta


def load_cohort(config, workdir: str) -> cohort_lib.Cohort:
  """The cohort; the gene list fitted on the first run (or `init_from`'s) is reused."""
  normalizer, _ = validate.stored_normalizer(config, workdir)
  spec = cohort_lib.CohortSpec.from_config(config)
  if config.data.source == "tfds":
    from gimp_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
    return tfds_source.load_cohort_from_tfds(config.data.tfds_dir, spec, normalizer)
  return cohort_lib.load_cohort(spec, normalizer)


def save_normalizer(cohort: cohort_lib.Cohort, workdir: str) -> None:
  """Stores the run's gene list once (temporary file + rename: a kill leaves no half file)."""
  path = os.path.join(workdir, validate.NORMALIZER)
  if not os.path.exists(path):
    tmp = os.path.join(workdir, f"normalizer.tmp-{os.getpid()}.npz")
    try:
      cohort.normalizer.save(tmp)
      os.replace(tmp, path)
    finally:  # a full disk: no half temporary file left behind
      if os.path.exists(tmp):
        os.remove(tmp)


def _train_state(model, cfg_optim, *, steps_per_epoch: int, epochs: int, frozen: str):
  params = create_state(model).params
  tx = optim.make_optimizer(cfg_optim, params, total_steps=steps_per_epoch * epochs,
                            steps_per_epoch=steps_per_epoch, frozen_regex=frozen)
  return create_state(model, tx)


def _frozen_regex(regex: str, params) -> str:
  """The config's freezing regex, or '' when the model has nothing it could match."""
  if regex and not any(jax.tree_util.tree_leaves(optim.frozen_mask(params, regex))):
    logging.info("Freezing regex %r matches nothing in this model: nothing is frozen.", regex)
    return ""
  return regex


def restore_params(workdir: str, stage: str, model) -> Any | None:
  """The parameters of `stage`'s latest checkpoint in `workdir`, restored into `model`'s shapes;
  None when there is none (no folder is created)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints", stage)):
    return None
  ckpt = StageCheckpoints(workdir, stage)
  try:
    return ckpt.restore_params(create_state(model).params)
  finally:
    ckpt.close()


# ----------------------------------------------------------------------------- stages


COLLAPSE_SPREAD = 0.05  # relative spread of CLS_img below which the slide token has collapsed


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


def task_metric(run: Run, select_metric: str) -> str:
  """The stage's selection metric: the config's, or the C-index for survival."""
  return "val_c_index" if run.cohort.task == "survival" else select_metric


def split_scores(run: Run, pred: dict) -> dict:
  """The task's metrics of `predict`'s output for one split."""
  if run.cohort.task == "survival":
    return metrics_lib.survival_metrics(pred["time"], pred["censorship"], pred["risk"])
  return metrics_lib.classification_metrics(pred["label"], pred["probs"])


def _scalars(scores: dict) -> dict:
  """The scalar entries of a scores dict, NaN as 0 (for metrics.jsonl and TensorBoard)."""
  return {k: float(np.nan_to_num(v)) for k, v in scores.items()
          if isinstance(v, (int, float)) and k != "num_examples"}


def keep_best(run: Run, stage: str, evaluate, select_metric: str, patience: int):
  """Validation after every epoch: the best epoch is saved to `<stage>_best`, and the stage stops
  after `patience` epochs without a better score (0 = never).

  Args:
    evaluate: state -> the task's metrics of the validation split (`split_scores`).

  Returns:
    (the best-checkpoint manager, to close; the on_epoch_end callback of the stage).
  """
  best = StageCheckpoints(run.workdir, f"{stage}_best", max_to_keep=1)

  def on_epoch_end(state, epoch, meta):
    scores = evaluate(state)
    key = selection_key(scores, select_metric)
    shown = {k: v for k, v in _scalars(scores).items() if k in ("accuracy", "auc", "c_index")}
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


def gene_pretrain(run: Run) -> None:
  """Supervised pre-training of the gene encoder on patient labels (then frozen): the best
  validation epoch is kept, with early stopping."""
  cfg = run.config
  model = build.build_gene_classifier(cfg, run.num_genes, run.num_classes, cfg.seed)
  train = run.patients("train", "gene_pretrain")
  n_train = run.cohort.split(train).size
  per_epoch = pipeline.num_batches(n_train, cfg.gene_pretrain.batch_size, False)
  state = _train_state(model, cfg.optim, steps_per_epoch=per_epoch,
                       epochs=cfg.gene_pretrain.epochs, frozen="")
  best, on_epoch_end = keep_best(
      run, "gene_pretrain",
      lambda s: gene_only_scores(run, s.model(train=False), run.patients("val", "gene_pretrain")),
      task_metric(run, cfg.gene_pretrain.select_metric), cfg.gene_pretrain.patience)
  spec = loop.StageSpec(
      name="gene_pretrain", loss_fn=supervised.gene_loss(cfg),
      batches=lambda e, s: pipeline.gene_batches(
          run.cohort, train, batch_size=cfg.gene_pretrain.batch_size, seed=cfg.seed, epoch=e,
          start_batch=s, prefetch=cfg.data.prefetch),
      steps_per_epoch=per_epoch, epochs=cfg.gene_pretrain.epochs,
      checkpoint_every=cfg.pretrain.checkpoint_every, on_epoch_end=on_epoch_end)
  try:
    run.fit(spec, state)
  finally:
    best.close()


@jax.jit
def _gene_logits(model, genes: jax.Array) -> jax.Array:
  return model(genes)


def gene_only_scores(run: Run, model, split: str | np.ndarray) -> dict:
  """The task's metrics of the supervised GroupMSA (genes only) on a split."""
  idx = run.cohort.split(split)
  logits = _gene_logits(model, jnp.asarray(run.cohort.genes[idx]))
  pred = {"label": run.cohort.labels[idx], "probs": np.asarray(jax.nn.softmax(logits, -1))}
  if run.cohort.task == "survival":
    pred.update(time=run.cohort.times[idx], censorship=run.cohort.censorship[idx],
                risk=survival.risk(np.asarray(logits), run.config.survival.loss))
  return split_scores(run, pred)


def _initial_params(run: Run, model, stage: str):
  """Parameters a stage starts from: the previous stage of this run, else `init_from`."""
  params = create_state(model).params
  cfg = run.config
  has_genes = getattr(model, "gene_encoder", None) is not None
  sources = []
  if stage == "finetune" and "pretrain" in cfg.stages:
    sources.append((run.workdir, "pretrain", "model"))
  elif has_genes and "gene_pretrain" in cfg.stages:
    sources.append((run.workdir, "gene_pretrain", "genes"))
  if not sources and cfg.init_from:
    sources.append((cfg.init_from, "finetune" if stage == "finetune" else "pretrain", "model"))
  for workdir, source, kind in sources:
    if kind == "genes":
      gene_model = build.build_gene_classifier(cfg, run.num_genes, run.num_classes, cfg.seed)
      src = restore_params(workdir, f"{source}_best", gene_model)
      if src is None:
        raise FileNotFoundError(f"{stage}: no {source} checkpoint in {workdir}")
      params, _ = transfer.gene_encoder_into_gimp(src, params)
    else:
      src = restore_params(workdir, source, run.build())
      if src is None:
        raise FileNotFoundError(f"{stage}: no {source} checkpoint in {workdir}")
      params, _ = transfer.pretrained_into_finetune(src, params)
  return params


def pretrain_stage(run: Run) -> tuple[loop.StageSpec, TrainState, int]:
  """The pre-training stage as the CLI runs it: (spec, initial state, batch size)."""
  cfg = run.config
  if run.method.pretrain_loss is None:
    raise ValueError(f"Method {cfg.method!r} has no pre-training stage; remove it from stages.")
  model = run.method.build(build.pretrain_config(cfg), run.cohort.gene_names, run.num_classes,
                           cfg.seed)
  params = _initial_params(run, model, "pretrain")
  train = run.patients("train", "pretrain")
  n_train = run.cohort.split(train).size
  bsz = min(cfg.pretrain.batch_size, n_train)
  per_epoch = pipeline.num_batches(n_train, bsz, True)
  frozen = _frozen_regex(cfg.pretrain.frozen, params)
  state = _train_state(model, cfg.optim, steps_per_epoch=per_epoch, epochs=cfg.pretrain.epochs,
                       frozen=frozen)
  state = state.replace(params=params)
  spec = loop.StageSpec(
      name="pretrain", loss_fn=run.method.pretrain_loss(cfg),
      batches=lambda e, s: pipeline.pretrain_batches(
          run.cohort, train, batch_size=bsz, window=cfg.pretrain.window,
          ratio=cfg.pretrain.mask_ratio, seed=cfg.seed, epoch=e, start_batch=s,
          prefetch=cfg.data.prefetch, sampling=cfg.pretrain.get("sampling", "window")),
      steps_per_epoch=per_epoch, epochs=cfg.pretrain.epochs,
      checkpoint_every=cfg.pretrain.checkpoint_every, frozen=frozen,
      on_epoch_end=lambda state, epoch, meta: diagnose_pretrain(cfg.pretrain, epoch, meta))
  return spec, state, bsz


def pretrain(run: Run) -> None:
  """GiMP pre-training (or the method's objective) on B windows of L patches."""
  spec, state, bsz = pretrain_stage(run)
  run.fit(spec, state, batch_size=bsz)  # full batches (drop_remainder): data parallel


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
    logging.warning(
        "pretrain epoch %d: L_tri was inactive for every anchor of the epoch: the gene half alone "
        "separates the classes (gene gap %.3g, squared distance) against a margin of %g, so the "
        "image branch gets no triplet gradient. Set pretrain.triplet_normalize=True, raise "
        "pretrain.margin, or add the image-only term (pretrain.triplet_on='pat+img').",
        epoch, means.get("gene_gap", float("nan")), cfg.margin)
  if means.get("img_spread", 1.0) < COLLAPSE_SPREAD and "collapse" not in warned:
    warned.append("collapse")
    logging.warning(
        "pretrain epoch %d: CLS_img has collapsed (relative spread %.3g < %g: every slide gets "
        "nearly the same token), so fine-tuning starts from a constant slide embedding. Set "
        "pretrain.img_variance_weight (e.g. 1.0), add pretrain.triplet_on='pat+img', or lower "
        "pretrain.rec_weight.", epoch, means["img_spread"], COLLAPSE_SPREAD)
  return {"warned": warned}


def check_stop(run: Run) -> None:
  """Raises KeyboardInterrupt when a stop was requested (SIGTERM/SIGINT): for the stages that
  save nothing (test, report), which the same command simply runs again."""
  if run.stop():
    logging.warning("Stopping on request.")
    raise KeyboardInterrupt


def predict(run: Run, state: TrainState, split: str | np.ndarray, *, with_attention: int = 0,
            stoppable: bool = False, cohort: cohort_lib.Cohort | None = None) -> dict:
  """Whole-bag predictions of a split (or of patient indices) of `cohort` (default: the run's):
  patient_id, label, logits [N, C], probs [N, C], embedding [N, E]; for survival also risk [N],
  time [N] and censorship [N].

  With `stoppable`, a stop request (`check_stop`) ends it between batches."""
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
    out["logits"].append(np.asarray(res["logits"]))
    out["probs"].append(np.asarray(res["probs"]))
    out["embedding"].append(np.asarray(res["embedding"]))
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


def finetune(run: Run) -> None:
  """MLP head on CLS_pat over whole bags; validation after every epoch, the best epoch kept."""
  cfg = run.config
  model = run.build()
  params = _initial_params(run, model, "finetune")
  train = run.patients("train", "finetune")
  n_train = run.cohort.split(train).size
  per_epoch = pipeline.num_batches(n_train, cfg.finetune.batch_size, False)
  frozen = _frozen_regex(cfg.finetune.frozen, params)
  state = _train_state(model, cfg.optim, steps_per_epoch=per_epoch, epochs=cfg.finetune.epochs,
                       frozen=frozen)
  state = state.replace(params=params)

  best, on_epoch_end = keep_best(
      run, "finetune",
      lambda state: split_scores(run, predict(run, state, run.patients("val", "finetune"))),
      task_metric(run, cfg.finetune.select_metric),
                                 cfg.finetune.patience)

  spec = loop.StageSpec(
      name="finetune", loss_fn=run.method.finetune_loss(cfg),
      batches=lambda e, s: pipeline.bag_batches(
          run.cohort, train, batch_size=cfg.finetune.batch_size, seed=cfg.seed, epoch=e,
          shuffle=True, bucket_sizes=cfg.data.bucket_sizes, start_batch=s,
          prefetch=cfg.data.prefetch),
      steps_per_epoch=per_epoch, epochs=cfg.finetune.epochs,
      checkpoint_every=cfg.finetune.checkpoint_every, on_epoch_end=on_epoch_end, frozen=frozen)
  try:
    run.fit(spec, state)
  finally:
    best.close()


def test(run: Run) -> None:
  """Evaluates the best fine-tuned model on val and test; writes the report."""
  model = run.build()
  state = create_state(model)
  params = restore_params(run.workdir, "finetune_best", model)
  if params is None:
    raise FileNotFoundError(f"test: no fine-tuned checkpoint in {run.workdir}; run finetune first.")
  state = state.replace(params=params)
  predictions = {}
  surv = run.cohort.task == "survival"
  keys = ("c_index",) if surv else ("accuracy", "auc", "f1")
  for split in ("val", "test"):
    predictions[split] = predict(run, state, run.patients(split, "test"), stoppable=True)
    scores = split_scores(run, predictions[split])
    for k in keys:
      run.results[f"{split}_{k}"] = float(scores[k])
    run.results[f"{split}_metrics"] = scores
  run.results["reference"] = reference.linear_reference(run.cohort, {
      split: run.cohort.split(run.patients(split, "finetune" if split == "train" else "test"))
      for split in ("train", "val", "test")})  # the statistician's row, same patients
  run.results.update(reference.scalars(run.results["reference"], run.results))
  if surv:  # the report splits the test cases at the median training risk
    run.train_risk = predict(run, state, "train", stoppable=True)["risk"]
  run.predictions = predictions
  if getattr(model, "missing_genes", None) is not None:  # the same model from the slides alone
    slides = partial.slide_only(run.cohort)
    for split in ("val", "test"):
      out = predict(run, state, run.patients(split, "test"), cohort=slides)
      scores = split_scores(run, out)
      for k in keys:
        run.results[f"{split}_slide_only_{k}"] = float(scores[k])
  if "gene_pretrain" in run.config.stages:  # the genes-only baseline of the same run
    gene_model = build.build_gene_classifier(run.config, run.num_genes, run.num_classes,
                                             run.config.seed)
    params = restore_params(run.workdir, "gene_pretrain_best", gene_model)
    model = create_state(gene_model).replace(params=params).model(train=False)
    for split in ("val", "test"):
      run.results[f"gene_only_{split}_{keys[0]}"] = float(
          gene_only_scores(run, model, run.patients(split, "gene_pretrain"))[keys[0]])


def cls_attention(run: Run, state: TrainState, index: int) -> tuple[np.ndarray, np.ndarray]:
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


def write_report(run: Run) -> str:
  """report/: numbers, ROC and confusion PNGs, t-SNE of CLS_pat after pre-training, heatmaps."""
  cfg = run.config
  tsne = None
  model = run.build()
  if cfg.report.tsne and "pretrain" in cfg.stages:
    params = restore_params(run.workdir, "pretrain", model)
    train = predict(run, create_state(model).replace(params=params),
                    run.patients("train", "finetune"), stoppable=True)
    tsne = (train["embedding"], train["label"])
  heatmaps = []
  best = create_state(model).replace(params=restore_params(run.workdir, "finetune_best", model))
  if hasattr(model, "aggregator"):
    for index in run.cohort.split("test")[:cfg.report.heatmaps]:
      check_stop(run)
      coords, attention = cls_attention(run, best, int(index))
      heatmaps.append((run.cohort.patients[index].patient_id, coords, attention))
  history = {name: stage_records(run.workdir, name) for name in run.results["stages"]}
  val_history = {name: [(epoch, scores) for epoch, (_, scores) in
                        enumerate(stage_records(run.workdir, f"{name}_val"))]
                 for name in run.results["stages"]}
  check_stop(run)
  diagnostics = None
  if "pretrain" in cfg.stages:
    diagnostics = (stage_records(run.workdir, "pretrain"), cfg.pretrain.margin, COLLAPSE_SPREAD)
  survival_cutoff = None
  if run.cohort.task == "survival":
    survival_cutoff = float(np.median(run.train_risk))
  return report_lib.write_report(
      os.path.join(run.workdir, "report"), results=run.results,
      class_names=list(run.cohort.class_names), predictions=run.predictions, tsne=tsne,
      heatmaps=heatmaps, history=history, val_history=val_history, diagnostics=diagnostics,
      seed=cfg.seed, survival_cutoff=survival_cutoff)


def stage_records(workdir: str, stage: str) -> list[tuple[int, dict]]:
  """[(step, metrics)] of a stage from metrics.jsonl, the last record of each step (a resumed run
  repeats the steps after its checkpoint)."""
  records = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row.pop("stage") == stage:
        records[row.pop("step")] = row
  return sorted(records.items())


STAGE_FNS = {"gene_pretrain": gene_pretrain, "pretrain": pretrain, "finetune": finetune,
             "test": test, "probe": probe.probe}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop=lambda: False, allow_config_change: bool = False) -> dict[str, Any]:
  """Runs `config.stages` in order and writes `results.json` (and the report) to `workdir`.

  The config is checked first, then the workdir is locked for this run (`workdir.lock`: another
  run on it is refused), then a config that differs from the one the workdir was made with is
  refused unless `allow_config_change`; then every input is checked (`validate.preflight`:
  DataError listing every problem); the seed, config, library versions and input checksums go to
  `provenance.json`.
  """
  problems = validate.config_problems(config)
  if problems:
    raise DataError("\n".join(problems))
  with workdir_lib.lock(workdir):
    changes = workdir_lib.check_config(workdir, config, allow_config_change)
    run = Run(config, workdir, stop, cohort=validate.preflight(config, workdir))
    if config.data.get("allow_missing", False):
      logging.info("Patients each stage uses (data.allow_missing):\n%s",
                   validate.usage(config, run.cohort))
    provenance.record(workdir, config, run.cohort)
    workdir_lib.record_config(workdir, config, changes)
    try:
      for name in config.stages:
        if stop():
          raise KeyboardInterrupt
        logging.info("Stage %s", name)
        STAGE_FNS[name](run)
      if "test" in config.stages:
        run.results["report"] = write_report(run)
        logging.info("Report: %s", run.results["report"])
    finally:
      run.writer.close()
    results = dict(run.results, method=config.method, seed=config.seed,
                   config=workdir_lib.as_json(config), versions=provenance.library_versions(),
                   num_classes=run.num_classes, num_genes=run.num_genes,
                   class_names=list(run.cohort.class_names),
                   splits={k: int(v.size) for k, v in run.cohort.splits.items()})
    history = workdir_lib.change_history(workdir)  # the workdir's earlier configs, if any
    if history:
      results["config_changes"] = history
    provenance.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
