"""Masked patch modelling (MPM) sampling, GiMP section 2.3.

A contiguous window of `window` patches is cut from the bag at a uniform random start; a bag shorter
than the window is repeated (tiled) until it fills it, as the paper duplicates short sequences. Inside
the window exactly `round(ratio * window)` positions, chosen uniformly without replacement, are masked.

Windows are drawn on the host with NumPy, in the input pipeline: the window of the bag at position
`position` of epoch `epoch` comes from `window_rng(seed, epoch, position)`, so a resumed epoch draws
the same windows as an uninterrupted one.

In the jitted loss, `mpm_slots` turns a batch's masks into static-size position lists, so that the
patch embedding runs on the visible patches only and the decoder on the masked ones only (only the
masked tokens enter L_rec; a masked patch's embedding is replaced by the mask token anyway).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MPM_STREAM = 0x6D706D  # separates the windows' random stream from the others drawn from the seed


def num_masked(window: int, ratio: float) -> int:
  """Number of masked positions in a window: round(ratio * window) (Python rounding)."""
  return int(round(ratio * window))


def window_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
  """The generator of the MPM window at `position` of `epoch` in a run seeded with `seed`."""
  return np.random.default_rng([MPM_STREAM, int(seed), int(epoch), int(position)])


def sample_mpm(rng: np.random.Generator, num_patches: int, window: int = 6000,
               ratio: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Samples an MPM window and its mask.

  Args:
    rng: NumPy generator (see `window_rng`).
    num_patches: number of patches N in the bag (>= 1).
    window: window length L.
    ratio: fraction of the window to mask.

  Returns:
    indices: [L] int64 patch indices into the bag, `(start + arange(L)) % N` with `start` uniform in
      [0, max(N - L, 0)]; contiguous when N >= L, the bag tiled from its start when N < L.
    mask: [L] bool, True at exactly round(ratio * L) masked positions.
  """
  n = int(num_patches)
  if n < 1:
    raise ValueError(f'num_patches: {n}, expected >= 1')
  start = int(rng.integers(0, max(n - window, 0) + 1))
  indices = (start + np.arange(window, dtype=np.int64)) % n
  mask = rng.permutation(window) < num_masked(window, ratio)
  return indices, mask


def sample_uniform(rng: np.random.Generator, num_patches: int, count: int) -> np.ndarray:
  """TANGLE's patch subsampling: `count` patch indices [count] int64 drawn uniformly with
  replacement from [0, num_patches), sorted (the order does not matter to attention pooling and
  sorted rows read faster)."""
  n = int(num_patches)
  if n < 1:
    raise ValueError(f'num_patches: {n}, expected >= 1')
  return np.sort(rng.integers(0, n, size=count, dtype=np.int64))


class Slots(NamedTuple):
  """Static-size positions of a batch of MPM windows [B, L] with K = `num_masked(L, ratio)`.

  masked: [B, K] int32, the masked real positions (ascending), then fillers.
  masked_valid: [B, K] bool, True where `masked` holds a masked real position.
  visible: [B, L - K] int32, the fillers, then the visible real positions (ascending).
  visible_valid: [B, L - K] bool, True where `visible` holds a visible real position.
  inverse: [B, L] int32, the position of each window position in concat([masked, visible], 1).
  fits: [] bool, every row has at most K masked and at most L - K visible real positions (so
    `masked` and `visible` hold all of them). Fillers are padding positions.
  """
  masked: jax.Array
  masked_valid: jax.Array
  visible: jax.Array
  visible_valid: jax.Array
  inverse: jax.Array
  fits: jax.Array


def mpm_slots(mpm_mask: jax.Array, num_masked_max: int,
              patch_mask: jax.Array | None = None) -> Slots:
  """The `Slots` of `mpm_mask` [B, L] bool (True = masked) with K = `num_masked_max`.

  A full window drawn by `sample_mpm` has exactly K = num_masked(L, ratio) masked positions. A
  window of n < L real patches padded to L (`patch_mask` [B, L], True = real) with round(ratio * n)
  masked has at most K masked and at most L - K visible real positions, since both counts grow with
  n; its padding positions fill the remaining slots. Any other mask sets `fits` False.
  """
  length = mpm_mask.shape[1]
  real = jnp.ones_like(mpm_mask) if patch_mask is None else patch_mask
  # 0: masked real, 1: padding, 2: visible real; a stable sort keeps each group ascending.
  kind = jnp.where(real, jnp.where(mpm_mask, 0, 2), 1).astype(jnp.int32)
  order = jnp.argsort(kind, axis=1, stable=True).astype(jnp.int32)           # [B, L]
  inverse = jnp.argsort(order, axis=1).astype(jnp.int32)
  sorted_kind = jnp.take_along_axis(kind, order, axis=1)
  k = num_masked_max
  fits = jnp.all((jnp.sum(kind == 0, axis=1) <= k) & (jnp.sum(kind == 2, axis=1) <= length - k))
  return Slots(masked=order[:, :k], masked_valid=sorted_kind[:, :k] == 0,
               visible=order[:, k:], visible_valid=sorted_kind[:, k:] == 2, inverse=inverse,
               fits=fits)
