"""Table 2, row 3: aggregator + MPM: image-only pre-training (no triplet), multimodal fine-tuning."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.pretrain.use_triplet = False
  return c
