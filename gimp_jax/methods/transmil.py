"""TransMIL (Shao et al. 2021): Nyström-attention layers with PPEG, CLS token, trained end to end."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import

pretrain_loss = None


def build(config: ml_collections.ConfigDict, genes: Sequence[str], num_classes: int, seed: int):
  del genes
  m = config.model
  return mil.TransMIL(config.data.feature_dim, m.dim, num_classes, heads=m.heads,
                      num_landmarks=m.num_landmarks, dropout=m.attn_dropout,
                      rngs=nnx.Rngs(params=seed, dropout=seed + 1))
