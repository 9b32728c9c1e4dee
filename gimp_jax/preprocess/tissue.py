"""Tissue detection on a slide thumbnail, in the manner of CLAM's `segmentTissue`.

1. Saturation channel of the RGB thumbnail (tissue is stained, glass and background are grey/white),
   median-filtered to remove speckle.
2. Otsu's threshold on the saturation histogram (never below `min_saturation`, so a slide that is
   nearly all glass does not turn scanner noise into tissue), then a morphological closing.
3. Connected tissue regions (8-connected) and the holes inside them (4-connected background that
   does not touch the outside). Per region, the `max_holes` largest holes of at least
   `min_hole_area` stay holes; the others are filled. A region whose area minus its holes is below
   `min_tissue_area` is dropped.

Areas are in thumbnail pixels; the caller converts from level-0 units.
"""

import dataclasses

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class TissueParams:
  """Thumbnail-space settings (CLAM's TCGA preset: mthresh 7, close 4, max_n_holes 8)."""
  median_size: int = 7  # side of the median filter on saturation, in pixels
  min_saturation: int = 8  # floor for Otsu's threshold (saturation, 0..255)
  close_size: int = 4  # side of the square structuring element of the closing, in pixels
  min_tissue_area: float = 0.0  # pixels; smaller regions (after holes) are dropped
  min_hole_area: float = 0.0  # pixels; smaller holes are filled
  max_holes: int = 8  # largest holes kept per region


def saturation(rgb: np.ndarray) -> np.ndarray:
  """HSV saturation 255 * (max - min) / max, rounded. rgb: [H, W, 3] uint8 -> [H, W] uint8."""
  rgb = rgb.astype(np.int32)
  high = rgb.max(axis=-1)
  low = rgb.min(axis=-1)
  sat = np.where(high > 0, (255 * (high - low) + high // 2) // np.maximum(high, 1), 0)
  return sat.astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
  """Otsu's threshold of uint8 values: the t maximising the between-class variance of <= t, > t."""
  hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
  levels = np.arange(256, dtype=np.float64)
  weight_low = np.cumsum(hist)
  weight_high = weight_low[-1] - weight_low
  sum_low = np.cumsum(hist * levels)
  mean_low = sum_low / np.maximum(weight_low, 1)
  mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
  between = weight_low * weight_high * (mean_low - mean_high) ** 2
  return int(np.argmax(between))


def _filter_regions(mask: np.ndarray, params: TissueParams) -> np.ndarray:
  """Drops small regions and fills small holes. mask: [H, W] bool -> [H, W] bool."""
  filled = ndimage.binary_fill_holes(mask)
  regions, n_regions = ndimage.label(filled, structure=_EIGHT_CONNECTED)
  holes, n_holes = ndimage.label(filled & ~mask)
  if n_regions == 0:
    return mask
  region_area = np.bincount(regions.ravel(), minlength=n_regions + 1).astype(np.float64)
  keep_hole = np.zeros(n_holes + 1, bool)
  if n_holes:
    hole_area = np.bincount(holes.ravel(), minlength=n_holes + 1)[1:]
    # Each hole lies inside exactly one filled region; read the region at any of its pixels.
    first_pixel = ndimage.find_objects(holes)
    hole_region = np.array([regions[s][holes[s] == i + 1][0] for i, s in enumerate(first_pixel)])
    for region in np.unique(hole_region):
      members = np.flatnonzero((hole_region == region) & (hole_area >= params.min_hole_area))
      largest = members[np.argsort(-hole_area[members], kind='stable')[:params.max_holes]]
      keep_hole[largest + 1] = True
      region_area[region] -= hole_area[largest].sum()
  keep_region = region_area >= params.min_tissue_area
  keep_region[0] = False
  return keep_region[regions] & ~keep_hole[holes]


def tissue_mask(rgb: np.ndarray, params: TissueParams = TissueParams()) -> np.ndarray:
  """Foreground mask of a thumbnail. rgb: [H, W, 3] uint8 -> [H, W] bool (True = tissue)."""
  sat = ndimage.median_filter(saturation(rgb), size=params.median_size, mode='nearest')
  threshold = max(otsu_threshold(sat), params.min_saturation)
  mask = sat > threshold
  if params.close_size > 1:
    structure = np.ones((params.close_size, params.close_size), bool)
    # Pad so the closing does not erode regions that touch the border of the image.
    pad = params.close_size
    mask = ndimage.binary_closing(np.pad(mask, pad, mode='edge'), structure)[pad:-pad, pad:-pad]
  return _filter_regions(mask, params)


def contour(mask: np.ndarray) -> np.ndarray:
  """Boundary pixels of a mask (in the mask but with a 4-neighbour outside). [H, W] bool."""
  return mask & ~ndimage.binary_erosion(mask, border_value=0)
