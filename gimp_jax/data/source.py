"""Random access to the patients' bags: one `Bag` type over two storage backends.

A `PatientSource` holds the bags of a cohort's P patients (`len(source) == P`, `source[p]` is the
lazy `Bag` of patient p). A bag's N rows are stored as consecutive segments; the backend reads
segments and says where they are in messages:
- `clam.H5Source`: one segment per slide, the CLAM `<slide_id>.h5` files read with h5py;
- `tfds_source.RecordSource`: one segment per chunk record of the ArrayRecord dataset written by
  `tfds_builder`, read through `tfds.data_source`.
Nothing is read until a bag's rows are asked for, so holding a cohort costs no file handles.
"""

import abc

import numpy as np

from gimp_jax.errors import DataError

FEATURES = 'features'
COORDS = 'coords'


class PatientSource(abc.ABC):
  """The bags of P patients; a backend implements the four abstract methods.

  Attributes:
    feature_dim: D, the width of every bag's features.
  """

  feature_dim: int

  @abc.abstractmethod
  def __len__(self) -> int:
    """P, the number of patients."""

  @abc.abstractmethod
  def segment_sizes(self, index: int) -> np.ndarray:
    """[S] int64 rows of each segment of patient `index`'s bag, in bag order."""

  @abc.abstractmethod
  def where(self, index: int, field: str) -> str:
    """The start of a message about `field` of patient `index` (file or dataset, patient)."""

  @abc.abstractmethod
  def read_rows(self, index: int, segment: int, field: str, rows: np.ndarray) -> np.ndarray:
    """Rows of one segment (any order, repeats allowed), checked.

    Args:
      index: the patient.
      segment: k, a segment of its bag.
      field: 'features' or 'coords'.
      rows: [n] row indices within the segment.

    Returns:
      [n, D] float32 features or [n, 2] int32 coords.

    Raises:
      DataError: unreadable, a shape other than the cohort recorded, or NaN/Inf features.
    """

  @abc.abstractmethod
  def read_segment_into(self, index: int, segment: int, features_out: np.ndarray,
                        coords_out: np.ndarray) -> None:
    """Reads a whole segment into features_out [rows, D] float32 and coords_out [rows, 2] int32."""

  def __getitem__(self, index: int) -> 'Bag':
    """The lazy bag of patient `index`."""
    return Bag(self, int(index))


class Bag:
  """The bag of one patient: features [N, D] float32 and coords [N, 2] int32, read lazily.

  Row r of the bag is row `r - offsets[k]` of segment k, where `offsets` are the cumulative
  segment sizes (a patient with several slides is their bags concatenated in slide order).

  Attributes:
    source: the patient source holding the bag.
    index: the patient's index in it.
    feature_dim: D.
    offsets: [S + 1] int64 first bag row of each segment, then N.
    num_patches: N.
  """

  def __init__(self, source: PatientSource, index: int):
    self.source = source
    self.index = index
    self.feature_dim = source.feature_dim
    self.offsets = np.concatenate([[0], np.cumsum(source.segment_sizes(index))]).astype(np.int64)
    self.num_patches = int(self.offsets[-1])

  def _gather(self, field: str, indices: np.ndarray | None, width: int, dtype) -> np.ndarray:
    """out[i] = bag row indices[i] of `field`, reading each segment once."""
    if indices is None:
      indices = np.arange(self.num_patches)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_patches):
      raise DataError(f'{self.source.where(self.index, field)}: bag row out of range '
                      f'[0, {self.num_patches})')
    out = np.empty((indices.size, width), dtype)
    segment = np.searchsorted(self.offsets, indices, side='right') - 1
    for k in np.unique(segment):
      where = np.flatnonzero(segment == k)
      out[where] = self.source.read_rows(self.index, int(k), field,
                                         indices[where] - self.offsets[k])
    return out

  def features(self, indices: np.ndarray | None = None) -> np.ndarray:
    """Patch features.

    Args:
      indices: [n] bag row indices (any order, repeats allowed), or None for the whole bag.

    Returns:
      [n, D] float32 (or [N, D] for the whole bag).
    """
    return self._gather(FEATURES, indices, self.feature_dim, np.float32)

  def coords(self, indices: np.ndarray | None = None) -> np.ndarray:
    """Patch coordinates: [n, 2] int32 level-0 (x, y) (or [N, 2] for the whole bag)."""
    return self._gather(COORDS, indices, 2, np.int32)

  def read_into(self, features_out: np.ndarray, coords_out: np.ndarray) -> None:
    """Reads the whole bag into preallocated rows (no intermediate copy of a large bag).

    Args:
      features_out: [>= N, D] float32; rows [0, N) are written.
      coords_out: [>= N, 2] int32; rows [0, N) are written.
    """
    for k in range(self.offsets.size - 1):
      lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
      self.source.read_segment_into(self.index, k, features_out[lo:hi], coords_out[lo:hi])
