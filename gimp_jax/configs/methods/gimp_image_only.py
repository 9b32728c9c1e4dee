"""GiMP's patch aggregator without GroupMSA, no pre-training, pathology only (Table 1)."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.image_only(sizes.base(size))
  c.method = "gimp"
  return c
