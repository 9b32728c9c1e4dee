"""`python -m gimp_jax.preprocess --slides DIR --out DIR --encoder uni --weights uni.bin`.

Turns every slide in --slides (.svs, .tif, .tiff, .ndpi, .mrxs, .scn, .vms, .bif) into
`<out>/<slide_id>.h5` (CLAM/TRIDENT layout: `features` float32 [N, D], `coords` int32 [N, 2] with
TRIDENT's attributes) and a check picture `<out>/thumbnails/<slide_id>.png`. `--encoder` picks the
patch encoder (`encoders.PRESETS`: resnet50_trunc, uni, uni2_h, conch_v1_5, virchow2, phikon_v2,
h_optimus_0) with its patch size, magnification, input size and normalisation; `--weights` is the
user's file for it. Slides whose `.h5` already exists are skipped, so an
interrupted run is resumed by running the same command again. A slide that cannot be read is
reported and skipped; the command then exits with code 2 after the others are done.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp

from gimp_jax.errors import DataError
from gimp_jax.preprocess import encoders
from gimp_jax.preprocess import extract
from gimp_jax.preprocess import resnet
from gimp_jax.preprocess import tiling
from gimp_jax.preprocess import writer


_SLIDES = flags.DEFINE_string('slides', None, 'Folder of whole-slide images.', required=True)
_OUT = flags.DEFINE_string('out', None, 'Output folder for <slide_id>.h5 files.', required=True)
_ENCODER = flags.DEFINE_enum('encoder', 'resnet50_trunc', list(encoders.PRESETS),
                             'Patch encoder (architecture, input size and normalisation).')
_WEIGHTS = flags.DEFINE_string(
    'weights', None, 'The encoder\'s weights (.safetensors, .bin, .pth) in timm layout (Phikon-v2 '
    'also Hugging Face; resnet50_trunc: torchvision resnet50, e.g. IMAGENET1K_V1).', required=True)
_DEPTH = flags.DEFINE_integer('depth', 0, 'ViT blocks; 0 = the published depth (fewer: tests).')
_BATCH = flags.DEFINE_integer(
    'batch_size', 32, 'Patches per encoder batch (rounded up to a multiple of the devices).')
_MAGNIFICATION = flags.DEFINE_float(
    'magnification', None, 'Target magnification (20x=0.5 um/px); default: the encoder\'s.')
_PATCH = flags.DEFINE_integer(
    'patch_size', None, 'Patch side in pixels at the target magnification (resized to the '
    'encoder\'s input); default: the encoder\'s.')
_MPP = flags.DEFINE_float('mpp', None, 'Microns per level-0 pixel, for slides that do not record '
                          'it (openslide.mpp-x); overrides it for every slide.')
_DTYPE = flags.DEFINE_enum('compute_dtype', 'auto', ['auto', 'float32', 'bfloat16'],
                           'Encoder compute dtype; auto: float32 on CPU, bfloat16 on accelerators.')
_MIN_TISSUE = flags.DEFINE_float('min_tissue_patches', 16.0,
                                 'Tissue regions smaller than this many patches are dropped.')
_MIN_HOLE = flags.DEFINE_float('min_hole_patches', 4.0,
                               'Holes in tissue smaller than this many patches are filled.')


def list_slides(folder: str) -> dict[str, str]:
  """slide_id (file name without extension) -> path, for the slides directly in `folder`."""
  if not os.path.isdir(folder):
    raise DataError(f'{folder}: not a folder (field: --slides)')
  slides = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in tiling.SLIDE_EXTENSIONS:
      continue
    if stem in slides:
      first = os.path.basename(slides[stem])
      raise DataError(f'{folder}: slide id {stem!r} is used by {first} and {name} '
                      '(field: file name)')
    slides[stem] = os.path.join(folder, name)
  if not slides:
    raise DataError(
        f'{folder}: no slides with extensions {", ".join(tiling.SLIDE_EXTENSIONS)}')
  return slides


def run() -> list[str]:
  """Processes the slides; returns one message per slide that failed."""
  slides = list_slides(_SLIDES.value)
  os.makedirs(_OUT.value, exist_ok=True)
  todo = {k: v for k, v in slides.items() if not writer.is_finished(_OUT.value, k)}
  logging.info('%d slides, %d already done', len(slides), len(slides) - len(todo))
  if not todo:
    return []
  dtype = (resnet.default_compute_dtype() if _DTYPE.value == 'auto'
           else jnp.dtype(_DTYPE.value))
  preset = encoders.PRESETS[_ENCODER.value].with_depth(_DEPTH.value)
  model = encoders.from_file(preset, _WEIGHTS.value, dtype=dtype)
  feature_fn = encoders.make_feature_fn(preset, model)
  devices = jax.local_device_count()
  batch_size = -(-_BATCH.value // devices) * devices
  logging.info('encoder %s (%d features), %s, batches of %d over %d device(s)', preset.name,
               preset.feature_dim, jnp.dtype(dtype).name, batch_size, devices)
  params = tiling.TilingParams(
      magnification=_MAGNIFICATION.value or preset.magnification,
      patch_size=_PATCH.value or preset.patch_size, min_tissue_patches=_MIN_TISSUE.value,
      min_hole_patches=_MIN_HOLE.value, mpp=_MPP.value)
  failures = []
  for slide_id, path in todo.items():
    try:
      n = extract.extract_slide(path, slide_id, _OUT.value, feature_fn, preset.feature_dim, params,
                                batch_size=batch_size, encoder=preset.name)
      logging.info('%s: wrote %d patches', slide_id, n)
    except DataError as e:
      logging.error('%s', e)
      failures.append(str(e))
  return failures


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    failures = run()
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if failures:
    print(f'error: {len(failures)} slide(s) failed; first: {failures[0]}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
