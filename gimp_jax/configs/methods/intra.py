"""Intra (TANGLE's baseline): slide-only, two patch-subsampled views contrasted (InfoNCE)."""

from gimp_jax.configs.methods import tangle


def get_config(arg: str = "paper"):
  return tangle.get_config(arg, method="intra")
