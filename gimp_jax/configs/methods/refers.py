"""REFERS over GiMP's encoders: multi-view fusion, contrast, expression prediction (Table 1)."""

import ml_collections

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.method = "refers"
  c.refers = ml_collections.ConfigDict()
  c.refers.views = 3                          # views per study [REFERS]: contiguous sub-windows
  c.refers.proj_dim = 128                     # contrastive embedding width (choice)
  c.refers.temperature = 0.1                  # tau [REFERS code]
  c.refers.direction = "a2b"                  # study -> genes only [REFERS Eq. 2]
  c.refers.generation_weight = 1.0            # 1 : 1 [REFERS]
  return c
