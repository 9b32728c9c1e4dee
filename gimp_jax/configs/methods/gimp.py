"""GiMP: supervised GroupMSA, MPM + gene-induced triplet pre-training (GroupMSA frozen), then
fine-tuning with the recipe chosen on validation (Table 1; Table 2, row 6): configs/nsclc.py as it
is. As published: `gimp_published`."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  return nsclc.get_config(arg)
