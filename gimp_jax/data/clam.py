"""Lazy reader of CLAM feature files `<slide_id>.h5`.

A CLAM feature file holds two datasets (CLAM `utils/file_utils.py::save_hdf5`, no attributes):
`features` float32 [N, D] (D = 1024 for the truncated ResNet50, 512 for CONCH, ...) and `coords`
int32 or int64 [N, 2], the level-0 (x, y) of each patch's top-left corner; row i of one matches
row i of the other. Both are chunked (32, D) / (32, 2) with maxshape (None, ...).

Nothing here loads a cohort: a file is opened only for the rows asked for, and closed again. A
patient with several slides is the concatenation of their bags in slide order (`H5Source`, the
CLAM backend of `source.PatientSource`; `open_bag` for one patient).
Every problem raises `DataError` naming the file and the dataset.
"""

from collections.abc import Sequence
import dataclasses
import os

import h5py
from jax import numpy as jnp
import numpy as np

from gimp_jax.data import source
from gimp_jax.errors import DataError

FEATURES = source.FEATURES
COORDS = source.COORDS
# Rows scanned at a time by `check_bag` (4096 x 1024 float32 = 16 MiB).
_SCAN_ROWS = 4096
# Read a whole slab when it is at most this many times the rows wanted (plus a constant).
_SLAB_FACTOR = 2
# At most this many separate contiguous reads before falling back to h5py fancy indexing.
_MAX_RUNS = 32


@dataclasses.dataclass(frozen=True)
class SlideInfo:
  """What `inspect_slide` learnt from a feature file's header.

  Attributes:
    path: the `.h5` file.
    num_patches: N, rows of `features` and `coords`.
    feature_dim: D, width of `features`.
  """
  path: str
  num_patches: int
  feature_dim: int


def slide_path(features_dir: str, slide_id: str) -> str:
  """The feature file of a slide: `features_dir/<slide_id>.h5`."""
  return os.path.join(features_dir, f'{slide_id}.h5')


def _open(path: str) -> h5py.File:
  """Opens an HDF5 file read-only, turning every failure into a DataError."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  try:
    return h5py.File(path, 'r')
  except Exception as e:  # h5py raises OSError for truncated or non-HDF5 files, others rarely.
    raise DataError(f'{path}: not a readable HDF5 file ({e})') from e


def _dataset(f: h5py.File, path: str, name: str) -> h5py.Dataset:
  """The dataset `name` of an open file, or DataError."""
  try:
    ds = f[name]
  except Exception as e:  # KeyError when missing; other errors when the header is corrupt.
    raise DataError(f'{path}: {name}: dataset missing') from e
  if not isinstance(ds, h5py.Dataset):
    raise DataError(f'{path}: {name}: is a group, not a dataset')
  return ds


def _header_problems(f: h5py.File, path: str, feature_dim: int | None) -> list[str]:
  """Problems visible from the dataset headers alone (no data read)."""
  try:
    return _header_problems_unsafe(f, path, feature_dim)
  except Exception as e:  # a corrupt header can fail in h5py in many ways
    return [f'{path}: cannot read dataset headers ({e})']


def _header_problems_unsafe(f: h5py.File, path: str, feature_dim: int | None) -> list[str]:
  """`_header_problems` without the guard against corrupt headers."""
  problems = []
  shapes = {}
  for name in (FEATURES, COORDS):
    try:
      ds = _dataset(f, path, name)
    except DataError as e:
      problems.append(str(e))
      continue
    shapes[name] = ds.shape
    if name == FEATURES:
      if ds.ndim != 2:
        problems.append(f'{path}: features: shape {ds.shape}, expected [N, D]')
      elif feature_dim is not None and ds.shape[1] != feature_dim:
        problems.append(f'{path}: features: width {ds.shape[1]}, expected {feature_dim} '
                        '(config feature_dim)')
      if ds.dtype.kind != 'f':
        problems.append(f'{path}: features: dtype {ds.dtype}, expected float32')
    else:
      if ds.ndim != 2 or ds.shape[1] != 2:
        problems.append(f'{path}: coords: shape {ds.shape}, expected [N, 2]')
      if ds.dtype.kind not in 'iu':
        problems.append(f'{path}: coords: dtype {ds.dtype}, expected int32 or int64')
  if FEATURES in shapes and len(shapes[FEATURES]) >= 1 and shapes[FEATURES][0] == 0:
    problems.append(f'{path}: features: zero patches')
  if len(shapes) == 2 and all(len(s) >= 1 for s in shapes.values()):
    if shapes[FEATURES][0] != shapes[COORDS][0]:
      problems.append(f'{path}: coords: {shapes[COORDS][0]} rows but features has '
                      f'{shapes[FEATURES][0]}')
  return problems


def inspect_slide(path: str, feature_dim: int | None = None) -> SlideInfo:
  """Checks a feature file's headers (cheap: no data is read).

  Args:
    path: the `.h5` file.
    feature_dim: the expected width D, or None to accept any.

  Returns:
    Its `SlideInfo`.

  Raises:
    DataError: listing every header problem, one per line.
  """
  with _open(path) as f:
    problems = _header_problems(f, path, feature_dim)
    if problems:
      raise DataError('\n'.join(problems))
    n, d = f[FEATURES].shape
  return SlideInfo(path=path, num_patches=int(n), feature_dim=int(d))


def _storage_problems(f: h5py.File, path: str) -> list[str]:
  """Datasets that declare more rows than the file holds (a hostile or truncated header): a
  chunked dataset must have every chunk stored, a contiguous one all its bytes, and no dataset
  more stored bytes than the file has. Reads no data, only the chunk index."""
  size = os.path.getsize(path)
  problems = []
  for name in (FEATURES, COORDS):
    ds = f[name]
    declared = f'declares {" x ".join(map(str, ds.shape))} {ds.dtype} ({ds.nbytes:,} bytes)'
    stored = ds.id.get_storage_size()
    if ds.chunks:
      chunks = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks)]))
      have = ds.id.get_num_chunks()
      if have < chunks:
        problems.append(f'{path}: {name}: {declared} but only {have} of its {chunks} chunks are '
                        f'stored (the file has {size:,} bytes): never written, or truncated')
        continue
    elif stored < ds.nbytes:
      problems.append(f'{path}: {name}: {declared} but the file holds {stored:,} bytes of it '
                      f'(the file has {size:,} bytes): never written, or truncated')
      continue
    if stored > size:
      problems.append(f'{path}: {name}: {stored:,} bytes stored but the file has {size:,}: '
                      'truncated')
  return problems


def check_bag(path: str, feature_dim: int | None = None, dtype: str = 'float32') -> list[str]:
  """Every problem of one feature file, for a validator that reports all at once.

  Checks the headers (as `inspect_slide`) and that the file holds what they declare (a header can
  declare 10^8 rows in a 2 KB file: `_storage_problems`), then reads all features block by block
  for NaN/Inf once cast to `dtype` (float64 values beyond its range become Inf there), and all
  coords block by block for readability (a truncated file can have intact headers and broken
  data). Memory: one block of `_SCAN_ROWS` rows at a time.

  Args:
    path: the `.h5` file.
    feature_dim: the expected width D, or None to accept any.
    dtype: the compute dtype ('float32', 'bfloat16').

  Returns:
    Problem lines `'<file>: <dataset>: <what>'`; empty when the file is fine.
  """
  try:
    f = _open(path)
  except DataError as e:
    return [str(e)]
  with f:
    problems = _header_problems(f, path, feature_dim)
    if not problems:
      try:
        problems = _storage_problems(f, path)
      except Exception as e:  # a corrupt chunk index
        problems = [f'{path}: cannot read the storage of its datasets ({e})']
    if problems:
      return problems
    n = f[FEATURES].shape[0]
    bad_rows, first_bad = 0, None
    cast = jnp.dtype(dtype)  # bfloat16 too
    try:
      for lo in range(0, n, _SCAN_ROWS):
        with np.errstate(over='ignore'):
          block = f[FEATURES][lo:lo + _SCAN_ROWS].astype(cast).astype(np.float32)
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if rows.size and first_bad is None:
          first_bad = lo + int(rows[0])
        bad_rows += rows.size
    except Exception as e:  # corrupt chunk or truncated data
      return [f'{path}: features: cannot read data ({e})']
    if bad_rows:
      held = f[FEATURES].dtype
      cast_note = '' if held == cast else f' as {dtype} (the file holds {held})'
      problems.append(f'{path}: features: {bad_rows} rows contain NaN/Inf{cast_note} (first row '
                      f'{first_bad})')
    try:
      for lo in range(0, n, _SCAN_ROWS):
        f[COORDS][lo:lo + _SCAN_ROWS]
    except Exception as e:
      problems.append(f'{path}: coords: cannot read data ({e})')
  return problems


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
  """Splits sorted unique rows into half-open contiguous runs [lo, hi)."""
  breaks = np.flatnonzero(np.diff(rows) != 1) + 1
  starts = np.concatenate([[0], breaks])
  ends = np.concatenate([breaks, [rows.size]])
  return [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in zip(starts, ends)]


def _read_unique(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
  """Reads sorted unique `rows` of a dataset: one slab, a few runs, or h5py fancy indexing."""
  lo, hi = int(rows[0]), int(rows[-1]) + 1
  if hi - lo <= _SLAB_FACTOR * rows.size + 64:
    slab = ds[lo:hi]
    return slab if hi - lo == rows.size else slab[rows - lo]
  runs = _runs(rows)
  if len(runs) <= _MAX_RUNS:
    return np.concatenate([ds[a:b] for a, b in runs])
  return ds[rows]


def read_rows(path: str, dataset: str, indices: np.ndarray | None = None) -> np.ndarray:
  """Reads rows of `features` or `coords`, in any order and with repeats.

  Args:
    path: the `.h5` file.
    dataset: 'features' or 'coords'.
    indices: [n] integer row indices in [0, N) (any order, repeats allowed), or None for all rows.

  Returns:
    [n, D] (or [N, D]) array in the file's dtype; `out[i] = ds[indices[i]]`.

  Raises:
    DataError: file unreadable, dataset missing, index out of range, or a failed read.
  """
  with _open(path) as f:
    try:
      ds = _dataset(f, path, dataset)
      if indices is None:
        return ds[()]
      indices = np.asarray(indices, dtype=np.int64).reshape(-1)
      if indices.size == 0:
        return np.empty((0,) + ds.shape[1:], ds.dtype)
      if indices.min() < 0 or indices.max() >= ds.shape[0]:
        raise DataError(f'{path}: {dataset}: row index out of range [0, {ds.shape[0]})')
      rows, inverse = np.unique(indices, return_inverse=True)
      data = _read_unique(ds, rows)
      return data if np.array_equal(rows, indices) else data[inverse]
    except DataError:
      raise
    except Exception as e:  # corrupt chunk, truncated data
      raise DataError(f'{path}: {dataset}: cannot read rows ({e})') from e


def _check_finite(features: np.ndarray, path: str) -> None:
  """Raises DataError if any feature value is NaN or Inf."""
  if not np.isfinite(features).all():
    raise DataError(f'{path}: features: contains NaN/Inf')


class H5Source(source.PatientSource):
  """The CLAM backend of a `source.PatientSource`: patient p's segments are its slides' `.h5` files.

  Files are opened per read and closed again.
  """

  def __init__(self, slide_paths: Sequence[Sequence[str]], slide_patches: Sequence[Sequence[int]],
               feature_dim: int, check_finite: bool = True):
    """Builds the source.

    Args:
      slide_paths: [P] the slides' `.h5` files of each patient, in bag order.
      slide_patches: [P] their patch counts (from `inspect_slide`).
      feature_dim: D.
      check_finite: raise DataError when a read contains NaN/Inf.
    """
    self.slide_paths = tuple(tuple(p) for p in slide_paths)
    self.slide_patches = tuple(np.asarray(n, np.int64) for n in slide_patches)
    self.feature_dim = int(feature_dim)
    self.check_finite = check_finite

  def __len__(self) -> int:
    return len(self.slide_paths)

  def segment_sizes(self, index: int) -> np.ndarray:
    return self.slide_patches[index]

  def where(self, index: int, field: str) -> str:
    return f'{self.slide_paths[index][0]}: {field}'

  def read_rows(self, index: int, segment: int, field: str, rows: np.ndarray) -> np.ndarray:
    path = self.slide_paths[index][segment]
    width = self.feature_dim if field == FEATURES else 2
    out = read_rows(path, field, rows)
    if field == FEATURES:  # the dtype the pipeline hands on: float64 beyond its range is Inf
      with np.errstate(over='ignore'):
        out = out.astype(np.float32, copy=False)
    if out.shape[1:] != (width,):
      raise DataError(f'{path}: {field}: rows of shape {out.shape[1:]}, expected ({width},) '
                      '(file changed since the cohort was loaded?)')
    if field == FEATURES and self.check_finite:
      _check_finite(out, path)
    return out

  def read_segment_into(self, index: int, segment: int, features_out: np.ndarray,
                        coords_out: np.ndarray) -> None:
    path = self.slide_paths[index][segment]
    n = int(self.slide_patches[index][segment])
    with _open(path) as f:
      for name, out in ((FEATURES, features_out), (COORDS, coords_out)):
        try:
          ds = _dataset(f, path, name)
          if ds.shape[0] != n:
            raise DataError(f'{path}: {name}: {ds.shape[0]} rows, expected {n} '
                            '(file changed since the cohort was loaded?)')
          if ds.dtype == out.dtype:
            ds.read_direct(out)
          else:
            out[:] = ds[()]
        except DataError:
          raise
        except Exception as e:  # corrupt chunk, truncated data, width changed
          raise DataError(f'{path}: {name}: cannot read data ({e})') from e
    if self.check_finite:
      _check_finite(features_out, path)


def open_bag(paths: Sequence[str], feature_dim: int | None = None,
             num_patches: Sequence[int] | None = None, check_finite: bool = True) -> source.Bag:
  """The bag of one patient from its slides' files, outside a cohort.

  Args:
    paths: the slides' `.h5` files, in bag order.
    feature_dim: the expected width D; None takes it from the first file.
    num_patches: per-slide N if already known (from `inspect_slide`); None inspects the files.
    check_finite: raise DataError when a read contains NaN/Inf.
  """
  if not paths:
    raise DataError('open_bag: no slide files')
  paths = tuple(paths)
  if num_patches is None:
    infos = [inspect_slide(p, feature_dim) for p in paths]
    num_patches = [i.num_patches for i in infos]
    feature_dim = infos[0].feature_dim if feature_dim is None else feature_dim
    if any(i.feature_dim != feature_dim for i in infos):
      raise DataError(f'{paths[0]}: features: slides of one patient differ in width')
  if feature_dim is None:
    raise DataError(f'{paths[0]}: features: feature_dim required with num_patches')
  return H5Source([paths], [num_patches], feature_dim, check_finite)[0]
