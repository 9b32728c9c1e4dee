"""Intra (TANGLE's slide-only baseline): the slide encoder trained by contrasting two
patch-subsampled views of each slide; no expression at all."""

import functools

from gimp_jax.objectives import tangle
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import
from gimp_jax.objectives.tangle import intra_loss as pretrain_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "tangle"
build = functools.partial(tangle.build, variant="intra")

pretrain_uses = "slides"  # no expression needed (gimp_jax.train.partial)
