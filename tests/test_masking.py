"""Masked patch modelling window and mask sampling (NumPy, on the host)."""

import numpy as np
import pytest

from gimp_jax import masking


def draw(n, window=6000, ratio=0.5, seed=0, epoch=0, position=0):
  return masking.sample_mpm(masking.window_rng(seed, epoch, position), n, window, ratio)


@pytest.mark.parametrize("n", [10_000, 6000, 6001])
def test_long_bag_gives_contiguous_window(n):
  idx, mask = draw(n, position=n)
  assert idx.shape == (6000,) and mask.shape == (6000,) and mask.dtype == bool
  assert np.all(np.diff(idx) == 1) and 0 <= idx[0] <= n - 6000
  assert int(mask.sum()) == 3000


def test_short_bag_is_tiled_from_its_start():
  idx, _ = draw(485)
  np.testing.assert_array_equal(idx, np.arange(6000) % 485)
  idx, _ = draw(1, window=5)
  np.testing.assert_array_equal(idx, np.zeros(5))


@pytest.mark.parametrize("window,ratio,expected", [(7, 0.5, 4), (512, 0.5, 256), (10, 0.25, 2),
                                                   (6000, 0.5, 3000), (9, 0.0, 0), (9, 1.0, 9)])
def test_exact_number_masked(window, ratio, expected):
  for position in range(20):
    _, mask = draw(100, window, ratio, position=position)
    assert int(mask.sum()) == expected == masking.num_masked(window, ratio) == round(ratio * window)


def test_deterministic_per_seed_epoch_position():
  a = draw(1000, 64, seed=3, epoch=2, position=5)
  b = draw(1000, 64, seed=3, epoch=2, position=5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  for other in (dict(seed=4, epoch=2, position=5), dict(seed=3, epoch=3, position=5),
                dict(seed=3, epoch=2, position=6)):
    c = draw(1000, 64, **other)
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])), other


def test_different_positions_draw_different_windows():
  starts = {int(draw(10_000, 64, position=p)[0][0]) for p in range(50)}
  masks = {draw(10_000, 64, position=p)[1].tobytes() for p in range(50)}
  assert len(starts) > 45 and len(masks) == 50


def test_start_and_mask_positions_are_spread_uniformly():
  idx, mask = map(np.stack, zip(*(draw(20, 10, 0.5, seed=7, position=p) for p in range(2000))))
  counts = np.bincount(idx[:, 0], minlength=11)
  assert counts.size == 11 and counts.min() > 100  # 11 possible starts, ~182 each
  np.testing.assert_allclose(mask.mean(0), 0.5, atol=0.06)


def test_empty_bag_is_refused():
  with pytest.raises(ValueError, match="num_patches"):
    draw(0)


def np_slots(mpm, real, k):
  """Independent NumPy version: masked real positions, then padding; padding, then visible real."""
  masked, visible, inverse = [], [], []
  for m, r in zip(mpm, real):
    pad = np.flatnonzero(~r)
    first = np.concatenate([np.flatnonzero(m & r), pad])[:k]
    rest = np.concatenate([pad[len(first) - (m & r).sum():], np.flatnonzero(~m & r)])
    order = np.concatenate([first, rest])
    masked.append(first)
    visible.append(rest)
    inverse.append(np.argsort(order))
  return np.array(masked), np.array(visible), np.array(inverse)


def test_mpm_slots_match_numpy_on_full_and_padded_windows():
  window, ratio = 20, 0.5
  k = masking.num_masked(window, ratio)
  rng = np.random.default_rng(0)
  mpm, real = np.zeros((3, window), bool), np.zeros((3, window), bool)
  for j, n in enumerate([20, 13, 3]):  # a full window, a short and a very short padded one
    real[j, :n] = True
    mpm[j, :n] = masking.sample_mpm(rng, n, n, ratio)[1]
  got = masking.mpm_slots(mpm, k, real)
  masked, visible, inverse = np_slots(mpm, real, k)
  np.testing.assert_array_equal(got.masked, masked)
  np.testing.assert_array_equal(got.visible, visible)
  np.testing.assert_array_equal(got.inverse, inverse)
  np.testing.assert_array_equal(got.masked_valid, np.take_along_axis(mpm & real, masked, 1))
  np.testing.assert_array_equal(got.visible_valid, np.take_along_axis(~mpm & real, visible, 1))
  assert bool(got.fits)
  # Without padding: all positions real; one row with K + 1 masked, then one with K - 1, overflow.
  for delta in (1, -1):
    over = np.argsort(rng.random((2, window)), axis=1) < k
    over[1] = np.arange(window) < k + delta
    assert bool(masking.mpm_slots(over[:1], k).fits)
    assert not bool(masking.mpm_slots(over, k).fits)
