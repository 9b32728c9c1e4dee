"""Table 2, row 1: GiMP without pre-training, GroupMSA replaced by an SNN (supervised, frozen)."""

from configs.methods import gimp_no_pretrain


def get_config(size: str = "paper"):
  c = gimp_no_pretrain.get_config(size)
  c.model.gene_encoder = "snn"
  return c
