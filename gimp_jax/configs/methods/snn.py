"""Table 2, row 1: GiMP without pre-training (`gimp_no_pretrain`), GroupMSA replaced by an SNN."""

from gimp_jax.configs.methods import gimp_no_pretrain


def get_config(arg: str = "paper"):
  c = gimp_no_pretrain.get_config(arg)
  c.model.gene_encoder = "snn"
  return c
