"""TANGLE (Jaume et al., CVPR 2024): ABMIL slide encoder aligned with an MLP expression encoder by
symmetric InfoNCE; then the slide encoder alone (probe stage, or a linear head fine-tuned on it)."""

from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import
from gimp_jax.objectives.tangle import build  # pylint: disable=unused-import
from gimp_jax.objectives.tangle import tangle_loss as pretrain_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "tangle"
