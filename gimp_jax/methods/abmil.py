"""ABMIL (Ilse et al. 2018): gated attention pooling of the patches, trained end to end."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import

pretrain_loss = None


def build(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int, seed: int):
  del genes
  m = config.model
  return mil.ABMIL(config.data.feature_dim, m.dim, num_classes, dropout=m.head_dropout,
                   rngs=nnx.Rngs(params=seed, dropout=seed + 1))
