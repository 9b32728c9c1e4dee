"""GiMP without pre-training: supervised GroupMSA (frozen) + aggregator, fine-tuned (Table 1;
Table 2, row 2)."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.stages = ("gene_pretrain", "finetune", "test")
  return c
