"""CLS -> patch attention drawn at the patches' slide coordinates.

The patches are rasterised onto a grid with one cell per patch_size x patch_size tile of level 0
(cell = coords // patch_size), and the grid is drawn with one `imshow`: a 150,000-patch slide
becomes a few-hundred-pixel image instead of 150,000 rectangles. Rows run down the slide (y down),
as in a slide viewer. Attention is rank-normalised by default (each patch's percentile among the
slide's patches, as CLAM's heatmaps), because MIL attention is heavy-tailed and a min-max scale
would show a handful of bright patches on a uniformly dark slide; 'minmax' is the other choice.
"""

import os

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
import numpy as np
from scipy import stats

from gimp_jax.report.figures import save_png

CMAP = 'viridis'
BACKGROUND = '#eeeeee'  # cells without a patch
MAX_CELLS = 50_000_000  # guards against a wrong patch_size (e.g. 1) making a huge grid


def normalise(values: np.ndarray, method: str = 'rank') -> np.ndarray:
  """Maps attention to [0, 1].

  Args:
    values: [N] attention weights.
    method: 'rank': (rank - 1) / (N - 1) with tied values sharing their mean rank; 'minmax':
      (v - min) / (max - min). A constant input (or N = 1) maps to 0.5 under both.

  Returns:
    [N] float32 in [0, 1].
  """
  values = np.asarray(values, np.float64)
  if method not in ('rank', 'minmax'):
    raise ValueError(f"normalise method must be 'rank' or 'minmax', got {method!r}")
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
                   title: str = '', method: str = 'rank') -> tuple[Figure, Axes]:
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
  label = 'attention percentile' if method == 'rank' else 'attention (min-max)'
  fig.colorbar(image, ax=ax, shrink=0.85, label=label)
  ax.set(xlabel='x (level-0 px)', ylabel='y (level-0 px)',
         title=f'{title} ({np.shape(coords)[0]:,} patches)'.strip())
  return fig, ax


def heatmap_png(path: str | os.PathLike[str], coords: np.ndarray, attention: np.ndarray,
                patch_size: int = 256, title: str = '', method: str = 'rank') -> str:
  """CLS -> patch attention drawn as squares at the patches' coordinates.

  Args:
    path: the PNG to write.
    coords: [N, 2] integer level-0 (x, y) of the patches.
    attention: [N] attention of CLS to each patch.
    patch_size: level-0 patch size.
    title: the axes title (e.g. the patient or slide ID).
    method: 'rank' (default) or 'minmax'; see `normalise`.

  Returns:
    `path`.
  """
  fig, _ = heatmap_figure(coords, attention, patch_size, title, method)
  return save_png(fig, path)
