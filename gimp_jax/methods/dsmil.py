"""DSMIL (Li et al. 2021): max-instance and bag streams; fine-tuned on 0.5 bag + 0.5 max CE."""

from collections.abc import Sequence

import ml_collections
from flax import nnx

from gimp_jax.models import mil
from gimp_jax.objectives.mil import make_dsmil_loss as finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = ""
pretrain_loss = None


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  del model_cfg, method_cfg, genes, dtype
  return mil.DSMIL(data_cfg.feature_dim, num_classes,
                   rngs=nnx.Rngs(params=seed, dropout=seed + 1))
