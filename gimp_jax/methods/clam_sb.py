"""CLAM-SB (Lu et al. 2021): attention pooling with a single branch, fine-tuned with the bag CE plus
the instance clustering loss."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.mil import make_clam_loss as finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "clam"  # the instance loss (objectives.mil.make_clam_loss)
pretrain_loss = None


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32",
          multi_branch: bool = False):
  del method_cfg, genes, dtype
  m = model_cfg
  return mil.CLAM(data_cfg.feature_dim, m.dim, num_classes, multi_branch=multi_branch,
                  dropout=m.head_dropout, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
