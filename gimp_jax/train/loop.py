"""The training loop shared by every stage: resumable, logged, with progress and ETA
(`train.progress`)."""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from gimp_jax import parallel
from gimp_jax.losses import LossFn
from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.train import progress
from gimp_jax.train import steps
from gimp_jax.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradients or the parameters became NaN/Inf; the last good checkpoint is kept."""


@jax.jit
def _all_finite(tree) -> jax.Array:
  """True when every leaf of `tree` is free of NaN/Inf."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def batch_patches(batch: dict) -> int | None:
  """Real patches in a host batch: the bags' lengths summed (whole bags), B * L (pre-training
  windows), or None (expression-only batches)."""
  if "num_patches" in batch:
    return int(np.sum(batch["num_patches"]))
  if "patches" in batch:
    return int(np.prod(np.shape(batch["patches"])[:2]))
  return None


def step_time_summary(records: list[tuple[int, dict]]) -> dict[str, float]:
  """{"median_step_s", "median_patches_per_s"} of a stage's metrics records [(step, metrics)]
  (the median skips the compilation of a stage's first step); {} without timed steps."""
  out = {}
  for name in ("step_s", "patches_per_s"):
    values = [r[name] for _, r in records if name in r]
    if values:
      out[f"median_{name}"] = float(np.median(values))
  return out


def to_device(batch: dict) -> dict:
  """The array entries of a host batch as jax arrays (string IDs are dropped)."""
  return {k: jnp.asarray(v) for k, v in batch.items()
          if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def step_timing(wait_s: float, step_s: float, patches: int | None) -> dict[str, float]:
  """The timing record of one training step, written beside its metrics (not averaged into the
  epoch history).

  Args:
    wait_s: seconds the loop waited for the batch (input pipeline stall).
    step_s: wall seconds of the step: placing the batch, the jitted update, reading its metrics
      back (the first step of a stage includes the compilation).
    patches: real patches in the batch (None: no patches).

  Returns:
    {"step_s", "wait_s"} and, with patches, "patches_per_s" = patches / step_s.
  """
  out = {"step_s": step_s, "wait_s": wait_s}
  if patches is not None:
    out["patches_per_s"] = patches / max(step_s, 1e-9)
  return out


class MetricsWriter:
  """Metrics as JSON lines (`metrics.jsonl`) beside TensorBoard event files (`tb/`).

  In a job of several processes only process 0 writes (the others' writers do nothing).

  A resumed stage replays the steps between its checkpoint and the interruption (identically:
  the batches and keys are functions of the step); `resumed(stage)` makes the writer skip the steps
  already recorded, so each step is in metrics.jsonl and TensorBoard once. A line cut short by a
  kill is removed when the file is opened.
  """

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    path = os.path.join(workdir, "metrics.jsonl")
    self._logged: dict[str, int] = {}
    self._skip: dict[str, int] = {}
    self._primary = jax.process_index() == 0
    if not self._primary:
      return
    if os.path.isfile(path):
      with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):  # half a line: a kill mid-write
          f.truncate(data.rfind(b"\n") + 1)
          data = data[:data.rfind(b"\n") + 1]
      for line in data.decode("utf-8").splitlines():
        row = json.loads(line)
        self._logged[row["stage"]] = max(self._logged.get(row["stage"], -1), row["step"])
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def resumed(self, stage: str) -> None:
    """`stage` resumed from a checkpoint: the steps it (and its validation) already recorded are
    not written again."""
    for name in (stage, f"{stage}_val"):
      self._skip[name] = self._logged.get(name, -1)

  def write(self, stage: str, step: int, metrics: dict[str, float]) -> None:
    if not self._primary or step <= self._skip.get(stage, -1):
      return
    self._jsonl.write(json.dumps({"stage": stage, "step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(f"{stage}/{k}", v, step)

  def close(self) -> None:
    if not self._primary:
      return
    self._jsonl.close()
    self._tb.close()


def stage_records(workdir: str, stage: str) -> list[tuple[int, dict]]:
  """[(step, metrics)] of a stage from the `MetricsWriter`'s metrics.jsonl, the last record of
  each step (a resumed run repeats the steps after its checkpoint)."""
  records = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row.pop("stage") == stage:
        records[row.pop("step")] = row
  return sorted(records.items())


@dataclasses.dataclass
class StageSpec:
  """One training stage.

  Attributes:
    name: checkpoint/metrics name of the stage.
    loss_fn: (model, batch) -> (loss, metrics).
    batches: (epoch, start_batch) -> iterator of host batches.
    steps_per_epoch: batches per epoch.
    epochs: epochs to run.
    checkpoint_every: steps between mid-epoch checkpoints.
    on_epoch_end: optional (state, epoch, meta) -> dict merged into the checkpoint meta (e.g.
      validation results and the best-so-far bookkeeping); `meta["history"][-1]` holds the epoch's
      mean training metrics. A returned `stop_early: True` ends the stage after this epoch.
    frozen: regex of the parameters this stage freezes (`steps.make_train_step`).
  """
  name: str
  loss_fn: LossFn
  batches: Callable[[int, int], Iterator[dict]]
  steps_per_epoch: int
  epochs: int
  checkpoint_every: int
  on_epoch_end: Callable[[TrainState, int, dict], dict] | None = None
  frozen: str = ""


def fit(spec: StageSpec, state: TrainState, *, workdir: str, key: jax.Array,
        writer: MetricsWriter, stop: Callable[[], bool] = lambda: False,
        mesh=None, parallel_cfg=None) -> tuple[TrainState, dict[str, Any]]:
  """Runs (or resumes, or skips if finished) a stage; returns the final state and its meta.

  With a `mesh` (gimp_jax.parallel), each batch is split over its devices (replicated when its
  rows do not divide) and the state is replicated (or sharded per `parallel_cfg`); the step
  computes the same loss as on one device.

  The step key is `fold_in(key, step)` and the batches are a pure function of (epoch, position),
  so a resumed stage reproduces the uninterrupted one. Checkpoints are written every
  `checkpoint_every` steps, at each epoch end, and when `stop()` turns true (SIGTERM).

  Raises:
    NonFiniteLossError: a NaN/Inf loss or gradient norm, or NaN/Inf parameters about to be saved
      (nothing is saved from that step on).
  """
  ckpt = StageCheckpoints(workdir, spec.name)
  meta: dict[str, Any] = {"epoch": 0, "batch": 0, "done": False, "history": []}
  if mesh is not None:  # placed first: a checkpoint is read back into the mesh's shardings
    state = parallel.place_state(state, mesh, parallel_cfg)
  restored = ckpt.restore(state)
  if restored is not None:
    state, meta = restored
    writer.resumed(spec.name)
    logging.info("%s: resuming at step %d (epoch %d, batch %d)%s", spec.name, int(state.step),
                 meta["epoch"], meta["batch"], ", already finished" if meta["done"] else "")
  if meta["done"]:
    ckpt.close()
    return state, meta
  step_fn = steps.make_train_step(spec.loss_fn, spec.frozen)
  place = to_device
  if mesh is not None:  # data parallel: batch split over the mesh (or replicated), state on it
    step_fn = parallel.parallelize_step(step_fn, state, mesh, parallel_cfg)

    def place(batch):
      return parallel.place_batch(batch, mesh, parallel_cfg.axis)
  total = spec.epochs * spec.steps_per_epoch
  start_time, wall_before = time.time(), meta.get("wall_s", 0.0)

  def non_finite(what: str, step: int, epoch: int) -> NonFiniteLossError:
    last = ckpt.latest_step()
    kept = ("no checkpoint of this stage was written yet" if last is None
            else f"the last good checkpoint (step {last}) is kept in {ckpt.directory}")
    return NonFiniteLossError(
        f"{spec.name}: {what} at step {step} (epoch {epoch}); training stopped and {kept}. "
        "Check the inputs for extreme values or lower optim.learning_rate.")

  def save():
    if not bool(_all_finite(state.params)):
      raise non_finite("NaN/Inf parameters", int(state.step), meta["epoch"])
    meta["wall_s"] = wall_before + time.time() - start_time
    ckpt.save(state, meta)

  bar = progress.Progress(spec.name, total, int(state.step))
  try:
    for epoch in range(meta["epoch"], spec.epochs):
      if meta.get("stop_early"):
        logging.info("%s: early stop before epoch %d (no better validation score for %s epochs).",
                     spec.name, epoch, meta.get("patience"))
        break
      position = meta["batch"] if epoch == meta["epoch"] else 0
      ready = time.perf_counter()
      for batch in spec.batches(epoch, position):
        bar.before_step()
        begin = time.perf_counter()
        state, metrics = step_fn(state, place(batch), jax.random.fold_in(key, state.step))
        position += 1
        metrics = {k: float(v) for k, v in metrics.items()}  # waits for the step to finish
        timing = step_timing(begin - ready, time.perf_counter() - begin, batch_patches(batch))
        step = int(state.step)
        if not np.isfinite(metrics["loss"]) or not np.isfinite(metrics.get("grad_norm", 0.0)):
          raise non_finite(f"non-finite loss {metrics['loss']} (gradient norm "
                           f"{metrics.get('grad_norm')})", step, epoch)
        writer.write(spec.name, step, {**metrics, **timing})
        bar.update(metrics["loss"], epoch)
        sums = meta.setdefault("epoch_sums", {})
        for k, v in metrics.items():
          sums[k] = sums.get(k, 0.0) + v
        meta.update(epoch=epoch, batch=position, last_metrics=metrics,
                    epoch_steps=meta.get("epoch_steps", 0) + 1)
        if step % spec.checkpoint_every == 0 or stop():
          save()
        if stop():
          logging.warning("%s: stopping on request after step %d (checkpoint saved).",
                          spec.name, step)
          raise KeyboardInterrupt
        ready = time.perf_counter()
      count = max(meta.pop("epoch_steps", 0), 1)
      means = {k: v / count for k, v in meta.pop("epoch_sums", {}).items()}
      meta.update(epoch=epoch + 1, batch=0)
      meta["history"].append({"epoch": epoch, **means})
      logging.info("%s epoch %d: mean loss %.4f over %d steps", spec.name, epoch,
                   means.get("loss", float("nan")), count)
      if spec.on_epoch_end is not None:
        meta.update(spec.on_epoch_end(state, epoch, meta))
      save()
      if stop() and epoch + 1 < spec.epochs:
        logging.warning("%s: stopping on request after epoch %d (checkpoint saved).", spec.name,
                        epoch)
        raise KeyboardInterrupt
    meta["done"] = True
    save()
  finally:
    bar.close()
    ckpt.close()
  return state, meta


def fit_stage(run, spec: StageSpec, state: TrainState,
              batch_size: int = 1) -> tuple[TrainState, dict[str, Any]]:
  """`fit` in a run's workdir (`run`: a `train.run.Run`), data parallel when the batch splits
  over the devices (`parallel.stage_mesh`).

  Returns:
    (the final state, the stage's entry of results.json["stages"]).
  """
  state, meta = fit(spec, state, workdir=run.workdir, key=run.stage_key(spec.name),
                    writer=run.writer, stop=run.stop,
                    mesh=parallel.stage_mesh(run.config.get("parallel"), batch_size),
                    parallel_cfg=run.config.get("parallel"))
  return state, {
      "steps": int(state.step), "wall_s": round(meta.get("wall_s", 0.0), 2),
      "final_metrics": meta.get("last_metrics", {}), "history": meta.get("history", []),
      **step_time_summary(stage_records(run.workdir, spec.name))}
