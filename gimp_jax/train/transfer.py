"""Stage transitions: copying parameters between models by path, with a log of what moved."""

import re

from absl import logging
import jax

from gimp_jax.train.optim import flat_paths, path_str
from gimp_jax.train.state import create_state, restore_params


def transfer_params(src, dst, *, include: str = r".*", exclude: str = r"^$"):
  """Copies every leaf of `dst` whose path matches `include` and not `exclude` from `src`.

  Args:
    src: parameter pytree of the previous stage.
    dst: freshly initialised parameter pytree of the next stage.
    include / exclude: regexes over paths such as 'gene_encoder/intra/fc1/kernel'.

  Returns:
    (params, report): `dst` with the copied leaves replaced, and {"copied": [...], "fresh": [...]}.

  Raises:
    ValueError: a selected path is missing from `src`, or its shape differs.
  """
  src_flat = flat_paths(src)
  report = {"copied": [], "fresh": []}

  def pick(path, leaf):
    name = path_str(path)
    if not re.search(include, name) or re.search(exclude, name):
      report["fresh"].append(name)
      return leaf
    if name not in src_flat:
      raise ValueError(f"Cannot transfer {name!r}: the previous stage has no such parameter.")
    value = src_flat[name]
    if value.shape != leaf.shape:
      raise ValueError(f"Cannot transfer {name!r}: shape {value.shape} in the previous stage, "
                       f"{leaf.shape} in this one.")
    report["copied"].append(name)
    return value.astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(pick, dst)
  if not report["copied"]:
    raise ValueError(f"Transfer copied nothing (include={include!r}, exclude={exclude!r}).")
  logging.info("Transfer: %d parameters copied, %d fresh.", len(report["copied"]),
               len(report["fresh"]))
  for kind in ("copied", "fresh"):
    logging.debug("Transfer: %s: %s", kind, ", ".join(report[kind]))
  return params, report


def gene_encoder_into_gimp(gene_params, gimp_params):
  """The supervised GroupMSA weights go into the GiMP model (everything else stays fresh)."""
  return transfer_params(gene_params, gimp_params, include=r"^gene_encoder/")


def pretrained_into_finetune(pretrained, finetune_params):
  """The pre-trained GiMP weights go into the fine-tuning model; the head is new."""
  return transfer_params(pretrained, finetune_params, exclude=r"^head/")


def initial_params(run, model, stage: str):
  """The parameters `stage` ("pretrain" or "finetune") starts from (`run`: a `train.run.Run`):
  the run's pre-training for fine-tuning; else its supervised GroupMSA for a model with a gene
  encoder; else `config.init_from`'s weights; else `model`'s own initialisation.

  Raises:
    FileNotFoundError: the checkpoint it must start from is missing.
  """
  params = create_state(model).params
  cfg = run.config
  if stage == "finetune" and "pretrain" in cfg.stages:
    source = (run.workdir, "pretrain", run.build(), pretrained_into_finetune)
  elif getattr(model, "gene_encoder", None) is not None and "gene_pretrain" in cfg.stages:
    source = (run.workdir, "gene_pretrain_best", run.gene_classifier(), gene_encoder_into_gimp)
  elif cfg.init_from:
    source = (cfg.init_from, "finetune" if stage == "finetune" else "pretrain", run.build(),
              pretrained_into_finetune)
  else:
    return params
  workdir, name, source_model, into = source
  src = restore_params(workdir, name, source_model)
  if src is None:
    raise FileNotFoundError(f"{stage}: no {name} checkpoint in {workdir}")
  return into(src, params)[0]
