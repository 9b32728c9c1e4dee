"""CLAM-SB (Lu et al. 2021): one attention branch + instance clustering loss (Table 1)."""

import ml_collections

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = methods.image_only(nsclc.published(arg))
  c.method = "clam_sb"
  c.clam = ml_collections.ConfigDict()
  c.clam.k_sample = 8                         # patches per pseudo-labelled set [CLAM]
  c.clam.bag_weight = 0.7                     # L = 0.7 bag CE + 0.3 instance loss [CLAM]
  c.clam.instance_loss = "svm"                # smooth top-1 SVM (CLAM default) | "ce"
  c.clam.subtyping = True                     # out-of-class term (subtyping task, as NSCLC)
  return c
