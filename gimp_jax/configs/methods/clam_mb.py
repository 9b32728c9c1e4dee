"""CLAM-MB (Lu et al. 2021): one attention branch per class + instance clustering loss (Table 1);
CLAM-SB's settings otherwise."""

from gimp_jax.configs.methods import clam_sb


def get_config(arg: str = "paper"):
  c = clam_sb.get_config(arg)
  c.method = "clam_mb"
  return c
