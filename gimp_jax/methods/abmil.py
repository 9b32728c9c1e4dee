"""ABMIL (Ilse et al. 2018): gated attention pooling of the patches, trained end to end."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = ""
pretrain_loss = None


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  del method_cfg, genes, dtype
  m = model_cfg
  return mil.ABMIL(data_cfg.feature_dim, m.dim, num_classes, dropout=m.head_dropout,
                   rngs=nnx.Rngs(params=seed, dropout=seed + 1))
