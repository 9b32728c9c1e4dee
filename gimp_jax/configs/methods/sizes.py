"""Sizes shared by the method configs: the paper's, a CPU size for the synthetic cohort, and the
test size. Applied to configs/nsclc.py before a method changes what differs."""

import ml_collections

from configs import nsclc
from configs import tiny

SIZES = ("paper", "cpu", "tiny")


def base(size: str = "paper") -> ml_collections.ConfigDict:
  """configs/nsclc.py at `size`.

  paper: unchanged (TCGA-NSCLC, 1024-d CLAM features, 60,480 genes, d = 512).
  cpu: the default synthetic cohort (1024-d features, all of its 2,000 genes, bags of 100-300
    patches per slide) with d = 64, bags batched by 8, a higher learning rate and short stages,
    for the tables on a 2-core CPU.
  tiny: configs/tiny.py's model and data sizes, one epoch per stage and one bag per batch, for
    tests.
  """
  if size not in SIZES:
    raise ValueError(f"Unknown config size {size!r}; expected one of {SIZES}.")
  c = nsclc.get_config()
  if size == "cpu":
    c.data.num_genes = 0
    c.data.bucket_sizes = (640,)              # every bag (<= 2 slides of <= 300): one compilation
    c.model.dim = 64
    c.model.heads = 4
    c.model.num_landmarks = 32
    c.model.num_fragments = 8                 # 8 x 250 genes: the paper's ~252 genes per fragment
    c.model.num_groups = 4
    c.model.head_hidden = 64
    c.optim.learning_rate = 5e-4              # ~100x fewer steps than the paper's 1e-4 schedule
    c.gene_pretrain.epochs = 8                # 40 steps: 3 leave GroupMSA at d = 64 undertrained,
                                              # 15 let CLS_ge alone fit the training set
    c.pretrain.epochs = 8
    c.pretrain.window = 128
    c.pretrain.checkpoint_every = 1000
    c.finetune.epochs = 10
    c.finetune.batch_size = 8
    c.finetune.checkpoint_every = 1000
  elif size == "tiny":
    small, default = tiny.get_config(), nsclc.get_config()
    for block in ("data", "model", "pretrain"):
      for key, value in small[block].items():
        if value != default[block][key]:
          c[block][key] = value
    c.data.bucket_sizes = (64,)
    c.data.prefetch = 1
    c.gene_pretrain.epochs = 1
    c.pretrain.epochs = 1
    c.pretrain.window = 16
    c.finetune.epochs = 1
    c.finetune.batch_size = 1                 # one bag shape for every split: one compilation
  return c


def image_only(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Pathology-only, no pre-training: fine-tune and test, nothing frozen."""
  c.stages = ("finetune", "test")
  c.model.gene_encoder = "none"
  c.pretrain.frozen = ""
  c.finetune.frozen = ""
  return c


def end_to_end(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Image-omic models trained from scratch in the fine-tuning stage, nothing frozen."""
  c.stages = ("finetune", "test")
  c.pretrain.frozen = ""
  c.finetune.frozen = ""
  return c
