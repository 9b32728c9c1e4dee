"""GiMP without pre-training as the paper's pipeline implies: supervised GroupMSA (frozen) +
aggregator, fine-tuned (nsclc.published)."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.published(arg)
  c.stages = ("gene_pretrain", "finetune", "test")
  return c
