"""Pathomic Fusion (Chen et al. 2020) on WSI bags: attention-MIL pathology branch to 32-d, SNN genes
(64-48-32-32), gated Kronecker fusion to 64-d (Table 1)."""

import ml_collections

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.end_to_end(nsclc.published(arg))
  c.method = "pathomic"
  c.model.gene_encoder = "snn"                # documents the genomic branch (built by the method)
  c.fusion = ml_collections.ConfigDict()
  c.fusion.mode = "kronecker"                 # gated Kronecker fusion [Pathomic Fusion]
  c.fusion.path_hidden = c.model.dim          # WSI adaptation: attention MIL over the bag
  c.fusion.path_dim = 32                      # path_dim 32 [Pathomic Fusion]
  c.fusion.snn_hidden = (64, 48, 32, 32)      # MaxNet hidden sizes, omic_dim 32 [Pathomic Fusion]
  c.fusion.scale = 1
  c.fusion.mmhid = 64                         # [Pathomic Fusion]
  c.fusion.dropout = 0.25
  return c
