"""Test-size GiMP: the nsclc settings shrunk so a step runs in milliseconds on a CPU."""

from configs import nsclc


def get_config():
  c = nsclc.get_config()
  c.data.feature_dim = 32
  c.data.num_genes = 96
  c.model.dim = 32
  c.model.heads = 4
  c.model.num_landmarks = 8
  c.model.num_fragments = 8
  c.model.num_groups = 2
  c.model.head_hidden = 16
  c.data.bucket_sizes = (128,)
  c.pretrain.window = 64
  c.pretrain.batch_size = 4
  c.gene_pretrain.epochs = 2
  c.pretrain.epochs = 2
  c.finetune.epochs = 2
  c.finetune.batch_size = 2
  c.report.heatmaps = 1
  return c
