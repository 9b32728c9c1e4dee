"""GiMP: supervised GroupMSA (frozen), MPM + gene-induced triplet pre-training, fine-tuning of the
MLP head on CLS_pat (and, through config flags, its Table 2 ablations)."""

from collections.abc import Sequence

import ml_collections

from gimp_jax.models.build import build_gimp
from gimp_jax.objectives.gimp import make_loss as pretrain_loss  # pylint: disable=unused-import
from gimp_jax.objectives.supervised import finetune_loss  # pylint: disable=unused-import


CONFIG_BLOCK = "pretrain"  # the pre-training objective (objectives.gimp.make_loss)


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  """GiMP (the `model` block) on the gene list `genes`."""
  del method_cfg
  return build_gimp(model_cfg, data_cfg.feature_dim, len(genes), num_classes, seed, dtype=dtype)


# With data.allow_missing: MPM on every training slide, the triplet terms on the labelled pairs
# (objectives.gimp masks the rest); see gimp_jax.train.partial.
pretrain_uses = "slides"
