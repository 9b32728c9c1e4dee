"""Per-slide patch scores as CSV and as GeoJSON that QuPath opens.

GeoJSON (RFC 7946 structure, coordinates in level-0 pixels, y down, as QuPath reads them): one
FeatureCollection per slide, one Feature per patch with a closed 5-point Polygon over the patch's
level-0 footprint, and properties in QuPath's conventions (`qupath.lib.io.PathObjectTypeAdapters`,
v0.4 on): `objectType` "detection" (QuPath's type for many small objects; its measurement maps
colour them by a measurement) and `measurements` an object of name -> number. In QuPath: drag the
file onto the open slide (or File > Import objects from file), then Measure > Show measurement
maps > "attention x N" (how many uniform shares of the slide's attention a patch holds) or
"attention percentile".
"""

import csv
import json
import os

import numpy as np

from gimp_jax.report import heatmap


def footprints(coords: np.ndarray, patch_size_level0: int) -> np.ndarray:
  """coords [N, 2] level-0 (x, y) top-left corners -> [N, 4] int64 (x0, y0, x1, y1)."""
  coords = np.asarray(coords, np.int64)
  return np.concatenate([coords, coords + int(patch_size_level0)], axis=1)


def write_scores_csv(path: str | os.PathLike[str], coords: np.ndarray, attention: np.ndarray,
                     patch_size_level0: int) -> str:
  """One row per patch: index, level-0 x, y, width, height, score, percentile (rank-normalised),
  score x N / sum (the patch's attention against a uniform share, `heatmap.share`)."""
  percentile = heatmap.normalise(attention, 'rank')
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['patch', 'x', 'y', 'width', 'height', 'attention', 'attention_percentile',
                     'attention_x_n'])
    for i, ((x, y), a, p, r) in enumerate(zip(np.asarray(coords), attention, percentile,
                                               heatmap.share(attention))):
      writer.writerow([i, int(x), int(y), patch_size_level0, patch_size_level0, f'{a:.6g}',
                       f'{p:.6g}', f'{r:.6g}'])
  return os.fspath(path)


def geojson(coords: np.ndarray, attention: np.ndarray, patch_size_level0: int) -> dict:
  """The FeatureCollection (module docstring): coords [N, 2], attention [N]."""
  percentile = heatmap.normalise(attention, 'rank')
  features = []
  for i, ((x0, y0, x1, y1), a, p, r) in enumerate(zip(footprints(coords, patch_size_level0),
                                                      np.asarray(attention, np.float64),
                                                      percentile, heatmap.share(attention))):
    ring = [[int(x0), int(y0)], [int(x1), int(y0)], [int(x1), int(y1)], [int(x0), int(y1)],
            [int(x0), int(y0)]]
    features.append({
        'type': 'Feature',
        'geometry': {'type': 'Polygon', 'coordinates': [ring]},
        'properties': {'objectType': 'detection', 'name': f'patch {i}',
                       'measurements': {'attention': float(a),
                                        'attention percentile': float(p),
                                        'attention x N': float(r)}}})
  return {'type': 'FeatureCollection', 'features': features}


def write_geojson(path: str | os.PathLike[str], coords: np.ndarray, attention: np.ndarray,
                  patch_size_level0: int) -> str:
  """Writes `geojson(...)` to `path`."""
  with open(path, 'w') as f:
    json.dump(geojson(coords, attention, patch_size_level0), f, separators=(',', ':'))
  return os.fspath(path)
