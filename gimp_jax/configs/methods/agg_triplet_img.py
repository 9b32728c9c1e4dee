"""Table 2, row 4: aggregator + triplet on CLS_img alone (no genes, no MPM) in pre-training."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.base(size)
  c.pretrain.use_mpm = False
  c.pretrain.triplet_on = "img"
  return c
