"""DSMIL (Li et al. 2021): max-instance and bag streams; fine-tuned on 0.5 bag + 0.5 max CE."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.mil import make_dsmil_loss as finetune_loss  # pylint: disable=unused-import

pretrain_loss = None


def build(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int, seed: int):
  del genes
  return mil.DSMIL(config.data.feature_dim, num_classes,
                   rngs=nnx.Rngs(params=seed, dropout=seed + 1))
