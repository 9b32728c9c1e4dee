"""clip: GiMP's two encoders pre-trained with objectives.clip (Table 1, "w/ pre-train"), then the MLP
head on CLS_pat fine-tuned as GiMP's."""

from gimp_jax.objectives.clip import build  # pylint: disable=unused-import
from gimp_jax.objectives.clip import make_loss as pretrain_loss  # pylint: disable=unused-import
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import

CONFIG_BLOCK = "clip"
