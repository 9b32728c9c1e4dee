"""MCAT (Chen et al. 2021): genomic-guided co-attention, genes grouped into SNN-embedded tokens
(Table 1)."""

import ml_collections

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.end_to_end(nsclc.get_config(arg))
  c.method = "mcat"
  c.model.gene_encoder = "snn"                # documents the genomic branch (built by the method)
  c.mcat = ml_collections.ConfigDict()
  c.mcat.dim = c.model.dim // 2               # 256 [MCAT]
  c.mcat.num_gene_groups = 6                  # MCAT's 6 signature groups; here consecutive genes
  c.mcat.heads = c.model.heads                # 8 [MCAT]
  c.mcat.depth = 2                            # transformer layers per modality [MCAT]
  c.mcat.fusion = "concat"                    # MCAT default | "kronecker"
  c.mcat.dropout = 0.25
  return c
