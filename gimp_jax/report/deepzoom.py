"""Zoomable slides in report.html: Deep Zoom tiles written by OpenSlide, shown by OpenSeadragon.

`write_tiles` writes the Deep Zoom pyramid of `openslide.deepzoom.DeepZoomGenerator` as files
(`<name>_files/<level>/<col>_<row>.jpeg`, the DZI layout), from the 1-pixel level up to the finest
level whose longer side is at most `max_size` (a 100,000-pixel slide would otherwise write
~200,000 tiles): the viewer is told that level's size, so the pyramid it sees is complete.

The viewer is OpenSeadragon 6.1.1 (BSD-3-Clause, its licence in `openseadragon/LICENSE.txt`),
shipped as package data (`openseadragon.min.js` and the four navigation buttons' images) and
copied beside report.html by `copy_viewer`. The tile source is given inline (no XML descriptor to
fetch: a page opened from file:// may not read files by XMLHttpRequest), tiles are loaded as
plain images, and the 2-D canvas drawer draws them (WebGL would refuse file:// images as
cross-origin textures; the HTML drawer ignores an item's opacity).
The overlay is a second image in the same world coordinates, shown or hidden by a checkbox, its
opacity set by a slider.
"""

import html
import importlib.resources
import json
import os
import shutil

from openslide import deepzoom

VIEWER_DIR = 'openseadragon'  # beside report.html
TILE_SIZE = 254  # + 2 x 1 pixel overlap = 256-pixel tiles
OVERLAP = 1


def write_tiles(slide, out_dir: str, name: str, max_size: int = 8192,
                quality: int = 85) -> dict:
  """Writes the slide's Deep Zoom tiles to `<out_dir>/<name>_files/`.

  Args:
    slide: an `openslide.OpenSlide`.
    out_dir: the folder (created if missing).
    name: the pyramid's name.
    max_size: the finest written level's longer side at most, in pixels.
    quality: JPEG quality.

  Returns:
    The tile source: {'width', 'height'} of the finest written level, 'tile_size', 'overlap',
    'levels' (written levels, 0 = 1 x 1 pixel), 'url' (the tiles' folder, relative to out_dir, with
    a trailing slash).
  """
  generator = deepzoom.DeepZoomGenerator(slide, tile_size=TILE_SIZE, overlap=OVERLAP,
                                         limit_bounds=False)
  top = max(level for level, (w, h) in enumerate(generator.level_dimensions)
            if max(w, h) <= max_size or level == 0)
  root = os.path.join(out_dir, f'{name}_files')
  for level in range(top + 1):
    os.makedirs(os.path.join(root, str(level)), exist_ok=True)
    cols, rows = generator.level_tiles[level]
    for col in range(cols):
      for row in range(rows):
        tile = generator.get_tile(level, (col, row))
        tile.save(os.path.join(root, str(level), f'{col}_{row}.jpeg'), quality=quality)
  width, height = generator.level_dimensions[top]
  return {'width': width, 'height': height, 'tile_size': TILE_SIZE, 'overlap': OVERLAP,
          'levels': top + 1, 'url': f'{name}_files/'}


def copy_viewer(report_dir: str) -> str:
  """Copies OpenSeadragon (script, button images, licence) into `<report_dir>/openseadragon`."""
  target = os.path.join(report_dir, VIEWER_DIR)
  source = importlib.resources.files('gimp_jax.report') / VIEWER_DIR
  with importlib.resources.as_file(source) as path:
    shutil.copytree(path, target, dirs_exist_ok=True)
  return target


def viewer_html(index: int, tiles: dict, overlay_url: str,
                opacity: float = 0.5) -> str:
  """One viewer: its div, the overlay checkbox and opacity slider, and the script that opens it.

  Args:
    index: the viewer's number on the page (element ids).
    tiles: `write_tiles`' result, its 'url' relative to report.html.
    overlay_url: the overlay PNG (same extent as the slide) relative to report.html.
    opacity: the overlay's initial opacity.

  Returns:
    HTML; the page loads `openseadragon/openseadragon.min.js` once before it (`SCRIPT_TAG`).
    Each opened viewer is pushed on `window.gimpViewers`.
  """
  source = {'Image': {'xmlns': 'http://schemas.microsoft.com/deepzoom/2008',
                      'Url': tiles['url'], 'Format': 'jpeg',
                      'Overlap': str(tiles['overlap']), 'TileSize': str(tiles['tile_size']),
                      'Size': {'Width': str(tiles['width']), 'Height': str(tiles['height'])}}}
  options = {'id': f'viewer-{index}', 'prefixUrl': f'{VIEWER_DIR}/images/', 'drawer': 'canvas',
             'showNavigator': True, 'crossOriginPolicy': False, 'loadTilesWithAjax': False,
             'tileSources': [source, {'type': 'image', 'url': overlay_url}]}
  aspect = tiles['height'] / tiles['width']
  return (
      f'<div class="viewer" id="viewer-{index}" '
      f'style="width:100%;height:{min(max(aspect, 0.4), 1.2) * 40:.1f}em"></div>\n'
      f'<p class="viewer-controls"><label><input type="checkbox" id="overlay-{index}" checked> '
      f'attention overlay</label> <label>opacity <input type="range" id="opacity-{index}" '
      f'min="0" max="1" step="0.05" value="{opacity}"></label></p>\n'
      f'<script>(function () {{\n'
      f'  var viewer = OpenSeadragon({json.dumps(options)});\n'
      f'  var box = document.getElementById("overlay-{index}");\n'
      f'  var slider = document.getElementById("opacity-{index}");\n'
      f'  function apply() {{\n'
      f'    if (viewer.world.getItemCount() < 2) return;\n'
      f'    viewer.world.getItemAt(1).setOpacity(box.checked ? parseFloat(slider.value) : 0);\n'
      f'  }}\n'
      f'  viewer.world.addHandler("add-item", apply);\n'
      f'  box.addEventListener("change", apply);\n'
      f'  slider.addEventListener("input", apply);\n'
      f'  (window.gimpViewers = window.gimpViewers || []).push(viewer);\n'
      f'}})();</script>')


SCRIPT_TAG = f'<script src="{html.escape(VIEWER_DIR)}/openseadragon.min.js"></script>'
