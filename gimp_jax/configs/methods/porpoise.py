"""PORPOISE (Chen et al. 2022): attention MIL + SNN genes, gated Kronecker fusion of the 256-d
branches scaled by 8 (the "bilinear" option; `fusion.mode = "concat"` for the other) (Table 1)."""

import ml_collections

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.end_to_end(nsclc.published(arg))
  c.method = "porpoise"
  c.model.gene_encoder = "snn"                # documents the genomic branch (built by the method)
  d = c.model.dim
  c.fusion = ml_collections.ConfigDict()
  c.fusion.mode = "kronecker"                 # "kronecker" (PORPOISE bilinear) | "concat"
  c.fusion.path_hidden = d                    # Linear(in -> 512) before attention [PORPOISE]
  c.fusion.path_dim = d // 2                  # rho: 512 -> 256 [PORPOISE]
  c.fusion.snn_hidden = (d // 2, d // 2)      # SNN 2 x 256 [PORPOISE]
  c.fusion.scale = 8                          # branch width / 8 into the Kronecker product
  c.fusion.mmhid = d // 2                     # fused width 256 [PORPOISE]
  c.fusion.dropout = 0.25
  return c
