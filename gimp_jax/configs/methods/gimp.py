"""GiMP: supervised GroupMSA (frozen), MPM + gene-induced triplet pre-training, fine-tuning
(Tables 1 and 2): configs/nsclc.py as it is."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  return sizes.base(size)
