"""Pathomic Fusion (Chen et al. 2020) in the attention-MIL setting: the same model family as
PORPOISE with its own fusion settings (config.fusion), trained end to end."""

from gimp_jax.models.fusion import build_attention_fusion as build  # pylint: disable=unused-import
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "fusion"
pretrain_loss = None
