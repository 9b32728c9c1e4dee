"""GiMP's patch aggregator without GroupMSA, no pre-training, pathology only (Table 1), with
GiMP's exact CLS attention (`nsclc.RECIPE`; the paper's Nyström CLS row:
`--config.model.cls_attention=nystrom`)."""

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.image_only(nsclc.published(arg))
  c.method = "gimp"
  c.model.cls_attention = nsclc.RECIPE["model.cls_attention"]
  return c
