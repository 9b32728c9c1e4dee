"""The paper's stages at CPU size: a few epochs each, window 256 (README demo and CI end to end).

python -m gimp_jax.data.synthetic --out data/synthetic
python -m gimp_jax.main --config=configs/quick.py --workdir=runs/quick
"""

from configs import nsclc


def get_config():
  c = nsclc.get_config()
  c.data.features_dir = "data/synthetic/features"
  c.data.expression = "data/synthetic/expression.tsv"
  c.data.labels = "data/synthetic/labels.csv"
  c.data.num_genes = 0                 # all genes of the table (the synthetic cohort has 2,000)
  c.model.dim = 128
  c.model.heads = 4
  c.model.num_landmarks = 64
  c.model.num_fragments = 8            # 8 fragments of 250 genes (the paper's ~252 genes each)
  c.model.num_groups = 2
  c.model.head_hidden = 64
  c.optim.learning_rate = 5e-4
  c.gene_pretrain.epochs = 3           # GroupMSA fits the 72 training patients in ~3 epochs; more makes
                                       # CLS_ge separate the training set alone and the head ignores CLS_img
  c.pretrain.epochs = 4
  c.data.bucket_sizes = (320, 640)    # two padded shapes: few compilations
  c.pretrain.window = 256
  c.pretrain.batch_size = 8
  c.finetune.epochs = 5
  c.finetune.batch_size = 4
  c.report.heatmaps = 2
  return c
