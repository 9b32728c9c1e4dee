"""Methods as modules: `config.method = "<name>"` picks `gimp_jax.methods.<name>` (as big_vision
picks `models.<name>`), with no registry object.

Each method module exports:
  build(config, genes, num_classes, seed) -> model, `genes` the cohort's gene list [G] (its names:
    gene symbols where known, `Cohort.gene_names`; G = len(genes), and MCAT finds its signatures in
    it), where every model answers one protocol,
    `model(patches [B, N, D], genes [B, G] | None, patch_mask [B, N] | None)
     -> (logits [B, C], embedding [B, E])` (the embedding is what the t-SNE shows);
  pretrain_loss: config -> LossFn over pre-training windows (patches [B, L, D], mpm_mask [B, L],
    genes [B, G], label [B]), or None when the method has no pre-training stage;
  finetune_loss: config -> LossFn over whole-bag batches;
  and optionally pretrain_uses = "slides" when the pre-training objective also takes patients
    without expression (`data.allow_missing`; default "pairs", see gimp_jax.train.partial).
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

import importlib
import pkgutil
from types import ModuleType


def known() -> list[str]:
  """The method names: the modules of this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
  """The module of method `name` (build, pretrain_loss, finetune_loss)."""
  if name not in known():
    raise ValueError(f"Unknown config.method {name!r}; known: {known()}.")
  return importlib.import_module(f"{__name__}.{name}")
