"""TANGLE-Rec (TANGLE's baseline): the slide encoder predicts the expression vector (MSE)."""

from gimp_jax.configs.methods import tangle


def get_config(arg: str = "paper"):
  return tangle.get_config(arg, method="tangle_rec")
