"""Where to cut patches from a whole-slide image: magnification, pyramid level, tissue grid.

A patch is `patch_size` pixels at the target magnification (20x = 0.5 microns per pixel, taking
10x = 1 um/px). Its footprint on level 0 is `step` pixels, and the grid is the non-overlapping
lattice of such footprints anchored at (0, 0) whose cells start inside the slide (edge cells are
padded with white, as CLAM's `use_padding`). A cell is kept when any of four points at a quarter
footprint from its centre (CLAM's `four_pt` rule) falls on the tissue mask of the thumbnail.
Coordinates are level-0 pixel (x, y) of the patch's top-left corner, in row-major order (y, then x).

Reading: the pyramid level closest to the target among those not coarser than it (within 10%), so
patches are never upsampled when the slide has the resolution. A region of the equivalent size is
read there and resized to `patch_size`; scales within 10% of a whole number are rounded to it, so an
Aperio "20x" level of 0.499 um/px is read as is and a 0.2527 um/px "40x" level in 512 px regions
averaged 2 x 2, as CLAM does.
"""

import dataclasses
import math

from absl import logging
import numpy as np
import openslide
from PIL import Image

from gimp_jax.errors import DataError
from gimp_jax.preprocess import tissue

# The whole-slide image files OpenSlide reads (preprocess's --slides, the report's slides_dir).
SLIDE_EXTENSIONS = ('.svs', '.tif', '.tiff', '.ndpi', '.mrxs', '.scn', '.vms', '.bif')
# Microns per pixel at 1x under the usual convention (10x objective ~ 1 um/px).
_MICRONS_AT_1X = 10.0
# Scales within this factor count as equal (level choice; rounding to a whole resize factor).
_SCALE_TOLERANCE = 1.1


@dataclasses.dataclass(frozen=True)
class TilingParams:
  """What to tile. Areas are in patches (footprints at the target magnification)."""
  magnification: float = 20.0
  patch_size: int = 256
  thumbnail_pixels_per_patch: int = 16  # resolution of the tissue mask
  max_thumbnail_side: int = 4096
  min_tissue_patches: float = 16.0  # CLAM TCGA a_t=16 (x 512^2 px at 40x) = 16 patches at 20x
  min_hole_patches: float = 4.0  # CLAM TCGA a_h=4
  mpp: float | None = None  # microns per level-0 pixel given by the user (--mpp); None: the slide's


@dataclasses.dataclass(frozen=True)
class Plan:
  """The patches of one slide.

  Attributes:
    mpp: microns per level-0 pixel.
    level: pyramid level read.
    read_size: side of the region read at `level`, in that level's pixels.
    patch_size: side of the patch handed to the encoder (read regions are resized to it).
    step: patch footprint (and grid step) in level-0 pixels.
    coords: [N, 2] int32 level-0 (x, y) of each patch's top-left corner.
    thumbnail: [h, w, 3] uint8 RGB thumbnail of the whole slide.
    mask: [h, w] bool tissue mask of the thumbnail.
    thumbnail_downsample: (x, y) level-0 pixels per thumbnail pixel.
  """
  mpp: float
  level: int
  read_size: int
  patch_size: int
  step: int
  coords: np.ndarray
  thumbnail: np.ndarray
  mask: np.ndarray
  thumbnail_downsample: tuple[float, float]


def open_slide(path: str) -> openslide.OpenSlide:
  """OpenSlide handle; unreadable or unsupported files raise DataError."""
  try:
    return openslide.OpenSlide(path)
  except (openslide.OpenSlideError, OSError) as e:
    raise DataError(f'{path}: OpenSlide cannot open this slide ({e})') from e


def level0_mpp(properties, source: str, override: float | None = None) -> float:
  """Microns per level-0 pixel: `override` (--mpp), else `openslide.mpp-x`, else from
  `openslide.objective-power` (with a warning naming the slide: magnification then rests on the
  10x = 1 um/px convention).

  Raises:
    DataError: the slide records neither, and no override was given.
  """
  if override is not None:
    if not (math.isfinite(override) and override > 0):
      raise DataError(f'{source}: --mpp={override} is not a positive number of microns per pixel')
    return float(override)
  try:
    mpp = float(properties.get(openslide.PROPERTY_NAME_MPP_X, 'nan'))
  except ValueError:
    mpp = math.nan
  if math.isfinite(mpp) and mpp > 0:
    return mpp
  try:
    power = float(properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER, 'nan'))
  except ValueError:
    power = math.nan
  if math.isfinite(power) and power > 0:
    logging.warning('%s: no openslide.mpp-x; using objective power %gx, i.e. %g um/px at level 0',
                    source, power, _MICRONS_AT_1X / power)
    return _MICRONS_AT_1X / power
  raise DataError(f'{source}: the slide records no microns per pixel (openslide.mpp-x) nor '
                  'objective power; pass --mpp=<microns per level-0 pixel>, e.g. --mpp=0.25 for a '
                  '40x scan or --mpp=0.5 for 20x')


def choose_level(mpp: float, downsamples, target_mpp: float, source: str = '') -> int:
  """Index of the coarsest level no coarser than `target_mpp` (within 10%); level 0 otherwise.

  Args:
    mpp: microns per level-0 pixel.
    downsamples: level-0 pixels per pixel of each level (openslide `level_downsamples`).
    target_mpp: wanted microns per pixel.
    source: slide name for the warning when even level 0 is coarser than the target.
  """
  level_mpp = [mpp * d for d in downsamples]
  fine_enough = [i for i, m in enumerate(level_mpp) if m <= target_mpp * _SCALE_TOLERANCE]
  if not fine_enough:
    logging.warning('%s: level 0 (%.3g um/px) is coarser than the target %.3g um/px; patches are '
                    'upsampled', source, mpp, target_mpp)
    return 0
  return max(fine_enough, key=lambda i: level_mpp[i])


def read_size_at(level_mpp: float, target_mpp: float, patch_size: int) -> int:
  """Side, in pixels of a level of `level_mpp`, of a `patch_size` patch at `target_mpp`.

  A scale within 10% of a whole factor k is taken as k (a 0.2527 um/px "40x" level gives 512 px for
  a 256 px patch at 20x, as CLAM reads it), so the resize is an exact k x k box average.
  """
  ratio = target_mpp / level_mpp
  whole = round(ratio)
  if whole >= 1 and abs(math.log(ratio / whole)) < math.log(_SCALE_TOLERANCE):
    ratio = whole
  return max(1, round(patch_size * ratio))


def grid_coords(width: int, height: int, step: int, mask: np.ndarray,
                downsample: tuple[float, float]) -> np.ndarray:
  """Level-0 top-left corners of the grid cells that touch tissue.

  Cells on the right and bottom edges may reach past the slide (CLAM's `use_padding`); the part
  outside reads as white, and quarter points outside the slide never count as tissue.

  Args:
    width, height: level-0 slide size.
    step: cell side in level-0 pixels.
    mask: [h, w] bool tissue mask of a thumbnail covering the whole slide.
    downsample: (x, y) level-0 pixels per mask pixel.

  Returns:
    [N, 2] int32 (x, y), row-major.
  """
  ys, xs = np.meshgrid(np.arange(0, height, step), np.arange(0, width, step), indexing='ij')
  xs, ys = xs.ravel(), ys.ravel()
  keep = np.zeros(xs.shape, bool)
  for dx, dy in ((1, 1), (3, 1), (1, 3), (3, 3)):  # quarter points around the centre
    px = ((xs + dx * step / 4) / downsample[0]).astype(int)
    py = ((ys + dy * step / 4) / downsample[1]).astype(int)
    inside = (px < mask.shape[1]) & (py < mask.shape[0])
    keep |= inside & mask[np.minimum(py, mask.shape[0] - 1), np.minimum(px, mask.shape[1] - 1)]
  return np.stack([xs[keep], ys[keep]], axis=1).astype(np.int32)


def plan_slide(slide: openslide.OpenSlide, params: TilingParams, source: str) -> Plan:
  """Level, grid and tissue mask for one slide."""
  target_mpp = _MICRONS_AT_1X / params.magnification
  mpp = level0_mpp(slide.properties, source, params.mpp)
  level = choose_level(mpp, slide.level_downsamples, target_mpp, source)
  downsample = slide.level_downsamples[level]
  read_size = read_size_at(mpp * downsample, target_mpp, params.patch_size)
  step = max(1, round(read_size * downsample))
  width, height = slide.dimensions
  thumb_ds = max(1.0, step / params.thumbnail_pixels_per_patch,
                 max(width, height) / params.max_thumbnail_side)
  size = (max(1, round(width / thumb_ds)), max(1, round(height / thumb_ds)))
  try:
    thumbnail = np.asarray(slide.get_thumbnail(size).convert('RGB'))
  except openslide.OpenSlideError as e:
    raise DataError(f'{source}: cannot read a thumbnail ({e})') from e
  actual_ds = (width / thumbnail.shape[1], height / thumbnail.shape[0])
  patch_area = (step / actual_ds[0]) * (step / actual_ds[1])  # thumbnail pixels per patch
  mask = tissue.tissue_mask(thumbnail, tissue.TissueParams(
      min_tissue_area=params.min_tissue_patches * patch_area,
      min_hole_area=params.min_hole_patches * patch_area))
  coords = grid_coords(width, height, step, mask, actual_ds)
  logging.info('%s: level %d (%.3g um/px), read %d px -> %d px, step %d level-0 px, %d patches',
               source, level, mpp * downsample, read_size, params.patch_size, step, len(coords))
  return Plan(mpp=mpp, level=level, read_size=read_size, patch_size=params.patch_size, step=step,
              coords=coords, thumbnail=thumbnail, mask=mask, thumbnail_downsample=actual_ds)


def read_patch(slide: openslide.OpenSlide, plan: Plan, x: int, y: int) -> np.ndarray:
  """RGB patch at level-0 (x, y): [patch_size, patch_size, 3] uint8, transparent areas white."""
  region = slide.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size))
  white = Image.new('RGBA', region.size, (255, 255, 255, 255))
  rgb = Image.alpha_composite(white, region).convert('RGB')
  if plan.read_size != plan.patch_size:
    down = plan.read_size > plan.patch_size
    rgb = rgb.resize((plan.patch_size, plan.patch_size),
                     Image.Resampling.BOX if down else Image.Resampling.BICUBIC)
  return np.asarray(rgb)
