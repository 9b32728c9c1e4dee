"""The whole train state as one pytree."""

import os
import re
import zlib

from typing import Any

from absl import logging
import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.train import optim
from gimp_jax.train.optim import flat_paths, path_str


class TrainState(flax.struct.PyTreeNode):
  """params and optimizer state are the pytrees that change; the rest is static.

  Attributes:
    step: optimizer steps taken (int32 scalar).
    params: nnx.State of the model's nnx.Param variables (float32).
    opt_state: optax state (no moments for frozen leaves).
    rest: the model's other variables (dropout RNG streams), reseeded every step; not saved.
    graphdef: the model's structure (static).
    tx: the optimizer (static).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rest: Any
  graphdef: Any = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def model(self, key: jax.Array | None = None, *, train: bool, frozen: str = "") -> nnx.Module:
    """The module with these parameters, dropout reseeded from `key`, in train or eval mode.

    In train mode, every sub-module whose parameters all match the `frozen` path regex runs in
    eval mode (no dropout): a frozen encoder is a fixed function of its input.
    """
    rest = self.rest if key is None else reseed(self.rest, key)
    model = nnx.merge(self.graphdef, self.params, rest)
    model.train() if train else model.eval()
    if train:
      for sub in frozen_modules(model, frozen):
        sub.eval()
    return model

  def apply_gradients(self, grads) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def frozen_modules(model: nnx.Module, frozen_regex: str) -> list[nnx.Module]:
  """The sub-modules of `model` that hold parameters, all of them matching `frozen_regex`."""
  if not frozen_regex:
    return []
  paths = list(flat_paths(nnx.state(model, nnx.Param)))
  out = []
  for path, node in nnx.iter_graph(model):
    if not path or not isinstance(node, nnx.Module):
      continue
    prefix = "/".join(str(p) for p in path) + "/"
    under = [p for p in paths if p.startswith(prefix)]
    if under and all(re.search(frozen_regex, p) for p in under):
      out.append(node)
  return out


def reseed(rest, key: jax.Array):
  """Pure reseeding of the RNG streams in `rest`: each stream's key becomes
  fold_in(key, crc32(its path)) and its counter 0 (fresh variables, safe inside any trace)."""
  def one(path, leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.fold_in(key, zlib.crc32(path_str(path).encode()))
    return jnp.zeros_like(leaf)
  return jax.tree_util.tree_map_with_path(one, rest)


def create_state(model: nnx.Module, tx: optax.GradientTransformation | None = None) -> TrainState:
  """Splits `model` into (graphdef, params, rest); `tx` defaults to a no-op (evaluation only)."""
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = tx if tx is not None else optax.identity()
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=tx.init(params), graphdef=graphdef, rest=rest, tx=tx)


def train_state(model: nnx.Module, cfg_optim: ml_collections.ConfigDict, *, steps_per_epoch: int,
                epochs: int, frozen: str = "", params=None) -> TrainState:
  """The state a stage trains: `model`'s parameters (or `params`, same structure) and the
  config's optimizer (`optim.make_optimizer`: AdamW + cosine, `frozen` leaves masked)."""
  params = create_state(model).params if params is None else params
  tx = optim.make_optimizer(cfg_optim, params, total_steps=steps_per_epoch * epochs,
                            steps_per_epoch=steps_per_epoch, frozen_regex=frozen)
  return create_state(model, tx).replace(params=params)


def frozen_regex(regex: str, params) -> str:
  """The config's freezing regex, or '' when the model has nothing it could match."""
  if regex and not any(jax.tree_util.tree_leaves(optim.frozen_mask(params, regex))):
    logging.info("Freezing regex %r matches nothing in this model: nothing is frozen.", regex)
    return ""
  return regex


def restore_params(workdir: str, stage: str, model: nnx.Module) -> Any | None:
  """The parameters of `stage`'s latest checkpoint in `workdir`, restored into `model`'s shapes;
  None when there is none (nothing in `workdir` is created, cleaned or moved)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints", stage)):
    return None
  ckpt = StageCheckpoints(workdir, stage, read_only=True)
  try:
    return ckpt.restore_params(create_state(model).params)
  finally:
    ckpt.close()


def restored(model: nnx.Module, workdir: str, stage: str) -> TrainState:
  """An evaluation state of `model` with `stage`'s parameters from `workdir`.

  Raises:
    FileNotFoundError: the workdir has no checkpoint of `stage`.
  """
  params = restore_params(workdir, stage, model)
  if params is None:
    raise FileNotFoundError(f"{os.path.join(workdir, 'checkpoints', stage)}: no checkpoint; run "
                            "the stage that writes it first")
  return create_state(model).replace(params=params)
