"""Modality dropout: a learned "missing" token in place of the gene embedding, so one model predicts
from both modalities or from the slide alone.

A patient without expression carries a non-finite (NaN) expression row (`data.allow_missing`, or a
slide-only patient given to `predict`); its gene embedding is replaced by the token. In training
(`model.modality_dropout` = p > 0) the gene embedding of every patient is also replaced with
probability p, independently per patient, so the head learns to classify from [CLS_img; missing]
as well as from [CLS_img; CLS_ge]. In evaluation only the missing patients get the token: a patient
with expression is predicted exactly as without this module.
"""

from flax import nnx
import jax
import jax.numpy as jnp


def gene_presence(genes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(present [B] bool: the row is finite, genes [B, G] with the missing rows zeroed)."""
  present = jnp.all(jnp.isfinite(genes), axis=-1)
  return present, jnp.where(present[:, None], genes, 0.0)


class ModalityDropout(nnx.Module):
  """embedding [B, ...] -> the same with rows replaced by a learned token [...] (zero init) where the
  modality is missing and, in training, with probability `rate` per row."""

  def __init__(self, shape: tuple[int, ...], rate: float, *, rngs: nnx.Rngs):
    self.token = nnx.Param(jnp.zeros(shape))
    self.rate = rate
    self.deterministic = False
    self.rngs = rngs["dropout"].fork()

  def __call__(self, embedding: jax.Array, present: jax.Array) -> jax.Array:
    keep = present
    if not self.deterministic and self.rate > 0.0:
      keep = keep & ~jax.random.bernoulli(self.rngs(), self.rate, present.shape)
    keep = keep.reshape(keep.shape + (1,) * (embedding.ndim - 1))
    return jnp.where(keep, embedding, self.token[...].astype(embedding.dtype))


def encode_genes(encoder, dropout: ModalityDropout | None, genes: jax.Array) -> jax.Array:
  """The gene embedding of `encoder(genes)`, missing rows (and dropped ones) replaced by the token
  when the model has one; without one, the encoder sees the genes as given."""
  if dropout is None:
    return encoder(genes)
  present, genes = gene_presence(genes)
  return dropout(encoder(genes), present)
