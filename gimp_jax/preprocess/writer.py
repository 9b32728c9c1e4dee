"""CLAM feature files written so that a crash never leaves one that looks finished.

`<slide_id>.h5` holds `features` float32 [N, D] and `coords` int32 [N, 2] (level-0 x, y), both
chunked 32 rows deep and extendable, as CLAM's `save_hdf5` writes them. Rows are appended batch by
batch to `<slide_id>.h5.partial`; only a writer that finishes without error renames it to
`<slide_id>.h5` (atomic on one filesystem). A file with the final name is therefore complete, and a
rerun skips it; a leftover `.partial` is simply overwritten.

`coords` and `features` carry TRIDENT's attributes (`gimp_jax.data.trident`: `patch_size`,
`patch_size_level0`, `level0_magnification`, `target_magnification`, ...; CLAM keeps the patch
geometry in its separate patch file, and readers of CLAM feature files ignore them), so TRIDENT
opens our files and a reader knows the patch footprint.
"""

import os
import types

import h5py
import numpy as np

_CHUNK_ROWS = 32
PARTIAL_SUFFIX = '.partial'


def feature_path(out_dir: str, slide_id: str) -> str:
  """Where the finished feature file of `slide_id` lives."""
  return os.path.join(out_dir, f'{slide_id}.h5')


def is_finished(out_dir: str, slide_id: str) -> bool:
  """True when `<slide_id>.h5` exists (only a completed write gives it that name)."""
  return os.path.isfile(feature_path(out_dir, slide_id))


class FeatureWriter:
  """Context manager appending features and coords to `<slide_id>.h5.partial`.

  On a clean exit the file is closed and renamed to `<slide_id>.h5`; on an exception it is closed
  and removed, and the exception propagates.
  """

  def __init__(self, out_dir: str, slide_id: str, feature_dim: int,
               coords_attrs: dict | None = None, features_attrs: dict | None = None):
    self.path = feature_path(out_dir, slide_id)
    self.partial_path = self.path + PARTIAL_SUFFIX
    self._feature_dim = feature_dim
    self._coords_attrs = coords_attrs or {}
    self._features_attrs = features_attrs or {}
    self._file = None
    self.rows = 0

  def __enter__(self) -> 'FeatureWriter':
    self._file = h5py.File(self.partial_path, 'w')
    features = self._file.create_dataset('features', shape=(0, self._feature_dim),
                                         dtype=np.float32, maxshape=(None, self._feature_dim),
                                         chunks=(_CHUNK_ROWS, self._feature_dim))
    features.attrs.update(self._features_attrs)
    coords = self._file.create_dataset('coords', shape=(0, 2), dtype=np.int32, maxshape=(None, 2),
                                       chunks=(_CHUNK_ROWS, 2))
    coords.attrs.update(self._coords_attrs)
    return self

  def append(self, features: np.ndarray, coords: np.ndarray) -> None:
    """Adds rows. features: [n, D] (cast to float32); coords: [n, 2] (cast to int32)."""
    n = len(features)
    if features.shape != (n, self._feature_dim) or coords.shape != (n, 2):
      raise ValueError(f'features {features.shape} and coords {coords.shape} do not match '
                       f'[n, {self._feature_dim}] and [n, 2]')
    for name, rows, dtype in (('features', features, np.float32), ('coords', coords, np.int32)):
      dataset = self._file[name]
      dataset.resize(self.rows + n, axis=0)
      dataset[self.rows:] = np.asarray(rows, dtype)
    self.rows += n

  def __exit__(self, exc_type, exc: BaseException | None,
               traceback: types.TracebackType | None) -> None:
    self._file.close()
    if exc_type is None:
      os.replace(self.partial_path, self.path)
    else:
      os.remove(self.partial_path)
