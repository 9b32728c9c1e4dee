"""GiMP's patch aggregator without GroupMSA, no pre-training, pathology only (Table 1)."""

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.image_only(nsclc.published(arg))
  c.method = "gimp"
  return c
