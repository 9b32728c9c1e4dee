"""Table 2, row 6: full GiMP (= configs/methods/gimp.py)."""

from configs.methods import gimp


def get_config(size: str = "paper"):
  return gimp.get_config(size)
