"""CLAM-SB (Lu et al. 2021): one attention branch + instance clustering loss (Table 1)."""

import ml_collections

from configs.methods import sizes


def get_config(size: str = "paper"):
  c = sizes.image_only(sizes.base(size))
  c.method = "clam_sb"
  c.clam = ml_collections.ConfigDict()
  c.clam.k_sample = 8                         # patches per pseudo-labelled set [CLAM]
  c.clam.bag_weight = 0.7                     # L = 0.7 bag CE + 0.3 instance loss [CLAM]
  c.clam.instance_loss = "svm"                # smooth top-1 SVM (CLAM default) | "ce"
  c.clam.subtyping = True                     # out-of-class term (subtyping task, as NSCLC)
  return c
