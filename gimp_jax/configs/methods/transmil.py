"""TransMIL (Shao et al. 2021): Nystrom layer, PPEG, Nystrom layer, pathology only (Table 1)."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.image_only(sizes.base(size))
  c.method = "transmil"
  return c
