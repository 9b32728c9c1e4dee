"""Masked patch modelling window and mask sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax.masking import sample_mpm


@pytest.mark.parametrize("n", [10_000, 6000, 6001])
def test_long_bag_gives_contiguous_window(n):
  idx, mask = sample_mpm(jax.random.key(n), n, 6000, 0.5)
  idx = np.asarray(idx)
  assert idx.shape == (6000,) and mask.shape == (6000,) and mask.dtype == bool
  assert np.all(np.diff(idx) == 1) and 0 <= idx[0] <= n - 6000
  assert int(mask.sum()) == 3000


def test_short_bag_is_tiled():
  idx, _ = sample_mpm(jax.random.key(0), 485, 6000, 0.5)
  np.testing.assert_array_equal(np.asarray(idx), np.arange(6000) % 485)


@pytest.mark.parametrize("window,ratio,expected", [(7, 0.5, 4), (512, 0.5, 256), (10, 0.25, 2)])
def test_exact_number_masked(window, ratio, expected):
  _, mask = sample_mpm(jax.random.key(1), 100, window, ratio)
  assert int(mask.sum()) == expected == round(ratio * window)


def test_same_key_same_result_and_traced_num_patches():
  f = jax.jit(lambda k, n: sample_mpm(k, n, 64, 0.5))
  a = f(jax.random.key(3), jnp.int32(1000))
  b = f(jax.random.key(3), jnp.int32(1000))
  c = f(jax.random.key(4), jnp.int32(1000))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))


def test_start_and_mask_positions_are_spread_uniformly():
  keys = jax.random.split(jax.random.key(7), 2000)
  idx, mask = jax.vmap(lambda k: sample_mpm(k, 20, 10, 0.5))(keys)
  starts = np.asarray(idx[:, 0])
  counts = np.bincount(starts, minlength=11)
  assert counts.min() > 100  # 11 possible starts, ~182 each
  per_position = np.asarray(mask).mean(0)
  np.testing.assert_allclose(per_position, 0.5, atol=0.06)
