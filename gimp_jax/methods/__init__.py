"""Methods as modules: `config.method = "<name>"` picks `gimp_jax.methods.<name>` (as big_vision
picks `models.<name>`), with no registry object.

Each method module exports:
  CONFIG_BLOCK: the name of its own config block, the settings of its objective ("clip",
    "tangle", "fusion", "mcat", "clam", "pretrain" for GiMP's; "" when it has none);
  build(model_cfg, data_cfg, method_cfg, genes, num_classes, seed, dtype) -> model, from the
    `model` and `data` blocks (feature width; MCAT names the expression table in its messages),
    its own block `method_cfg` (None when CONFIG_BLOCK is "") and `dtype` (config.compute_dtype),
    `genes` the cohort's gene list [G] (its names: gene symbols where known, `Cohort.gene_names`;
    G = len(genes), and MCAT finds its signatures in it), where every model answers one protocol,
    `model(patches [B, N, D], genes [B, G] | None, patch_mask [B, N] | None)
     -> (logits [B, C], embedding [B, E])` (the embedding is what the t-SNE shows);
  pretrain_loss: method_cfg -> LossFn over pre-training windows (patches [B, L, D], mpm_mask
    [B, L], genes [B, G], label [B]), or None when the method has no pre-training stage;
  finetune_loss: (method_cfg, finetune_cfg, task, survival_cfg) -> LossFn over whole-bag batches;
  and optionally pretrain_uses = "slides" when the pre-training objective also takes patients
    without expression (`data.allow_missing`; default "pairs", see gimp_jax.train.partial).
A method sees only these blocks: `build`, `pretrain_loss` and `finetune_loss` of this package
hand `config.method`'s module its blocks of the run's config.
Models with a slide encoder the `probe` stage can read expose `embed_slide(patches, patch_mask)`.

| method        | model                                    | pre-training objective  |
|---------------|------------------------------------------|-------------------------|
| gimp          | models.gimp.GiMP (+ its Table 2 ablations through config flags) | objectives.gimp |
| abmil         | models.mil.ABMIL                         | -                       |
| dsmil         | models.mil.DSMIL                         | - (fine-tune: 0.5 bag + 0.5 max) |
| clam_sb/mb    | models.mil.CLAM                          | - (fine-tune: + instance loss)   |
| transmil      | models.mil.TransMIL                      | -                       |
| porpoise      | models.fusion.AttentionFusion            | -                       |
| pathomic      | models.fusion.AttentionFusion            | -                       |
| mcat          | models.fusion.MCAT                       | -                       |
| clip          | GiMP encoders + objectives.clip heads    | objectives.clip         |
| mgca          | GiMP encoders + objectives.mgca heads    | objectives.mgca         |
| refers        | GiMP encoders + objectives.refers heads  | objectives.refers       |
| itm           | GiMP encoders + objectives.itm heads     | objectives.itm          |
| tangle        | models.tangle.Tangle (ABMIL + expression MLP) | objectives.tangle (InfoNCE) |
| tangle_rec    | models.tangle.Tangle (ABMIL + expression decoder) | objectives.tangle (MSE) |
| intra         | models.tangle.Tangle (ABMIL)             | objectives.tangle (two views, InfoNCE) |
"""

from collections.abc import Sequence
import importlib
import pkgutil
from types import ModuleType

import ml_collections

from gimp_jax import losses


def known() -> list[str]:
  """The method names: the modules of this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
  """The module of method `name` (CONFIG_BLOCK, build, pretrain_loss, finetune_loss)."""
  if name not in known():
    raise ValueError(f"Unknown config.method {name!r}; known: {known()}.")
  return importlib.import_module(f"{__name__}.{name}")


def _method_cfg(config: ml_collections.ConfigDict, module: ModuleType
                ) -> ml_collections.ConfigDict | None:
  """The method's own block of `config` (`module.CONFIG_BLOCK`), or None."""
  return config[module.CONFIG_BLOCK] if module.CONFIG_BLOCK else None


def build(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int, seed: int,
          model_cfg: ml_collections.ConfigDict | None = None):
  """`config.method`'s model (its module's `build`) on the gene list `genes` with `num_classes`
  outputs, from the `model` block (or `model_cfg`: the pre-training stage's,
  `models.build.pretrain_model_cfg`), the `data` block, its own block and config.compute_dtype."""
  module = get(config.method)
  return module.build(config.model if model_cfg is None else model_cfg, config.data,
                      _method_cfg(config, module), genes, num_classes, seed,
                      config.compute_dtype)


def pretrain_loss(config: ml_collections.ConfigDict) -> losses.LossFn:
  """`config.method`'s pre-training loss, from its own block.

  Raises:
    ValueError: the method has no pre-training stage.
  """
  module = get(config.method)
  if module.pretrain_loss is None:
    raise ValueError(f"Method {config.method!r} has no pre-training stage; remove it from "
                     "stages.")
  return module.pretrain_loss(_method_cfg(config, module))


def finetune_loss(config: ml_collections.ConfigDict) -> losses.LossFn:
  """`config.method`'s fine-tuning loss, from its own block, the `finetune` block, the task and
  the `survival` block."""
  module = get(config.method)
  return module.finetune_loss(_method_cfg(config, module), config.finetune,
                              config.get("task", "classification"), config.get("survival"))
