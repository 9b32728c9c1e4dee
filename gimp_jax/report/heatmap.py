"""Patch attention drawn on the slide, or at the patches' coordinates when the slide is not at hand.

On the slide (`slide_thumbnail`, `paint`, `overlay`, `slide_heatmap_png`): OpenSlide's thumbnail
(read at the pyramid level that fits, then resized), each patch's score painted over its level-0
footprint scaled to the thumbnail (overlapping patches averaged), kept on the tissue mask of
`preprocess.tissue`, and blended over the thumbnail in a diverging colour map (the CLAM / TRIDENT
look). `top_patches` reads the k highest-scoring patches back from the slide.

Without the slide (`heatmap_png`):

The patches are rasterised onto a grid with one cell per patch_size x patch_size tile of level 0
(cell = coords // patch_size), and the grid is drawn with one `imshow`: a 150,000-patch slide
becomes a few-hundred-pixel image instead of 150,000 rectangles. Rows run down the slide (y down),
as in a slide viewer.

Scales (`normalise`, config `report.heatmap_scale`): 'mass' (default) colours a patch by its share
of the slide's attention against the uniform share, attention x N, on a log scale: a patch that
holds 50 times its share stands out however few such patches there are, and a slide whose attention
is spread evenly stays uniformly dim. 'rank' is each patch's percentile among the slide's patches
(CLAM's heatmaps): every slide gets the same spread of colours, so the 8 patches that hold half of
the attention look like any other of the top 20%. 'minmax' maps the smallest to 0 and the largest
to 1.
"""

import os

from matplotlib import cm
from matplotlib import colormaps
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
import numpy as np
from scipy import stats

from gimp_jax.preprocess import tissue
from gimp_jax.report.figures import save_png

CMAP = 'viridis'
SLIDE_CMAP = 'coolwarm'  # CLAM's heatmap colour map: blue = low, red = high attention
BACKGROUND = '#eeeeee'  # cells without a patch
MAX_CELLS = 50_000_000  # guards against a wrong patch_size (e.g. 1) making a huge grid


SCALES = ('mass', 'rank', 'minmax')
LABELS = {'mass': 'attention x N (log scale: 0 = 1/10 of a uniform share, 1 = all on one patch)',
          'rank': 'attention percentile', 'minmax': 'attention (min-max)'}


def share(attention: np.ndarray) -> np.ndarray:
  """[N] attention -> [N] attention x N / sum (1 = a uniform share; 0 everywhere when the sum is 0)."""
  a = np.asarray(attention, np.float64)
  total = a.sum()
  return a * a.size / total if total > 0 else np.zeros_like(a)


def normalise(values: np.ndarray, method: str = 'mass') -> np.ndarray:
  """Maps attention to [0, 1] (module docstring).

  Args:
    values: [N] non-negative attention weights.
    method: 'mass': clip((log10(N v / sum(v)) + 1) / (log10(N) + 1), 0, 1), so a uniform share
      (v = sum / N) maps to 1 / (log10 N + 1) and a patch holding all the attention to 1;
      'rank': (rank - 1) / (N - 1) with tied values sharing their mean rank; 'minmax':
      (v - min) / (max - min). A constant input (or N = 1) maps to 0.5 under the last two.

  Returns:
    [N] float32 in [0, 1].
  """
  values = np.asarray(values, np.float64)
  if method not in SCALES:
    raise ValueError(f"normalise method must be one of {SCALES}, got {method!r}")
  if method == 'mass' and values.size and values.sum() > 0:
    with np.errstate(divide='ignore'):
      level = (np.log10(share(np.maximum(values, 0))) + 1) / (np.log10(max(values.size, 2)) + 1)
    return np.clip(level, 0, 1).astype(np.float32)
  if values.size == 0 or values.min() == values.max():
    return np.full(values.shape, 0.5, np.float32)
  if method == 'rank':
    return ((stats.rankdata(values) - 1) / (values.size - 1)).astype(np.float32)
  return ((values - values.min()) / (values.max() - values.min())).astype(np.float32)


def rasterise(coords: np.ndarray, values: np.ndarray,
              patch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Puts each patch's value in its grid cell.

  Args:
    coords: [N, 2] integer level-0 (x, y) of the patches' top-left corners.
    values: [N] values.
    patch_size: level-0 size of a patch (the grid's cell size).

  Returns:
    grid: [H, W] float32, NaN where no patch lies; grid[r, c] is the patch with
      y // patch_size = r + origin[1] // patch_size, x // patch_size = c + origin[0] // patch_size.
      Patches that share a cell (overlapping tiles) keep the largest value.
    origin: [2] int64 level-0 (x, y) of the grid's top-left corner, a multiple of patch_size.
  """
  coords, values = np.asarray(coords), np.asarray(values, np.float32)
  if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
    raise ValueError(f'coords must be [N, 2] with N >= 1, got shape {coords.shape}')
  if not np.issubdtype(coords.dtype, np.integer):
    raise ValueError(f'coords must be integers (level-0 pixels), got dtype {coords.dtype}')
  if values.shape != (coords.shape[0],):
    raise ValueError(f'values must be [N] with N = {coords.shape[0]}, got shape {values.shape}')
  if patch_size < 1:
    raise ValueError(f'patch_size must be positive, got {patch_size}')
  cells = coords.astype(np.int64) // patch_size
  low = cells.min(axis=0)
  cols, rows = (cells - low).T
  height, width = int(rows.max()) + 1, int(cols.max()) + 1
  if height * width > MAX_CELLS:
    raise ValueError(f'a {height} x {width} grid at patch_size {patch_size}: check patch_size '
                     'against the coordinates')
  grid = np.full((height, width), np.nan, np.float32)
  order = np.argsort(values, kind='stable')  # larger values written last win their cell
  grid[rows[order], cols[order]] = values[order]
  return grid, low * patch_size


def heatmap_figure(coords: np.ndarray, attention: np.ndarray, patch_size: int = 256,
                   title: str = '', method: str = 'mass') -> tuple[Figure, Axes]:
  """The heatmap as a Figure and its image axes (see `heatmap_png`)."""
  grid, origin = rasterise(coords, normalise(attention, method), patch_size)
  height, width = grid.shape
  aspect = height / width  # image box: 6 in wide, or 7.2 in tall for tall slides
  image_w, image_h = (6.0, 6.0 * aspect) if aspect <= 1.2 else (7.2 / aspect, 7.2)
  fig = Figure(figsize=(max(image_w, 2.0) + 1.6, max(image_h, 1.2) + 1.1), layout='constrained')
  ax = fig.subplots()
  cmap = colormaps[CMAP].with_extremes(bad=BACKGROUND)
  x0, y0 = origin
  extent = (x0, x0 + width * patch_size, y0 + height * patch_size, y0)
  image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, extent=extent, origin='upper',
                    interpolation='nearest', aspect='equal')
  fig.colorbar(image, ax=ax, shrink=0.85, label=LABELS[method])
  ax.set(xlabel='x (level-0 px)', ylabel='y (level-0 px)',
         title=f'{title} ({np.shape(coords)[0]:,} patches)'.strip())
  return fig, ax


def heatmap_png(path: str | os.PathLike[str], coords: np.ndarray, attention: np.ndarray,
                patch_size: int = 256, title: str = '', method: str = 'mass') -> str:
  """CLS -> patch attention drawn as squares at the patches' coordinates.

  Args:
    path: the PNG to write.
    coords: [N, 2] integer level-0 (x, y) of the patches.
    attention: [N] attention of CLS to each patch.
    patch_size: level-0 patch size.
    title: the axes title (e.g. the patient or slide ID).
    method: 'mass' (default), 'rank' or 'minmax'; see `normalise`.

  Returns:
    `path`.
  """
  fig, _ = heatmap_figure(coords, attention, patch_size, title, method)
  return save_png(fig, path)


def slide_thumbnail(slide, max_size: int) -> tuple[np.ndarray, tuple[float, float]]:
  """The slide's thumbnail and its scale.

  Args:
    slide: an `openslide.OpenSlide`.
    max_size: the thumbnail's longer side at most, in pixels.

  Returns:
    rgb [H, W, 3] uint8 (read at the level that fits, resized, transparent areas white) and
    (sx, sy): thumbnail pixels per level-0 pixel along x and y.
  """
  rgb = np.asarray(slide.get_thumbnail((max_size, max_size)).convert('RGB'))
  width, height = slide.dimensions
  return rgb, (rgb.shape[1] / width, rgb.shape[0] / height)


def footprint_pixels(coords: np.ndarray, patch_size_level0: int, scale: tuple[float, float],
                     shape: tuple[int, int]) -> np.ndarray:
  """Each patch's level-0 footprint in thumbnail pixels.

  Args:
    coords: [N, 2] level-0 (x, y) of the patches' top-left corners.
    patch_size_level0: the patches' side at level 0.
    scale: (sx, sy) thumbnail pixels per level-0 pixel.
    shape: the thumbnail's (H, W).

  Returns:
    [N, 4] int64 (c0, r0, c1, r1): columns [c0, c1) and rows [r0, r1), floor of the corner and
    ceiling of the far edge, at least one pixel, clipped to the thumbnail.
  """
  coords = np.asarray(coords, np.float64)
  sx, sy = scale
  c0 = np.floor(coords[:, 0] * sx)
  r0 = np.floor(coords[:, 1] * sy)
  c1 = np.maximum(np.ceil((coords[:, 0] + patch_size_level0) * sx), c0 + 1)
  r1 = np.maximum(np.ceil((coords[:, 1] + patch_size_level0) * sy), r0 + 1)
  height, width = shape
  box = np.stack([np.clip(c0, 0, width), np.clip(r0, 0, height), np.clip(c1, 0, width),
                  np.clip(r1, 0, height)], axis=1)
  return box.astype(np.int64)


def paint(shape: tuple[int, int], boxes: np.ndarray, values: np.ndarray) -> np.ndarray:
  """The mean value of the patches covering each pixel.

  Args:
    shape: (H, W) of the image.
    boxes: [N, 4] (c0, r0, c1, r1) pixel boxes (`footprint_pixels`).
    values: [N] values.

  Returns:
    [H, W] float32, NaN where no patch lies. Sums and counts by 2-D difference arrays (four
    corner updates per patch, then cumulative sums), so the cost does not grow with patch area.
  """
  height, width = shape
  total = np.zeros((height + 1, width + 1))
  count = np.zeros((height + 1, width + 1))
  c0, r0, c1, r1 = np.asarray(boxes).T
  values = np.asarray(values, np.float64)
  for grid, v in ((total, values), (count, np.ones_like(values))):
    np.add.at(grid, (r0, c0), v)
    np.add.at(grid, (r0, c1), -v)
    np.add.at(grid, (r1, c0), -v)
    np.add.at(grid, (r1, c1), v)
  total = total.cumsum(0).cumsum(1)[:height, :width]
  count = np.rint(count.cumsum(0).cumsum(1)[:height, :width])
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, total / count, np.nan).astype(np.float32)


def overlay(thumbnail: np.ndarray, coords: np.ndarray, attention: np.ndarray,
            patch_size_level0: int, scale: tuple[float, float], *, method: str = 'mass',
            alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """The coloured scores over the patches' footprints, kept on tissue.

  Args:
    thumbnail: [H, W, 3] uint8 RGB (`slide_thumbnail`).
    coords: [N, 2] level-0 (x, y) of the patches.
    attention: [N] scores.
    patch_size_level0: the patches' side at level 0.
    scale: (sx, sy) from `slide_thumbnail`.
    method: 'mass', 'rank' or 'minmax' (`normalise`).
    alpha: the overlay's opacity where it is drawn.

  Returns:
    rgba [H, W, 4] uint8: SLIDE_CMAP of the normalised score where a patch lies on the tissue
    mask (`preprocess.tissue.tissue_mask` of the thumbnail), alpha there, transparent elsewhere;
    and blended [H, W, 3] uint8, the overlay composited over the thumbnail.
  """
  boxes = footprint_pixels(coords, patch_size_level0, scale, thumbnail.shape[:2])
  grid = paint(thumbnail.shape[:2], boxes, normalise(attention, method))
  drawn = np.isfinite(grid) & tissue.tissue_mask(thumbnail)
  rgba = np.zeros(thumbnail.shape[:2] + (4,), np.uint8)
  rgba[..., :3] = np.rint(colormaps[SLIDE_CMAP](np.nan_to_num(grid))[..., :3] * 255)
  rgba[..., 3] = np.where(drawn, round(alpha * 255), 0)
  a = rgba[..., 3:].astype(np.float32) / 255
  blended = thumbnail.astype(np.float32) * (1 - a) + rgba[..., :3].astype(np.float32) * a
  return rgba, np.rint(blended).astype(np.uint8)


def slide_heatmap_png(path: str | os.PathLike[str], blended: np.ndarray,
                      level0_size: tuple[int, int], title: str = '',
                      method: str = 'mass') -> str:
  """The blended thumbnail (`overlay`) with level-0 pixel axes and the colour bar.

  Args:
    path: the PNG to write.
    blended: [H, W, 3] uint8.
    level0_size: the slide's level-0 (width, height).
    title: the axes title (slide, true and predicted class, probability).
    method: how the scores were normalised (the colour bar's label).

  Returns:
    `path`.
  """
  height, width = blended.shape[:2]
  aspect = height / width
  image_w, image_h = (6.0, 6.0 * aspect) if aspect <= 1.2 else (7.2 / aspect, 7.2)
  fig = Figure(figsize=(max(image_w, 2.0) + 1.6, max(image_h, 1.2) + 1.3), layout='constrained')
  ax = fig.subplots()
  ax.imshow(blended, extent=(0, level0_size[0], level0_size[1], 0), interpolation='antialiased')
  mappable = cm.ScalarMappable(colors.Normalize(0, 1), colormaps[SLIDE_CMAP])
  fig.colorbar(mappable, ax=ax, shrink=0.85, label=LABELS[method])
  ax.set(xlabel='x (level-0 px)', ylabel='y (level-0 px)')
  ax.set_title(title, fontsize=9)
  return save_png(fig, path)


def top_patches(slide, coords: np.ndarray, attention: np.ndarray, patch_size_level0: int,
                k: int, size: int = 256) -> list[tuple[int, np.ndarray]]:
  """The k highest-scoring patches read from the slide.

  Args:
    slide: an `openslide.OpenSlide`.
    coords: [N, 2] level-0 (x, y) of the patches.
    attention: [N] scores.
    patch_size_level0: the patches' side at level 0.
    k: how many (at most N).
    size: the crops' side in pixels (level-0 patches resized to it).

  Returns:
    [(patch index, rgb [size, size, 3] uint8)], highest score first (ties: lower index first).
  """
  order = np.argsort(-np.asarray(attention, np.float64), kind='stable')[:k]
  crops = []
  for i in order:
    x, y = (int(v) for v in coords[i])
    region = slide.read_region((x, y), 0, (patch_size_level0, patch_size_level0)).convert('RGB')
    crops.append((int(i), np.asarray(region.resize((size, size)))))
  return crops


def top_patches_png(path: str | os.PathLike[str], crops: list[tuple[int, np.ndarray]],
                    attention: np.ndarray, coords: np.ndarray, title: str = '') -> str:
  """The crops of `top_patches` in a row, each titled with its score and level-0 position."""
  fig = Figure(figsize=(1.9 * max(len(crops), 1), 2.5), layout='constrained')
  axes = np.atleast_1d(fig.subplots(1, max(len(crops), 1)))
  for ax, (i, rgb) in zip(axes, crops):
    ax.imshow(rgb)
    ax.set_title(f'{attention[i]:.3g}\n({coords[i][0]}, {coords[i][1]})', fontsize=8)
  for ax in axes:
    ax.set_axis_off()
  fig.suptitle(title, fontsize=9)
  return save_png(fig, path)
