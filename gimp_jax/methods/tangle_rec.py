"""TANGLE-Rec (TANGLE's baseline): the slide encoder trained to predict the expression vector (MSE);
then the slide encoder alone."""

import functools

from gimp_jax.objectives import tangle
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import
from gimp_jax.objectives.tangle import rec_loss as pretrain_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "tangle"
build = functools.partial(tangle.build, variant="tangle_rec")
