"""GiMP as the paper trains it: supervised GroupMSA, frozen through pre-training and fine-tuning;
no modality dropout; weight decay 1e-4 (nsclc.published)."""

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  return nsclc.published(arg)
