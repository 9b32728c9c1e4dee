"""Table 2, row 5: aggregator + GroupMSA + triplet on CLS_pat, no MPM, in pre-training."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.pretrain.use_mpm = False
  return c
