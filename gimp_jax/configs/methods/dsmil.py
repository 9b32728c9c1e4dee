"""DSMIL (Li et al. 2021): max-instance + critical-instance attention streams, pathology only (Table 1)."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.image_only(sizes.base(size))
  c.method = "dsmil"
  return c
