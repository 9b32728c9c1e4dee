"""GiMP's pre-training objective: L_pre = w_tri L_tri + w_rec L_rec (GiMP Eq. 3 and 4), with the
diagnostics that show whether each term does work.

Eq. 3 as written is the plain sum (w_tri = w_rec = 1). Choices where the paper is silent are config
fields of `config.pretrain` (configs/nsclc.py says which value was chosen and why):
- `triplet_normalize`: each half of CLS_pat = [CLS_img; CLS_ge] L2-normalised before the squared
  distances. Both halves end in a LayerNorm, so unnormalised each half's squared norm is ~d and the
  paper's margin of 0.8 is tiny beside the gene half's class gap (the hinge is then never active).
- `triplet_on`: "pat" (the paper: CLS_pat), "img" (CLS_img alone, Table 2's image-only row) or
  "pat+img" (both terms, summed).
- `img_variance_weight`: VICReg's variance hinge on CLS_img over the batch (0 = off), against the
  collapse of the slide token under MPM.
"""

import jax
import jax.numpy as jnp
import ml_collections

from gimp_jax import losses
from gimp_jax import masking
from gimp_jax.models.gimp import cls_pat
from gimp_jax.models.modality_dropout import gene_presence


def triplet_inputs(cls_img: jax.Array, cls_ge: jax.Array | None,
                   normalize: bool) -> tuple[jax.Array, jax.Array | None]:
  """The two halves as the triplet sees them: [B, d] each, L2-normalised when `normalize`."""
  if not normalize:
    return cls_img, cls_ge
  return losses.l2_normalize(cls_img), None if cls_ge is None else losses.l2_normalize(cls_ge)


def make_loss(pretrain_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """L_pre over pre-training windows, either term switchable for the ablations.

  Batch: patches [B, L, D], mpm_mask [B, L] bool, optional patch_mask [B, L] bool (True = real
  patch, padding trailing: a window shorter than L), genes [B, G], label [B] (survival: the time
  bin, with censorship [B]: the triplet then uses the uncensored cases only, the bins being their
  classes; a censored case's bin is only a lower bound on its event time). With partial data
  (`data.allow_missing`) a row of NaN genes or a label of -1 takes part in L_rec and the variance
  term only; the triplet terms see the labelled cases (with expression, for CLS_pat).
  Metrics: loss; rec_loss (L_rec); tri_loss (L_tri) and tri_active (fraction of anchors whose hinge
  is active); tri_anchors (fraction of the batch that can anchor a triplet, `losses.triplet_anchors`)
  and, survival, uncensored (the cases of the batch the triplet uses); img_tri_loss with "pat+img"; gene_gap (mean nearest-negative minus
  farthest-positive squared distance of the CLS_ge half, to compare with the margin); img_spread
  (`losses.relative_spread` of CLS_img: ~2 for independent slide tokens, 0 when collapsed);
  img_var_loss when its weight is set.

  With MPM the patch embedding runs on the visible patches only and the decoder on the masked ones
  only (`masking.mpm_slots`, K = num_masked(L, mask_ratio) slots): the same loss as embedding and
  decoding every position, for windows drawn as `masking.sample_mpm` draws them (at most K masked
  and L - K visible real patches per row). A batch outside that bound gets a NaN L_rec, which stops
  training (`loop.fit`), rather than a loss over part of its masked patches.
  """
  cfg = pretrain_cfg

  def loss_fn(model, batch):
    labels = batch["label"]
    present, genes = gene_presence(batch["genes"])
    use = labels >= 0  # label -1: unlabelled (partial data)
    if "censorship" in batch:
      use = use & (batch["censorship"] == 0)
    patches, patch_mask = batch["patches"], batch.get("patch_mask")
    slots = None
    if cfg.use_mpm:
      slots = masking.mpm_slots(batch["mpm_mask"],
                                masking.num_masked(patches.shape[1], cfg.mask_ratio), patch_mask)
    cls_img, tokens = model.aggregator(patches, mpm_mask=slots, patch_mask=patch_mask)
    cls_ge = None
    if model.gene_encoder is not None and (cfg.use_triplet and "pat" in cfg.triplet_on):
      cls_ge = model.gene_encoder(genes)
    img, ge = triplet_inputs(cls_img, cls_ge, cfg.triplet_normalize)
    metrics = {"img_spread": losses.relative_spread(cls_img)}
    loss = jnp.zeros((), jnp.float32)
    if cfg.use_mpm:
      take = lambda x: jnp.take_along_axis(x, slots.masked[..., None], axis=1)  # noqa: E731
      rec = losses.masked_l1(model.reconstruct(take(tokens)), take(patches), slots.masked_valid)
      rec = jnp.where(slots.fits, rec, jnp.nan)
      metrics["rec_loss"] = rec
      loss = loss + cfg.rec_weight * rec
    if cfg.use_triplet:
      terms = cfg.triplet_on.split("+")
      if ge is not None:
        metrics["gene_gap"] = losses.separation_gap(ge, labels, use & present)
      main = cls_pat(img, ge) if "pat" in terms else img
      pairs = use & present if ge is not None and "pat" in terms else use
      tri, active = losses.triplet_terms(main, labels, cfg.margin, cfg.mining, pairs)
      metrics.update(tri_loss=tri, tri_active=active,
                     tri_anchors=jnp.mean(losses.triplet_anchors(labels, pairs)))
      if "censorship" in batch:
        metrics["uncensored"] = jnp.sum(use).astype(jnp.float32)
      loss = loss + cfg.tri_weight * tri
      if "pat" in terms and "img" in terms:
        img_tri = losses.triplet_loss(img, labels, cfg.margin, cfg.mining, use)
        metrics["img_tri_loss"] = img_tri
        loss = loss + cfg.tri_weight * img_tri
    if cfg.img_variance_weight:
      var = losses.variance_hinge(cls_img)
      metrics["img_var_loss"] = var
      loss = loss + cfg.img_variance_weight * var
    metrics["loss"] = loss
    return loss, metrics
  return loss_fn
