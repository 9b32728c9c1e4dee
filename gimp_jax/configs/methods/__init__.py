"""One config per method of GiMP's Tables 1 and 2; each takes a size argument ("paper", "cpu" or
"tiny"): `--config=configs/methods/abmil.py:cpu`. Below, the two training setups several share."""

import importlib
import pkgutil

import ml_collections


def known() -> list[str]:
  """Every method config: the modules of this package (`--config=configs/methods/<name>.py`)."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_config(name: str, size: str) -> ml_collections.ConfigDict:
  """The config `name` (one of `known()`) at `size` ("paper", "cpu" or "tiny")."""
  return importlib.import_module(f"{__name__}.{name}").get_config(size)


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
