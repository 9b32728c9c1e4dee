"""GiMP without pre-training (Table 1; Table 2, row 2): the supervised GroupMSA (frozen after its
stage) and the aggregator fine-tuned, with GiMP's recipe (`nsclc.RECIPE`: gene input dropout 0.9,
modality dropout 0.5, weight decay 0.1; chosen on validation, experiments/results/learning/notes.md
section 9). As published: `gimp_no_pretrain_published`."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.stages = ("gene_pretrain", "finetune", "test")
  return c
