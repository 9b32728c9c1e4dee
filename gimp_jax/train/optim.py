"""AdamW with a cosine schedule, and freezing through an optax mask built from a path regex."""

import re

from absl import logging
import jax
import ml_collections
import optax

FROZEN, TRAINABLE = "frozen", "trainable"


def path_str(path) -> str:
  """'gene_encoder/intra/fc1/kernel' for a pytree key path of an nnx.State leaf."""
  parts = []
  for key in path:
    name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
    if name == "value" and key is path[-1]:
      continue
    parts.append(str(name))
  return "/".join(parts)


def flat_paths(tree) -> dict[str, jax.Array]:
  """{path string: leaf} of a parameter pytree, in tree order."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def frozen_mask(params, frozen_regex: str):
  """Pytree of bools, True where the leaf's path matches `frozen_regex` (all False for '')."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: bool(frozen_regex) and re.search(frozen_regex, path_str(p)) is not None, params)


def freeze_labels(params, frozen_regex: str):
  """Pytree of "frozen"/"trainable" labels; a non-empty regex must match at least one leaf."""
  labels = jax.tree_util.tree_map(lambda f: FROZEN if f else TRAINABLE,
                                  frozen_mask(params, frozen_regex))
  leaves = jax.tree_util.tree_leaves(labels)
  if frozen_regex and FROZEN not in leaves:
    raise ValueError(f"Frozen-parameter regex {frozen_regex!r} matched no parameter.")
  sizes = {FROZEN: 0, TRAINABLE: 0}
  for label, leaf in zip(leaves, jax.tree_util.tree_leaves(params)):
    sizes[label] += leaf.size
  logging.info("Parameters: %d trainable, %d frozen (regex %r).", sizes[TRAINABLE],
               sizes[FROZEN], frozen_regex)
  return labels


def make_optimizer(cfg: ml_collections.ConfigDict, params, *, total_steps: int,
                   steps_per_epoch: int, frozen_regex: str = "") -> optax.GradientTransformation:
  """AdamW (lr 1e-4 in the paper) with linear warm-up and cosine decay; frozen leaves get zero
  updates and no optimizer state (optax.set_to_zero); optional clipping and gradient accumulation.

  Args:
    cfg: the `optim` config block.
    params: parameter pytree (used for the freezing labels).
    total_steps: training steps in the stage; with `grad_accum_steps` k the schedule runs over
      its ceil(total_steps / k) optimizer updates (optax.MultiSteps advances it once per k).
    steps_per_epoch: used to convert `warmup_epochs` to steps.
    frozen_regex: parameters whose path matches are frozen.
  """
  k = max(cfg.grad_accum_steps, 1)
  total_steps = -(-total_steps // k)
  warmup = int(cfg.warmup_epochs * steps_per_epoch) // k
  if warmup:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.end_lr_fraction)
  else:  # the same values without an empty warm-up piece (optax logs about it on every stage)
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps=max(total_steps, 1),
                                           alpha=cfg.end_lr_fraction)
  chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
  chain.append(optax.adamw(schedule, weight_decay=cfg.weight_decay))
  tx = optax.chain(*chain)
  labels = freeze_labels(params, frozen_regex)
  tx = optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
  return tx
