"""GiMP without pre-training: supervised GroupMSA (frozen) + aggregator, fine-tuned (Table 1)."""

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.base(size)
  c.stages = ("gene_pretrain", "finetune", "test")
  return c
