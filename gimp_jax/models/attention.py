"""The attention protocol: the patch scores a model gives a bag, what the heatmaps draw.

Every model answers `model(patches, genes, patch_mask) -> (logits, embedding)`. A model with
attention over the patches also answers

  model.attention(patches [B, N, D], genes [B, G] | None, patch_mask [B, N] | None) -> [B, N]

float32 scores, one per patch, zero at padded patches, larger = more attended:

- mil.ABMIL (abmil): the gated attention softmax;
- mil.CLAM (clam_sb, clam_mb): the gated attention; CLAM-MB: the predicted class's branch;
- mil.DSMIL (dsmil): the bag stream's attention to the predicted class's critical instance;
- mil.TransMIL (transmil): the CLS row of the last Nyström layer, mean over heads, a patch's
  copies in the square layout summed;
- gimp.GiMP (gimp, clip, mgca, refers, itm): the CLS rows of the aggregator's Nyström layers,
  mean over layers and heads;
- fusion.AttentionFusion (porpoise, pathomic): the pathology branch's gated attention softmax;
- fusion.MCAT (mcat): each gene signature's co-attention over the patches, mean over signatures;
- tangle.Tangle (tangle, tangle_rec, intra): the slide encoder's gated attention softmax.

`supports(model)` is the one place that asks whether a model answers it (the gene-only classifier
does not); the report and the heatmaps call `supports` and `scores`, never an attribute check.
"""

from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp


@runtime_checkable
class Attending(Protocol):
  """A model that scores the patches of a bag."""

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """patches [B, N, D], genes [B, G] or None, patch_mask [B, N] or None -> scores [B, N]."""


def supports(model) -> bool:
  """Whether `model` answers the attention protocol."""
  return isinstance(model, Attending)


@jax.jit
def scores(model: Attending, patches: jax.Array, genes: jax.Array | None,
           patch_mask: jax.Array | None) -> jax.Array:
  """`model.attention(...)` jitted, in float32.

  Args:
    model: a model that `supports` the protocol.
    patches: [B, N, D]; genes: [B, G] or None; patch_mask: [B, N] bool or None.

  Returns:
    [B, N] scores.
  """
  return model.attention(patches, genes, patch_mask).astype(jnp.float32)
