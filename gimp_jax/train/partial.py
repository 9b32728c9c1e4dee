"""Partial data (`data.allow_missing`): which patients each stage uses, and the slide-only view.

A patient without expression has a NaN expression row, an unlabelled one label -1
(`data.cohort`). Each stage takes the patients of its split that it can use:

| stage | uses |
|---|---|
| gene_pretrain | patients with expression and a label |
| pretrain | methods whose module sets `pretrain_uses = "slides"` (GiMP: MPM on every slide, the triplet terms on the labelled pairs inside the loss; Intra): every patient; the others (TANGLE, TANGLE-Rec, CLIP, MGCA, REFERS, ITM): patients with expression |
| finetune, test | labelled patients; with expression too when the model has a gene branch without a missing-genes token (`model.modality_dropout` = 0) |
| probe | every slide is embedded; labelled patients are fitted and scored |

Without `allow_missing` every patient has both and a label, so every stage uses its whole split.
"""

import dataclasses
from types import ModuleType

from flax import nnx
import numpy as np

from gimp_jax.configs.checks import STAGES
from gimp_jax.data.cohort import Cohort


def has_genes(cohort: Cohort) -> np.ndarray:
  """[P] bool: the patient's expression row is finite."""
  return np.isfinite(cohort.genes).all(axis=1)


def needs_genes(model) -> bool:
  """Whether `model` has a gene branch it cannot run without (no missing-genes token)."""
  return (getattr(model, "gene_encoder", None) is not None
          and getattr(model, "missing_genes", None) is None)


def stage_patients(cohort: Cohort, split: str, stage: str, *, pretrain_uses: str,
                   model_needs_genes: bool) -> np.ndarray:
  """Sorted indices of the patients of `split` that `stage` uses (table in the module docstring).

  Args:
    pretrain_uses: "slides" or "pairs" (the method module's `pretrain_uses`, default "pairs").
    model_needs_genes: `needs_genes` of the stage's model.
  """
  idx = cohort.split(split)
  genes, labelled = has_genes(cohort)[idx], cohort.labels[idx] >= 0
  keep = {"gene_pretrain": genes & labelled,
          "pretrain": np.ones_like(genes) if pretrain_uses == "slides" else genes,
          "finetune": labelled & (genes | (not model_needs_genes)),
          "probe": np.ones_like(genes)}
  keep["test"] = keep["finetune"]
  if stage not in keep:
    raise ValueError(f"Unknown stage {stage!r}; known: {STAGES}.")
  return idx[keep[stage]]


def usage_table(cohort: Cohort, stages, *, pretrain_uses: str, model_needs_genes: bool) -> str:
  """One Markdown table: patients per split (with slide-only and unlabelled counts), then the
  patients each of `stages` uses per split."""
  splits = ("train", "val", "test")
  genes, labelled = has_genes(cohort), cohort.labels >= 0
  lines = ["| | " + " | ".join(splits) + " |", "|---|---|---|---|"]
  for what, mask in (("patients", np.ones_like(genes)), ("  slide-only", ~genes),
                     ("  unlabelled", ~labelled)):
    lines.append(f"| {what} | " + " | ".join(str(int(mask[cohort.split(s)].sum())) for s in splits)
                 + " |")
  for stage in [s for s in STAGES if s in stages]:
    counts = [stage_patients(cohort, s, stage, pretrain_uses=pretrain_uses,
                             model_needs_genes=model_needs_genes).size for s in splits]
    lines.append(f"| {stage} uses | " + " | ".join(map(str, counts)) + " |")
  return "\n".join(lines)


def method_uses(method: ModuleType, model: nnx.Module) -> dict:
  """The keyword arguments of `stage_patients` / `usage_table` for `method` (a
  `gimp_jax.methods` module): its `pretrain_uses` and whether `model`, its model (from shapes
  only will do: `preflight.abstract_model`), needs genes."""
  return {"pretrain_uses": getattr(method, "pretrain_uses", "pairs"),
          "model_needs_genes": needs_genes(model)}


def slide_only(cohort: Cohort) -> Cohort:
  """The same cohort with every expression row missing (NaN): slide-only evaluation."""
  return dataclasses.replace(cohort, genes=np.full_like(cohort.genes, np.nan))
