"""The patch geometry that TRIDENT's and CLAM's `.h5` files carry as `coords` attributes.

TRIDENT (`trident/IO.py::coords_to_h5`, copied onto its feature files by
`WSI.extract_patch_features`) writes on `coords` (int64 [N, 2], level-0 x, y):
`patch_size` (pixels at the target magnification), `patch_size_level0` (= patch_size * src_mag //
target_mag), `level0_magnification` and `target_magnification` (whole numbers; the level-0 one
binned from the slide's MPP by `WSI._fetch_magnification`), `overlap`, `name`, `savetodir`,
`level0_width`, `level0_height`; and on `features`: `name`, `savetodir`, `encoder`. Python ints are
stored as int64 scalars, strings as variable-length UTF-8.

CLAM's patch files (`create_patches_fp.py`) carry `patch_size`, `patch_level`, `downsample`
([2] float, level-0 pixels per pixel of `patch_level`), `downsampled_level_dim`, `level_dim`,
`name`, `save_path`; CLAM's feature files carry none. `read_geometry` understands all three and
ours (which writes TRIDENT's attributes plus `patch_level` and `magnification`).
"""

import dataclasses
import math

import h5py
import numpy as np

from gimp_jax.errors import DataError

# TRIDENT's `_fetch_magnification`: (upper MPP bound, magnification), first match wins.
_MAG_BINS = ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5))


@dataclasses.dataclass(frozen=True)
class PatchGeometry:
  """Where a feature file's patches come from (None: the file does not say).

  Attributes:
    patch_size: patch side in pixels at the target magnification (as fed to the encoder's resize).
    patch_size_level0: patch side in level-0 pixels (the coords' grid step without overlap).
    target_magnification: magnification of the patches (e.g. 20).
    level0_magnification: magnification of level 0 (e.g. 40).
    patch_level: pyramid level read (CLAM, ours).
    encoder: the encoder's name (TRIDENT, ours).
    slide_path: the slide the patches were cut from (ours).
  """
  patch_size: int | None
  patch_size_level0: int | None
  target_magnification: float | None
  level0_magnification: float | None
  patch_level: int | None
  encoder: str | None
  slide_path: str | None = None


def magnification_from_mpp(mpp: float) -> int | float:
  """TRIDENT's level-0 magnification for `mpp` microns per pixel (80, 60, 40, 20, 10 or 5).

  Coarser than TRIDENT's bins (which refuse such slides): 10 / mpp.
  """
  for bound, magnification in _MAG_BINS:
    if mpp < bound:
      return magnification
  return _number(10.0 / mpp)


def _number(value: float) -> int | float:
  """A whole number as int (TRIDENT writes magnifications as ints), else float."""
  return int(round(value)) if abs(value - round(value)) < 1e-9 else float(value)


def coords_attrs(*, name: str, patch_size: int, patch_size_level0: int, patch_level: int,
                 mpp: float, magnification: float, width: int, height: int,
                 savetodir: str, slide_path: str) -> dict:
  """TRIDENT's `coords` attributes (with its dtypes) and ours (`patch_level`, `magnification`,
  `slide_path`: where the report's heatmaps find the slide)."""
  return {
      'patch_size': int(patch_size),
      'patch_size_level0': int(patch_size_level0),
      'level0_magnification': magnification_from_mpp(mpp),
      'target_magnification': _number(magnification),
      'overlap': 0,
      'name': str(name),
      'savetodir': str(savetodir),
      'level0_width': int(width),
      'level0_height': int(height),
      'patch_level': int(patch_level),
      'magnification': float(magnification),
      'slide_path': str(slide_path),
  }


def features_attrs(*, name: str, encoder: str, savetodir: str) -> dict:
  """TRIDENT's `features` attributes."""
  return {'name': str(name), 'savetodir': str(savetodir), 'encoder': str(encoder)}


def _get(attrs, key, kind, path):
  """attrs[key] as int/float/str, None when absent; DataError when not of that kind."""
  if key not in attrs:
    return None
  value = attrs[key]
  try:
    if kind is str:
      return value.decode() if isinstance(value, bytes) else str(value)
    value = np.asarray(value).reshape(-1)[0] if np.ndim(value) else value
    out = kind(value)
    if isinstance(out, float) and not math.isfinite(out):
      raise ValueError(out)
    return out
  except (TypeError, ValueError, IndexError) as e:
    raise DataError(f'{path}: coords: attribute {key}={value!r} is not a {kind.__name__}') from e


def read_geometry(path: str) -> PatchGeometry:
  """The patch geometry recorded in a TRIDENT, CLAM or gimp_jax `.h5` (features or patches file).

  Raises:
    DataError: the file or its `coords` cannot be read, or an attribute has the wrong type.
  """
  try:
    f = h5py.File(path, 'r')
  except Exception as e:  # OSError for non-HDF5 files, others for corrupt headers
    raise DataError(f'{path}: not a readable HDF5 file ({e})') from e
  with f:
    if not isinstance(f.get('coords'), h5py.Dataset):
      raise DataError(f'{path}: coords: dataset missing')
    attrs = dict(f['coords'].attrs)
    features = f.get('features')
    encoder = (_get(dict(features.attrs), 'encoder', str, path)
               if isinstance(features, h5py.Dataset) else None)
  patch_size = _get(attrs, 'patch_size', int, path)
  level0 = _get(attrs, 'patch_size_level0', int, path)
  if level0 is None and patch_size is not None and 'downsample' in attrs:  # CLAM
    level0 = int(round(patch_size * _get(attrs, 'downsample', float, path)))
  level = _get(attrs, 'patch_level', int, path)
  if level0 is None and patch_size is not None and level is not None:  # CLAM without downsample
    level0 = patch_size * 2 ** level
  return PatchGeometry(
      patch_size=patch_size, patch_size_level0=level0,
      target_magnification=_get(attrs, 'target_magnification', float, path)
      or _get(attrs, 'magnification', float, path),  # gimp_jax files before TRIDENT's attributes
      level0_magnification=_get(attrs, 'level0_magnification', float, path),
      patch_level=level, encoder=encoder, slide_path=_get(attrs, 'slide_path', str, path))
