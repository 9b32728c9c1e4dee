"""Masked patch modelling (MPM) sampling, GiMP section 2.3.

A contiguous window of `window` patches is cut from the bag at a uniform random start; a bag shorter
than the window is repeated (tiled) until it fills it, as the paper duplicates short sequences. Inside
the window exactly `round(ratio * window)` positions, chosen uniformly without replacement, are masked.
"""

import jax
import jax.numpy as jnp


def num_masked(window: int, ratio: float) -> int:
  """Number of masked positions in a window: round(ratio * window) (Python rounding)."""
  return int(round(ratio * window))


def sample_mpm(key: jax.Array, num_patches: jax.Array | int, window: int = 6000,
               ratio: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """Samples an MPM window and its mask.

  Pure and jittable; `num_patches` may be a traced integer (>= 1).

  Args:
    key: PRNG key.
    num_patches: number of patches N in the bag.
    window: window length L (static).
    ratio: fraction of the window to mask (static).

  Returns:
    indices: [L] int32 patch indices into the bag, `(start + arange(L)) % N` with `start` uniform in
      [0, max(N - L, 0)]; contiguous when N >= L, the bag tiled from its start when N < L.
    mask: [L] bool, True at exactly round(ratio * L) masked positions.
  """
  start_key, mask_key = jax.random.split(key)
  n = jnp.asarray(num_patches, jnp.int32)
  start = jax.random.randint(start_key, (), 0, jnp.maximum(n - window, 0) + 1, dtype=jnp.int32)
  indices = (start + jnp.arange(window, dtype=jnp.int32)) % n
  mask = jax.random.permutation(mask_key, window) < num_masked(window, ratio)
  return indices, mask
