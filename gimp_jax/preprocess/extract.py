"""One slide to one feature file: plan the grid, draw the preview, encode patches in batches."""

from collections.abc import Callable
import os

from absl import logging
import numpy as np
import openslide
import tqdm

from gimp_jax.data import trident
from gimp_jax.errors import DataError
from gimp_jax.preprocess import preview
from gimp_jax.preprocess import tiling
from gimp_jax.preprocess import writer

FeatureFn = Callable[[np.ndarray], object]  # uint8 [B, P, P, 3] -> array-like [B, D]


def _read_batch(slide: openslide.OpenSlide, plan: tiling.Plan, coords: np.ndarray,
                batch_size: int) -> np.ndarray:
  """Patches at `coords`, zero-padded to `batch_size` rows: [batch_size, P, P, 3] uint8."""
  batch = np.zeros((batch_size, plan.patch_size, plan.patch_size, 3), np.uint8)
  for i, (x, y) in enumerate(coords):
    batch[i] = tiling.read_patch(slide, plan, x, y)
  return batch


def _encode(slide: openslide.OpenSlide, plan: tiling.Plan, feature_fn: FeatureFn,
            out: writer.FeatureWriter, batch_size: int, desc: str) -> None:
  """Appends the features of every patch of `plan` to `out`, with a progress bar.

  Every batch has `batch_size` rows (the last is zero-padded, then trimmed) so `feature_fn` compiles
  once. Batch k+1 is read from the slide while the device still encodes batch k (JAX dispatch is
  asynchronous); batch k is fetched and written after that.
  """
  pending = None

  def flush():
    features, coords = pending
    out.append(np.asarray(features)[:len(coords)], coords)
    bar.update(len(coords))

  with tqdm.tqdm(total=len(plan.coords), desc=desc, unit='patch') as bar:
    for start in range(0, len(plan.coords), batch_size):
      coords = plan.coords[start:start + batch_size]
      features = feature_fn(_read_batch(slide, plan, coords, batch_size))
      if pending is not None:
        flush()
      pending = (features, coords)
    if pending is not None:
      flush()


def extract_slide(path: str, slide_id: str, out_dir: str, feature_fn: FeatureFn, feature_dim: int,
                  params: tiling.TilingParams, batch_size: int = 32,
                  encoder: str = 'custom') -> int:
  """Writes `<out_dir>/<slide_id>.h5` and `<out_dir>/thumbnails/<slide_id>.png`; returns N patches.

  The `.h5` carries TRIDENT's attributes (`trident.coords_attrs`, `trident.features_attrs`), with
  `encoder` as the encoder's name.

  Raises:
    DataError: the slide cannot be opened or read.
  """
  slide = tiling.open_slide(path)
  try:
    plan = tiling.plan_slide(slide, params, source=path)
    os.makedirs(os.path.join(out_dir, 'thumbnails'), exist_ok=True)
    preview.save(plan, os.path.join(out_dir, 'thumbnails', f'{slide_id}.png'))
    if not len(plan.coords):
      logging.warning('%s: no tissue patches found; writing an empty feature file', path)
    width, height = slide.dimensions
    coords_attrs = trident.coords_attrs(
        name=slide_id, patch_size=plan.patch_size, patch_size_level0=plan.step,
        patch_level=plan.level, mpp=plan.mpp, magnification=params.magnification, width=width,
        height=height, savetodir=out_dir, slide_path=os.path.abspath(path))
    features_attrs = trident.features_attrs(name=slide_id, encoder=encoder, savetodir=out_dir)
    with writer.FeatureWriter(out_dir, slide_id, feature_dim, coords_attrs, features_attrs) as out:
      _encode(slide, plan, feature_fn, out, batch_size, desc=slide_id)
    return len(plan.coords)
  except openslide.OpenSlideError as e:  # e.g. a corrupt tile met half way through the slide
    raise DataError(f'{path}: OpenSlide failed while reading patches ({e})') from e
  finally:
    slide.close()
