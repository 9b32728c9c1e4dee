"""Why L_tri sent no gradient for a whole pre-training epoch, and what would change it.

Two causes look alike in the loss (L_tri = 0, `tri_active` = 0) but need different fixes:
- no batch held an anchor (`tri_anchors` = 0: no example with both a same-label positive and a
  negative among the cases the triplet uses): the batch is too small for its classes; for survival
  the triplet uses the uncensored cases only, their time bins as classes, so a batch of 8 windows
  with 30-70% censored cases and 4 bins rarely holds two uncensored cases of one bin and one of
  another. Only a larger batch (or fewer bins) helps; the margin and normalisation do nothing.
- anchors existed but every hinge was already satisfied: the gene half alone separates the
  classes by more than the margin.
Each fix is named only when it would change the config (a setting that is already on is not
suggested).
"""

import ml_collections


def message(cfg: ml_collections.ConfigDict, epoch: int, means: dict) -> str:
  """The warning for an epoch whose mean `tri_active` is 0.

  Args:
    cfg: the `pretrain` config block (batch_size, margin, triplet_normalize, triplet_on).
    epoch: the epoch.
    means: the epoch's mean metrics (tri_anchors, uncensored (survival), gene_gap).
  """
  if means.get("tri_anchors", 1.0) == 0.0:
    if "uncensored" in means:
      held = (f"held {means['uncensored']:.3g} uncensored cases on average (the survival triplet "
              "uses the uncensored cases only, their time bins as classes)")
      need = "two uncensored cases of one time bin and one of another"
      more = ", or lower survival.num_bins"
    else:
      held = "held no example with both a same-class positive and a negative"
      need = "two cases of one class and one of another"
      more = ""
    return (f"pretrain epoch {epoch}: L_tri had no anchor in any batch, so it sent no gradient: "
            f"each batch of {cfg.batch_size} windows {held}, too few for a triplet ({need}). "
            f"Raise pretrain.batch_size (now {cfg.batch_size}){more}.")
  fixes = []
  if not cfg.get("triplet_normalize", False):
    fixes.append("set pretrain.triplet_normalize=True")
  fixes.append(f"raise pretrain.margin (now {cfg.margin:g})")
  if cfg.get("triplet_on", "pat") != "pat+img":
    fixes.append("add the image-only term (pretrain.triplet_on='pat+img')")
  fixes = "; ".join(fixes)
  return (f"pretrain epoch {epoch}: L_tri was inactive for every anchor of the epoch: the gene "
          f"half alone separates the classes (gene gap {means.get('gene_gap', float('nan')):.3g}, "
          f"squared distance) against a margin of {cfg.margin:g}, so the image branch gets no "
          f"triplet gradient. {fixes[0].upper()}{fixes[1:]}.")
