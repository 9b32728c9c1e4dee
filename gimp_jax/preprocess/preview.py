"""A picture for the user to check tiling: thumbnail, tissue contour and the kept patch grid."""

import numpy as np
from PIL import Image
from PIL import ImageDraw

from gimp_jax.preprocess import tissue
from gimp_jax.preprocess.tiling import Plan

_CONTOUR_RGB = (0, 200, 0)
_TILE_RGB = (0, 0, 255)


def render(plan: Plan, min_side: int = 1024) -> Image.Image:
  """The thumbnail, tissue boundary in green, kept patches outlined in blue.

  Small thumbnails are enlarged by a whole factor so that the longer side reaches `min_side`.
  """
  image = np.array(plan.thumbnail)
  image[tissue.contour(plan.mask)] = _CONTOUR_RGB
  h, w = image.shape[:2]
  scale = max(1, -(-min_side // max(h, w)))
  picture = Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST)
  draw = ImageDraw.Draw(picture)
  sx, sy = scale / plan.thumbnail_downsample[0], scale / plan.thumbnail_downsample[1]
  for x, y in plan.coords:
    draw.rectangle((x * sx, y * sy, (x + plan.step) * sx - 1, (y + plan.step) * sy - 1),
                   outline=_TILE_RGB)
  return picture


def save(plan: Plan, path: str) -> None:
  """Writes `render(plan)` as a PNG."""
  render(plan).save(path, format='PNG')
