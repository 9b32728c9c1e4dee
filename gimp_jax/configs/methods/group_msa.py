"""Table 2, row 2: aggregator + GroupMSA without pre-training (= Table 1's GiMP w/o pre-train)."""

from configs.methods import gimp_no_pretrain


def get_config(size: str = "paper"):
  return gimp_no_pretrain.get_config(size)
