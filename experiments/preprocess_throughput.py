"""Patches per second of the ResNet50-trunk feature extractor (random weights, random patches).

  python experiments/preprocess_throughput.py --batch_size=32 --patch_size=256 --batches=5

Times whole batches after one warm-up (compile) call, blocking on each result. The compute dtype
is the library default (float32 on CPU, bfloat16 on accelerators) unless --compute_dtype says so.
"""

import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from gimp_jax.preprocess import encoders
from gimp_jax.preprocess import resnet

_BATCH = flags.DEFINE_integer('batch_size', 32, 'Patches per batch.')
_PATCH = flags.DEFINE_integer('patch_size', 256, 'Patch side in pixels.')
_BATCHES = flags.DEFINE_integer('batches', 5, 'Timed batches after the warm-up batch.')
_DTYPE = flags.DEFINE_enum('compute_dtype', 'auto', ['auto', 'float32', 'bfloat16'],
                           'Compute dtype; auto = float32 on CPU, bfloat16 on accelerators.')


def main(argv):
  del argv
  dtype = (resnet.default_compute_dtype() if _DTYPE.value == 'auto'
           else jnp.dtype(_DTYPE.value))
  preset = encoders.PRESETS['resnet50_trunc']
  features = encoders.make_feature_fn(preset,
                                     encoders.build(preset, dtype=dtype, rngs=nnx.Rngs(0)))
  images = np.random.default_rng(0).integers(
      0, 256, (_BATCH.value, _PATCH.value, _PATCH.value, 3), dtype=np.uint8)
  start = time.perf_counter()
  features(images).block_until_ready()
  compile_s = time.perf_counter() - start
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(_BATCHES.value):
    features(images).block_until_ready()
  elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  patches = _BATCHES.value * _BATCH.value
  # CPU seconds per patch tell how busy the host was: on a shared machine, wall time alone misleads.
  print(f'device={jax.devices()[0].device_kind} backend={jax.default_backend()} '
        f'dtype={jnp.dtype(dtype).name} batch={_BATCH.value} patch={_PATCH.value}: '
        f'{patches / elapsed:.1f} patches/s, {cpu / patches:.3f} process CPU s/patch '
        f'(first call incl. compile {compile_s:.1f} s)')


if __name__ == '__main__':
  app.run(main)
