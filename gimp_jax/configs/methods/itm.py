"""Image-gene matching pre-training (Liang et al. 2022, TIMNet) over GiMP's encoders (Table 1)."""

import ml_collections

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.method = "itm"
  c.itm = ml_collections.ConfigDict()
  c.itm.proj_dim = 128                        # 512 in TIMNet; 128 as the other objectives here
  c.itm.shift = 1                             # negatives: genes of the next patient in the batch
  return c
