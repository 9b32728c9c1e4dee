"""Registry of methods: what model a config builds and which losses its stages use.

Every method runs through the same data pipeline, stages, checkpoints and reports; a method only
says how to build its model and how to compute its losses. `config.method` picks one.
"""

import dataclasses
from typing import Callable

import jax
import ml_collections
from flax import nnx

from gimp_jax.models import build
from gimp_jax.models.gimp import cls_pat
from gimp_jax import losses
from gimp_jax.objectives import gimp as gimp_objective
from gimp_jax.objectives import supervised


@dataclasses.dataclass(frozen=True)
class Method:
  """How one method plugs into the stages.

  Attributes:
    build: (config, num_genes, num_classes, seed) -> model for the pretrain/finetune/test stages.
    pretrain_loss: config -> LossFn `(model, batch) -> (loss, metrics)` over pre-training batches
      (windows: patches [B, L, D], mpm_mask [B, L], genes [B, G], label [B]); None = no
      pre-training stage for this method.
    finetune_loss: config -> LossFn over whole-bag batches.
    forward: (model, batch) -> (logits [B, C], embedding [B, E]) in evaluation (embedding is what
      the t-SNE shows).
    uses_genes: whether the model reads the expression vector.
  """
  build: Callable[[ml_collections.ConfigDict, int, int, int], nnx.Module]
  pretrain_loss: Callable[[ml_collections.ConfigDict], losses.LossFn] | None
  finetune_loss: Callable[[ml_collections.ConfigDict], losses.LossFn]
  forward: Callable[[nnx.Module, dict], tuple[jax.Array, jax.Array]]
  uses_genes: bool = True


def gimp_forward(model, batch):
  """GiMP (and its ablations): head on CLS_pat."""
  cls_img, cls_ge, _ = model.encode(batch["patches"], batch.get("genes"),
                                    patch_mask=batch.get("patch_mask"))
  emb = cls_pat(cls_img, cls_ge)
  return model.head(emb), emb


_REGISTRY: dict[str, Method] = {
    "gimp": Method(build=build.build_gimp,
                   pretrain_loss=gimp_objective.make_loss,
                   finetune_loss=supervised.finetune_loss, forward=gimp_forward),
}


def register(name: str, method: Method) -> None:
  """Adds a method (used by the baseline modules)."""
  _REGISTRY[name] = method


def get(name: str) -> Method:
  from gimp_jax import baselines  # pylint: disable=g-import-not-at-top,unused-import  # registers
  if name not in _REGISTRY:
    raise ValueError(f"Unknown config.method {name!r}; known: {sorted(_REGISTRY)}.")
  return _REGISTRY[name]
