"""GiMP without pre-training (Table 1; Table 2, row 2): GroupMSA and the aggregator trained together
from scratch in fine-tuning, with the recipe chosen on validation (no supervised gene stage: it
memorises the training labels; experiments/results/learning/). As published:
`gimp_no_pretrain_published`."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.stages = ("finetune", "test")             # choice: no supervised gene stage (issue 23)
  c.finetune.frozen = ""                      # GroupMSA trains with the slides
  return c
