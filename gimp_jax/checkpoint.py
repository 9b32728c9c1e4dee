"""Checkpoints through orbax: one CheckpointManager per stage.

Each checkpoint holds the train state's arrays (params, optimizer state, step) and a JSON `meta`
dict (epoch, next batch, best validation metric, finished flag, config). orbax writes into a
temporary directory and renames it when complete, so a half-written checkpoint is never picked up.
The RNG needs no saving: every step's key is `fold_in(stage_key, step)`.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from gimp_jax.train.state import TrainState


def _abstract(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class StageCheckpoints:
  """Save/restore of one stage's train state under `workdir/checkpoints/<name>`."""

  def __init__(self, workdir: str, name: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints", name))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=("params", "opt", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Saves (synchronously) at the state's step, replacing a checkpoint of the same step."""
    step = int(state.step)
    if step in self.manager.all_steps():
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step}),
        meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def meta(self, step: int | None = None) -> dict[str, Any] | None:
    """The JSON meta of a checkpoint (the latest by default), None if there is none."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, state: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]] | None:
    """Restores into the structure of `state`; None if there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(state.params)),
        opt=ocp.args.StandardRestore(_abstract({"opt_state": state.opt_state, "step": state.step})),
        meta=ocp.args.JsonRestore()))
    return state.replace(params=out["params"], opt_state=out["opt"]["opt_state"],
                         step=out["opt"]["step"]), out["meta"]

  def restore_params(self, params, step: int | None = None):
    """Only the parameters (into the structure of `params`); None if there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params))))
    return out["params"]

  def close(self) -> None:
    self.manager.close()
