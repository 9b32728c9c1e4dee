"""Table 2, row 5: aggregator + GroupMSA + triplet on CLS_pat, no MPM, in pre-training."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.base(size)
  c.pretrain.use_mpm = False
  return c
