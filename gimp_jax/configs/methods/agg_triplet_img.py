"""Table 2, row 4: aggregator + triplet on CLS_img alone (no genes, no MPM) in pre-training."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.pretrain.use_mpm = False
  c.pretrain.triplet_on = "img"
  return c
