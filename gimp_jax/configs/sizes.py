"""The sizes every config takes as its argument: `get_config("paper" | "cpu" | "tiny")`.

  paper: the paper's settings as nsclc.py writes them (TCGA-NSCLC, 1024-d CLAM features, 60,480
    genes, d = 512).
  cpu: the default synthetic cohort (`python -m gimp_jax.data.synthetic --out data/synthetic`:
    120 patients, 1024-d features, 2,000 genes, 100-300 patches per slide) at d = 64 with short
    stages: the README demo and the tables on a 2-core CPU.
  tiny: a model that steps in milliseconds on a CPU, two epochs per stage, for the tests (which
    set the data paths).

`--config=configs/nsclc.py:cpu`, `--config=configs/methods/abmil.py:tiny`.
"""

import ml_collections

SIZES = ("paper", "cpu", "tiny")


def apply(c: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
  """Shrinks the paper's config `c` (nsclc.py's fields) to `size`, in place; returns it."""
  if size not in SIZES:
    raise ValueError(f"Unknown config size {size!r}; expected one of {SIZES}.")
  if size == "cpu":
    c.data.features_dir = "data/synthetic/features"
    c.data.expression = "data/synthetic/expression.tsv"
    c.data.labels = "data/synthetic/labels.csv"
    c.data.num_genes = 0                      # all genes of the table (synthetic cohort: 2,000)
    c.data.bucket_sizes = (640,)              # every bag (<= 2 slides of <= 300): one compilation
    c.model.dim = 64
    c.model.heads = 4
    c.model.num_landmarks = 32
    c.model.num_fragments = 8                 # 8 x 250 genes: the paper's ~252 genes per fragment
    c.model.num_groups = 4
    c.model.head_hidden = 64
    c.optim.learning_rate = 5e-4              # ~100x fewer steps than the paper's 1e-4 schedule
    c.pretrain.epochs = 8
    c.pretrain.window = 512                   # chosen on validation over 128 (docs/choices.md)
    c.pretrain.checkpoint_every = 1000
    c.finetune.epochs = 10
    c.finetune.batch_size = 8
    c.finetune.checkpoint_every = 1000
  elif size == "tiny":
    c.data.feature_dim = 32
    c.data.num_genes = 96
    c.data.bucket_sizes = (128,)
    c.model.dim = 32
    c.model.heads = 4
    c.model.num_landmarks = 8
    c.model.num_fragments = 8
    c.model.num_groups = 2
    c.model.head_hidden = 16
    c.gene_pretrain.epochs = 2
    c.pretrain.epochs = 2
    c.pretrain.window = 64
    c.pretrain.batch_size = 4
    c.finetune.epochs = 2
    c.finetune.batch_size = 2
    c.report.heatmaps = 1
  return c
