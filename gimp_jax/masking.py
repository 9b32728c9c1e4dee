"""Masked patch modelling (MPM) sampling, GiMP section 2.3.

A contiguous window of `window` patches is cut from the bag at a uniform random start; a bag shorter
than the window is repeated (tiled) until it fills it, as the paper duplicates short sequences. Inside
the window exactly `round(ratio * window)` positions, chosen uniformly without replacement, are masked.

Windows are drawn on the host with NumPy, in the input pipeline: the window of the bag at position
`position` of epoch `epoch` comes from `window_rng(seed, epoch, position)`, so a resumed epoch draws
the same windows as an uninterrupted one.
"""

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
