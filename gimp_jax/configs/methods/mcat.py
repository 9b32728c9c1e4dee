"""MCAT (Chen et al. 2021): genomic-guided co-attention, genes grouped into SNN-embedded tokens
(Table 1)."""

import ml_collections

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.end_to_end(nsclc.published(arg))
  c.method = "mcat"
  c.model.gene_encoder = "snn"                # documents the genomic branch (built by the method)
  c.mcat = ml_collections.ConfigDict()
  c.mcat.dim = c.model.dim // 2               # 256 [MCAT]
  # MCAT's genomic tokens: "signatures" = its six gene signatures (tumour suppressors, oncogenes,
  # protein kinases, cell differentiation markers, transcription factors, cytokines and growth
  # factors; gimp_jax/data/mcat_signatures.csv, found by gene symbol), one SNN each [MCAT];
  # "slices" = num_gene_groups consecutive slices of the gene list (not MCAT's; for inputs without
  # gene symbols).
  c.mcat.gene_groups = "signatures"
  c.mcat.num_gene_groups = 6                  # slices only
  c.mcat.heads = c.model.heads                # 8 [MCAT]
  c.mcat.depth = 2                            # transformer layers per modality [MCAT]
  c.mcat.fusion = "concat"                    # MCAT default | "kronecker"
  c.mcat.dropout = 0.25
  return c
