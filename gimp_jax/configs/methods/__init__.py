"""One config per method of GiMP's Tables 1 and 2; each takes a size argument ("paper", "cpu" or
"tiny"): `--config=configs/methods/abmil.py:cpu`. Below, the two training setups several share."""

import ml_collections


def image_only(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Pathology-only, no pre-training: fine-tune and test, nothing frozen."""
  c.stages = ("finetune", "test")
  c.model.gene_encoder = "none"
  c.pretrain.frozen = ""
  c.finetune.frozen = ""
  return c


def end_to_end(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Image-omic models trained from scratch in the fine-tuning stage, nothing frozen."""
  c.stages = ("finetune", "test")
  c.pretrain.frozen = ""
  c.finetune.frozen = ""
  return c
