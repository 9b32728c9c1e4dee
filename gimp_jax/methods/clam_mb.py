"""CLAM-MB (Lu et al. 2021): CLAM-SB's model with one attention branch per class, fine-tuned with
the bag CE plus the instance clustering loss."""

import functools

from gimp_jax.methods import clam_sb
from gimp_jax.objectives.mil import make_clam_loss as finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "clam"
pretrain_loss = None
build = functools.partial(clam_sb.build, multi_branch=True)
