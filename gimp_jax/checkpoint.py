"""Checkpoints through orbax: one CheckpointManager per stage.

Each checkpoint holds the train state's arrays (params, optimizer state, step) and a JSON `meta`
dict (epoch, next batch, best validation metric, finished flag, config). orbax writes into a
temporary directory and renames it when complete, so a half-written checkpoint is never picked up;
leftover temporary directories are removed when the stage's manager opens for writing (one opened
`read_only` touches nothing). A finished step can still be damaged (a kill while a step is being
deleted, data lost in a power cut): reads fall back to the newest step that reads back and move the
damaged ones to `<stage>.damaged/` (read-only: leave them in place).
The RNG needs no saving: every step's key is `fold_in(stage_key, step)`.
"""

import os
import time
from typing import Any, Callable, TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from gimp_jax import parallel
from gimp_jax.errors import DataError

T = TypeVar("T")
# A train state (gimp_jax.train.state.TrainState): a pytree with step, params and opt_state and
# a `replace` method. Not imported, so the checkpoint layer does not depend on the trainer.
State = TypeVar("State")
MAX_TO_KEEP = 2  # checkpoints kept per stage


def _abstract(tree):
  """Shapes, dtypes and shardings to read a checkpoint into; in a job of several processes a
  host-local leaf (a freshly built model's) is read replicated over every device, as orbax reads
  only global arrays there."""
  def one(x):
    out = ocp.utils.to_shape_dtype_struct(x)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.sharding is None:
      return out
    return jax.ShapeDtypeStruct(out.shape, out.dtype,
                                sharding=parallel.global_sharding(out.sharding))
  return jax.tree_util.tree_map(one, tree)


class StageCheckpoints:
  """Save/restore of one stage's train state under `workdir/checkpoints/<name>`."""

  def __init__(self, workdir: str, name: str, max_to_keep: int = MAX_TO_KEEP,
               read_only: bool = False):
    """Opens the stage's checkpoints; `read_only` (a workdir that is only read: `predict`,
    `init_from`) creates, cleans and moves nothing: another run may own the folder."""
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints", name))
    self.read_only = read_only
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(  # (orbax's own read_only warns on every open)
            max_to_keep=max_to_keep, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False),
        item_names=("params", "opt", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: State, meta: dict[str, Any]) -> None:
    """Saves (synchronously) at the state's step, replacing a checkpoint of the same step."""
    if self.read_only:
      raise RuntimeError(f"{self.directory}: opened read-only, nothing is saved")
    step = int(state.step)
    latest = self.manager.latest_step()
    if latest is not None and step < latest:  # orbax would skip the save without a word
      raise RuntimeError(f"{self.directory}: step {step} is older than the latest checkpoint "
                         f"(step {latest})")
    if step == latest:
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step}),
        meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def _read_newest(self, read: Callable[[int], T], step: int | None) -> T | None:
    """`read(step)`, by default at the newest step that reads back; None if there is no step.

    A step that fails while an older one reads back is damaged: it is moved to
    `<directory>.damaged/` with a warning (read-only: left in place). When no step reads back
    (e.g. the config no longer builds the model that was saved), nothing is moved and DataError
    names the newest failure.
    """
    if step is not None:
      return read(step)
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for s in steps:
      try:
        out = read(s)
      except Exception as e:  # truncated or missing files: orbax, tensorstore and JSON errors
        failures.append((s, e))
        continue
      for bad, e in failures:
        self._set_aside(bad, e)
      return out
    if failures:
      s, e = failures[0]
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise DataError(f"{self.directory}: step {s}: no checkpoint of this stage reads back "
                      f"({type(e).__name__}: {first}); was the config changed? Use a new workdir, "
                      "or move these checkpoints away to restart the stage") from e
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves a damaged step out of the manager's view (kept for inspection); read-only: warns."""
    if self.read_only:
      logging.warning("%s: step %d is damaged (%s); using an older step.", self.directory, step,
                      type(error).__name__)
      return
    target = os.path.join(f"{self.directory}.damaged", f"{step}-{time.time_ns()}")
    if jax.process_index() == 0:  # of a job of several processes, process 0 moves it
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:  # the others list the folder again once it is moved
      multihost_utils.sync_global_devices(f"{self.directory}: step {step} set aside")
    self.manager.reload()
    logging.warning("%s: step %d is damaged (%s: %s); moved to %s, using an older step.",
                    self.directory, step, type(error).__name__,
                    (str(error).strip().splitlines() or [""])[0][:200], target)

  def meta(self, step: int | None = None) -> dict[str, Any] | None:
    """The JSON meta of a checkpoint (the newest readable by default), None if there is none."""
    return self._read_newest(lambda s: self.manager.restore(s, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"], step)

  def restore(self, state: State, step: int | None = None
              ) -> tuple[State, dict[str, Any]] | None:
    """Restores into the structure of `state` (newest readable step); None if there is none."""
    def read(s):
      out = self.manager.restore(s, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(state.params)),
          opt=ocp.args.StandardRestore(_abstract({"opt_state": state.opt_state,
                                                  "step": state.step})),
          meta=ocp.args.JsonRestore()))
      return state.replace(params=out["params"], opt_state=out["opt"]["opt_state"],
                           step=out["opt"]["step"]), out["meta"]
    return self._read_newest(read, step)

  def restore_params(self, params, step: int | None = None):
    """Only the parameters (into the structure of `params`); None if there is no checkpoint."""
    return self._read_newest(lambda s: self.manager.restore(s, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params))))["params"], step)

  def close(self) -> None:
    self.manager.close()
