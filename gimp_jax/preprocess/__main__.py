"""`python -m gimp_jax.preprocess --slides DIR --out DIR --weights resnet50.pth`.

Turns every slide in --slides (.svs, .tif, .tiff, .ndpi, .mrxs, .scn, .vms, .bif) into
`<out>/<slide_id>.h5` (CLAM layout: `features` float32 [N, 1024], `coords` int32 [N, 2]) and a check
picture `<out>/thumbnails/<slide_id>.png`. Slides whose `.h5` already exists are skipped, so an
interrupted run is resumed by running the same command again. A slide that cannot be read is
reported and skipped; the command then exits with code 2 after the others are done.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax.numpy as jnp

from gimp_jax.errors import DataError
from gimp_jax.preprocess import convert
from gimp_jax.preprocess import extract
from gimp_jax.preprocess import resnet
from gimp_jax.preprocess import tiling
from gimp_jax.preprocess import writer


_SLIDES = flags.DEFINE_string('slides', None, 'Folder of whole-slide images.', required=True)
_OUT = flags.DEFINE_string('out', None, 'Output folder for <slide_id>.h5 files.', required=True)
_WEIGHTS = flags.DEFINE_string(
    'weights', None, 'torchvision resnet50 state dict (.pth or .safetensors), e.g. IMAGENET1K_V1.',
    required=True)
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Patches per encoder batch.')
_MAGNIFICATION = flags.DEFINE_float('magnification', 20.0, 'Target magnification (20x=0.5 um/px).')
_PATCH = flags.DEFINE_integer('patch_size', 256,
                              'Patch side in pixels at the target magnification.')
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
  model = convert.resnet50_trunk_from_file(_WEIGHTS.value, dtype=dtype)
  feature_fn = resnet.make_feature_fn(model)
  params = tiling.TilingParams(magnification=_MAGNIFICATION.value, patch_size=_PATCH.value,
                               min_tissue_patches=_MIN_TISSUE.value,
                               min_hole_patches=_MIN_HOLE.value)
  failures = []
  for slide_id, path in todo.items():
    try:
      n = extract.extract_slide(path, slide_id, _OUT.value, feature_fn, resnet.FEATURE_DIM, params,
                                batch_size=_BATCH.value)
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
