"""MCAT (Chen et al. 2021): genomic-guided co-attention over the patches (config.mcat), trained
end to end."""

from gimp_jax.models.fusion import build_mcat as build  # pylint: disable=unused-import
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "mcat"
pretrain_loss = None
