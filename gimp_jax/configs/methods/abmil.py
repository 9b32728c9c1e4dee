"""ABMIL (Ilse et al. 2018): gated attention pooling, pathology only (Table 1)."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.image_only(sizes.base(size))
  c.method = "abmil"
  return c
