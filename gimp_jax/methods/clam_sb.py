"""CLAM-SB (Lu et al. 2021): attention pooling with a single branch, fine-tuned with the bag CE plus
the instance clustering loss."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.mil import make_clam_loss as finetune_loss  # pylint: disable=unused-import

pretrain_loss = None


def build(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int, seed: int,
          multi_branch: bool = False):
  del genes
  m = config.model
  return mil.CLAM(config.data.feature_dim, m.dim, num_classes, multi_branch=multi_branch,
                  dropout=m.head_dropout, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
