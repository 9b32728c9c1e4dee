"""Self-normalising network (Klambauer et al., NeurIPS 2017) for expression vectors.

The genomic encoder of Pathomic Fusion and PORPOISE: blocks of Linear -> SELU -> AlphaDropout with
LeCun-normal weights (N(0, 1 / fan_in), untruncated as the mahmoodlab `init_max_weights`, zero
bias), so activations keep zero mean and unit variance
through depth. (The mahmoodlab code's `SNN_Block` uses ELU with the same init and alpha dropout; we
follow the SNN paper, which both methods cite, and use SELU.)
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

# SELU constants (Klambauer et al., Eq. 2) and the saturation value -lambda * alpha.
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805
ALPHA_PRIME = -SELU_SCALE * SELU_ALPHA
LECUN_NORMAL = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def alpha_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """Alpha dropout: dropped units are set to -lambda*alpha, then an affine map restores the mean
  and variance of a zero-mean, unit-variance input (Klambauer et al., section "New Dropout").

  Args:
    x: [...] activations.
    rate: drop probability q in [0, 1).
    key: PRNG key.

  Returns:
    a * where(keep, x, alpha') + b with a = ((1 - q)(1 + q alpha'^2))^-1/2, b = -a alpha' q.
  """
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(key, keep_prob, x.shape)
  a = (keep_prob * (1.0 + rate * ALPHA_PRIME ** 2)) ** -0.5
  b = -a * ALPHA_PRIME * rate
  return a * jnp.where(keep, x, jnp.asarray(ALPHA_PRIME, x.dtype)) + b


class AlphaDropout(nnx.Module):
  """`alpha_dropout` in training mode, identity after `.eval()` (as nnx.Dropout)."""

  def __init__(self, rate: float, *, deterministic: bool = False, rngs: nnx.Rngs):
    self.rate = rate
    self.deterministic = deterministic
    self.rngs = rngs["dropout"].fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    return alpha_dropout(x, self.rate, self.rngs())


class SNNBlock(nnx.Module):
  """Linear (LeCun-normal weights, zero bias) -> SELU -> AlphaDropout."""

  def __init__(self, in_dim: int, out_dim: int, *, dropout: float, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_dim, out_dim, kernel_init=LECUN_NORMAL,
                             bias_init=nnx.initializers.zeros_init(), rngs=rngs)
    self.drop = AlphaDropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., in_dim] -> [..., out_dim]."""
    return self.drop(jax.nn.selu(self.linear(x)))


class SNN(nnx.Module):
  """Stack of SNN blocks: expression [B, G] -> [B, hidden[-1]] (float32)."""

  def __init__(self, num_genes: int, hidden: Sequence[int] = (256, 256), *, dropout: float = 0.25,
               rngs: nnx.Rngs):
    dims = (num_genes, *hidden)
    self.num_genes = num_genes
    self.out_dim = dims[-1]
    self.blocks = nnx.List([SNNBlock(i, o, dropout=dropout, rngs=rngs)
                            for i, o in zip(dims[:-1], dims[1:])])

  def __call__(self, genes: jax.Array) -> jax.Array:
    """genes: [..., G] normalised expression -> [..., hidden[-1]]."""
    if genes.shape[-1] != self.num_genes:
      raise ValueError(f"SNN built for {self.num_genes} genes, got {genes.shape[-1]}.")
    x = genes.astype(jnp.float32)
    for block in self.blocks:
      x = block(x)
    return x
