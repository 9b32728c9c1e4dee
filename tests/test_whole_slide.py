"""The largest TCGA-NSCLC slide (148,569 patches) goes through the aggregator; memory is linear."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from gimp_jax.models.aggregator import PatchAggregator

LARGEST = 148_569


def _temp_bytes(agg, n, in_dim):
  fn = jax.jit(lambda m, x: m(x)[0])
  compiled = fn.lower(agg, jax.ShapeDtypeStruct((1, n, in_dim), jnp.float32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_paper_size_aggregator_memory_is_linear_and_far_below_n_squared():
  agg = PatchAggregator(1024, 512, heads=8, num_landmarks=256, dropout=0.0, rngs=nnx.Rngs(0))
  agg.eval()
  full = _temp_bytes(agg, LARGEST, 1024)
  half = _temp_bytes(agg, LARGEST // 2, 1024)
  assert full < 8 * 2 ** 30  # float32; one N x N float32 matrix alone would be 88 GB
  assert 1.6 < full / half < 2.4, (full, half)


def test_largest_slide_runs_through_the_aggregator():
  agg = PatchAggregator(8, 32, heads=2, num_landmarks=64, dropout=0.0, rngs=nnx.Rngs(0))
  agg.eval()
  x = jax.random.normal(jax.random.key(0), (1, LARGEST, 8))
  cls, tokens = jax.jit(lambda m, x: m(x))(agg, x)
  assert cls.shape == (1, 32) and tokens.shape == (1, LARGEST, 32)
  assert np.isfinite(np.asarray(cls)).all()
