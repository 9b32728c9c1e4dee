"""CLIP-style global symmetric InfoNCE over GiMP's encoders (the BioViL row of Table 1)."""

import ml_collections

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.method = "clip"
  c.clip = ml_collections.ConfigDict()
  c.clip.proj_dim = 128                       # shared embedding width (MGCA/BioViL use 128)
  c.clip.temperature = 0.1                    # tau (choice)
  return c
