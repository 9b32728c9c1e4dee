"""CLAM `.h5` reader: real-layout files written with h5py, index patterns, every error path."""

import os

import h5py
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st
import numpy as np
import pytest

from gimp_jax.data import clam
from gimp_jax.errors import DataError


def write_clam(path, features, coords, chunked=True):
  """Writes a feature file the way CLAM's save_hdf5 does (chunks (32, D), maxshape (None, D))."""
  with h5py.File(path, 'w') as f:
    if features is not None:
      d = features.shape[1] if features.ndim == 2 else None
      kw = dict(chunks=(32, d), maxshape=(None, d)) if chunked and d and len(features) else {}
      f.create_dataset('features', data=features, **kw)
    if coords is not None:
      w = coords.shape[1] if coords.ndim == 2 else None
      kw = dict(chunks=(32, w), maxshape=(None, w)) if chunked and w and len(coords) else {}
      f.create_dataset('coords', data=coords, **kw)
  return str(path)


def bag_arrays(rng, n, d=8, coord_dtype=np.int64):
  feats = rng.standard_normal((n, d)).astype(np.float32)
  coords = (rng.integers(0, 100, (n, 2)) * 256).astype(coord_dtype)
  return feats, coords


@pytest.fixture
def slide(tmp_path):
  rng = np.random.default_rng(0)
  feats, coords = bag_arrays(rng, 200, 8, np.int64)
  return write_clam(tmp_path / 's.h5', feats, coords), feats, coords


@pytest.mark.parametrize('coord_dtype', [np.int32, np.int64])
def test_inspect_and_read_whole(tmp_path, coord_dtype):
  feats, coords = bag_arrays(np.random.default_rng(1), 70, 16, coord_dtype)
  path = write_clam(tmp_path / 'a.h5', feats, coords)
  info = clam.inspect_slide(path, 16)
  assert (info.num_patches, info.feature_dim) == (70, 16)
  np.testing.assert_array_equal(clam.read_rows(path, 'features'), feats)
  bag = clam.open_bag([path])
  np.testing.assert_array_equal(bag.features(), feats)
  got = bag.coords()
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, coords.astype(np.int64))


def _patterns(n):
  rng = np.random.default_rng(2)
  start = 37
  return {
      'contiguous': np.arange(start, start + 50),
      'wrapped_tile': (start + np.arange(3 * n)) % n,  # bag shorter than the window: repeats
      'wrapped': np.concatenate([np.arange(n - 10, n), np.arange(0, 15)]),
      'random_repeats': rng.integers(0, n, 300),
      'few_runs': np.concatenate([np.arange(0, 5), np.arange(100, 103), np.arange(190, 200)]),
      'sparse_many_runs': rng.permutation(n)[:60],
      'single': np.array([199]),
      'empty': np.array([], np.int64),
  }


@pytest.mark.parametrize('name', list(_patterns(200)))
def test_read_rows_any_order(slide, name):
  path, feats, coords = slide
  idx = _patterns(200)[name]
  np.testing.assert_array_equal(clam.read_rows(path, 'features', idx), feats[idx])
  np.testing.assert_array_equal(clam.read_rows(path, 'coords', idx), coords[idx])


def test_patient_bag_concatenates_slides_in_order(tmp_path):
  rng = np.random.default_rng(3)
  f1, c1 = bag_arrays(rng, 45, 8, np.int32)
  f2, c2 = bag_arrays(rng, 33, 8, np.int64)
  p1 = write_clam(tmp_path / 'one.h5', f1, c1)
  p2 = write_clam(tmp_path / 'two.h5', f2, c2)
  bag = clam.open_bag([p1, p2], 8)
  assert bag.num_patches == 78
  feats, coords = np.concatenate([f1, f2]), np.concatenate([c1, c2.astype(np.int32)])
  idx = rng.integers(0, 78, 120)
  np.testing.assert_array_equal(bag.features(idx), feats[idx])
  np.testing.assert_array_equal(bag.coords(idx), coords[idx])
  out_f = np.full((100, 8), 7.0, np.float32)
  out_c = np.full((100, 2), -1, np.int32)
  bag.read_into(out_f, out_c)
  np.testing.assert_array_equal(out_f[:78], feats)
  np.testing.assert_array_equal(out_c[:78], coords)
  assert (out_f[78:] == 7.0).all() and (out_c[78:] == -1).all()  # padding rows untouched
  with pytest.raises(DataError, match='out of range'):
    bag.features(np.array([78]))


def test_unchunked_and_float64_features_are_read_as_float32(tmp_path):
  feats = np.random.default_rng(4).standard_normal((10, 4))
  path = write_clam(tmp_path / 'f64.h5', feats, np.zeros((10, 2), np.int64), chunked=False)
  out = clam.open_bag([path]).features(np.array([3, 1]))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, feats[[3, 1]], rtol=1e-6)


def _expect(problems, *fragments):
  text = '\n'.join(problems)
  for frag in fragments:
    assert frag in text, (frag, text)


def test_header_errors_are_all_reported(tmp_path):
  rng = np.random.default_rng(5)
  f, _ = bag_arrays(rng, 10, 6)
  path = write_clam(tmp_path / 'bad.h5', f, np.zeros((9, 2), np.int32))
  problems = clam.check_bag(path, 8)
  assert len(problems) == 2
  _expect(problems, f'{path}: features: width 6, expected 8', f'{path}: coords: 9 rows')
  with pytest.raises(DataError) as e:
    clam.inspect_slide(path, 8)
  assert str(e.value).count('\n') == 1  # both lines in one error


@pytest.mark.parametrize('case,fragment', [
    ('no_features', 'features: dataset missing'),
    ('no_coords', 'coords: dataset missing'),
    ('zero', 'features: zero patches'),
    ('coords_shape', 'coords: shape (5, 3)'),
    ('coords_float', 'coords: dtype float32'),
    ('features_1d', 'features: shape (5,)'),
])
def test_structure_errors(tmp_path, case, fragment):
  f = np.ones((5, 8), np.float32)
  c = np.zeros((5, 2), np.int64)
  args = {
      'no_features': (None, c), 'no_coords': (f, None),
      'zero': (np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64)),
      'coords_shape': (f, np.zeros((5, 3), np.int64)),
      'coords_float': (f, np.zeros((5, 2), np.float32)),
      'features_1d': (np.ones(5, np.float32), c),
  }[case]
  path = write_clam(tmp_path / f'{case}.h5', *args)
  _expect(clam.check_bag(path, 8), path, fragment)
  with pytest.raises(DataError, match=fragment.split(':')[0]):
    clam.inspect_slide(path, 8)


def test_nan_inf_found_by_check_and_on_read(tmp_path):
  f = np.ones((50, 4), np.float32)
  f[7, 2] = np.nan
  f[30, 0] = np.inf
  path = write_clam(tmp_path / 'nan.h5', f, np.zeros((50, 2), np.int32))
  _expect(clam.check_bag(path, 4), f'{path}: features: 2 rows contain NaN/Inf (first row 7)')
  bag = clam.open_bag([path])
  np.testing.assert_array_equal(bag.features(np.arange(10, 20)), f[10:20])  # clean rows read
  with pytest.raises(DataError, match='NaN/Inf'):
    bag.features(np.arange(0, 10))
  with pytest.raises(DataError, match='NaN/Inf'):
    bag.read_into(np.zeros((50, 4), np.float32), np.zeros((50, 2), np.int32))


def test_missing_truncated_and_foreign_files(tmp_path, slide):
  path, _, _ = slide
  _expect(clam.check_bag(str(tmp_path / 'none.h5')), 'none.h5: file not found')
  data = open(path, 'rb').read()
  trunc = tmp_path / 'trunc.h5'
  trunc.write_bytes(data[:len(data) // 2])
  text = tmp_path / 'text.h5'
  text.write_text('patient_id,slide_id\n')
  for p in (trunc, text):
    problems = clam.check_bag(str(p), 8)
    assert problems and all(x.startswith(str(p)) for x in problems), problems
    with pytest.raises(DataError, match=str(p)):
      clam.open_bag([str(p)], 8, [200]).features(np.arange(100, 200))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=64))
def test_fuzz_corrupted_bytes_raise_only_data_error(tmp_path, offset, junk):
  rng = np.random.default_rng(6)
  path = str(tmp_path / 'fuzz.h5')
  feats, coords = bag_arrays(rng, 40, 8)
  write_clam(path, feats, coords)
  data = bytearray(open(path, 'rb').read())
  offset %= len(data)
  data[offset:offset + len(junk)] = junk
  with open(path, 'wb') as f:
    f.write(bytes(data[:max(1, len(data))]))
  problems = clam.check_bag(path, 8)  # never raises
  assert all(isinstance(p, str) and p.startswith(path) for p in problems)
  try:
    bag = clam.open_bag([path], 8)
    bag.features(rng.integers(0, bag.num_patches, 30))
    bag.coords()
    n = bag.num_patches
    bag.read_into(np.zeros((n, 8), np.float32), np.zeros((n, 2), np.int32))
  except DataError:
    pass
  os.remove(path)


def _hostile(path, rows, chunked=True):
  """A small file whose headers declare `rows` rows of features [rows, 32] and coords [rows, 2]
  that were never written."""
  with h5py.File(path, 'w') as f:
    for name, width, dtype in (('features', 32, 'f4'), ('coords', 2, 'i8')):
      kw = dict(chunks=(32, width), maxshape=(None, width)) if chunked else {}
      f.create_dataset(name, shape=(rows, width), dtype=dtype, **kw)
  return str(path)


_CEILING = r'''
import resource, sys
from gimp_jax.data import clam
vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize"))) << 10
resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), vm + (512 << 20)))
print("\n".join(clam.check_bag(sys.argv[1], 32)))
'''


def test_a_file_declaring_rows_it_cannot_hold_is_refused_within_a_memory_ceiling(tmp_path):
  """10^8 declared rows (12.8 GB of features, 1.6 GB of coords) in a file of a few KB: refused
  from the chunk index, in a process that may allocate at most 512 MiB more than at start."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  path = _hostile(tmp_path / 'hostile.h5', 10**8)
  assert os.path.getsize(path) < 10_000
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', _CEILING, path], capture_output=True, text=True,
                       timeout=120, cwd=root, env=dict(os.environ, PYTHONPATH=root))
  assert out.returncode == 0, out.stderr[-2000:]
  size = os.path.getsize(path)
  assert out.stdout.splitlines() == [
      f'{path}: features: declares 100000000 x 32 float32 (12,800,000,000 bytes) but only 0 of '
      f'its 3125000 chunks are stored (the file has {size:,} bytes): never written, or truncated',
      f'{path}: coords: declares 100000000 x 2 int64 (1,600,000,000 bytes) but only 0 of its '
      f'3125000 chunks are stored (the file has {size:,} bytes): never written, or truncated']


def test_partly_written_and_contiguous_unwritten_datasets_are_refused(tmp_path):
  rng = np.random.default_rng(3)
  feats, coords = bag_arrays(rng, 100, 32)
  path = write_clam(tmp_path / 'grown.h5', feats, coords)
  with h5py.File(path, 'a') as f:  # resized, the new rows never written
    f['features'].resize((1000, 32))
    f['coords'].resize((1000, 2))
  problems = clam.check_bag(path, 32)
  assert [p.split(': ')[1] for p in problems] == ['features', 'coords']
  assert 'only 4 of its 32 chunks are stored' in problems[0]
  flat = _hostile(tmp_path / 'flat.h5', 1000, chunked=False)
  assert clam.check_bag(flat, 32)[0] == (
      f'{flat}: features: declares 1000 x 32 float32 (128,000 bytes) but the file holds 0 bytes '
      f'of it (the file has {os.path.getsize(flat):,} bytes): never written, or truncated')
  packed = str(tmp_path / 'gzip.h5')  # compressed: fewer bytes stored than declared, all chunks
  with h5py.File(packed, 'w') as f:
    f.create_dataset('features', data=np.zeros((1000, 32), np.float32), chunks=(32, 32),
                     compression='gzip')
    f.create_dataset('coords', data=np.zeros((1000, 2), np.int64), compression='gzip')
  assert clam.check_bag(packed, 32) == []
