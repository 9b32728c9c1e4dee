"""Table 2, row 3: aggregator + MPM: image-only pre-training (no triplet), multimodal fine-tuning."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.base(size)
  c.pretrain.use_triplet = False
  return c
