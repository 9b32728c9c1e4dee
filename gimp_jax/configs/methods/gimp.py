"""GiMP: supervised GroupMSA (frozen), MPM + gene-induced triplet pre-training, fine-tuning
(Table 1; Table 2, row 6): configs/nsclc.py as it is."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  return nsclc.get_config(arg)
