"""Tissue mask, level choice, grid and the crash-safe feature writer, on small synthetic inputs."""

import os
from unittest import mock

import h5py
import numpy as np
from PIL import Image
import pytest

from gimp_jax.errors import DataError
from gimp_jax.preprocess import tiling
from gimp_jax.preprocess import tissue
from gimp_jax.preprocess import writer


def test_saturation_matches_pil_hsv():
  rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  ref = np.asarray(Image.fromarray(rgb).convert('HSV'))[..., 1].astype(int)
  assert np.abs(tissue.saturation(rgb).astype(int) - ref).max() <= 1


def test_otsu_maximises_between_class_variance():
  rng = np.random.default_rng(1)
  values = np.concatenate([rng.normal(40, 10, 3000), rng.normal(170, 25, 1000)])
  values = np.clip(values, 0, 255).astype(np.uint8)
  # Brute force: the threshold t (classes <= t and > t) with the smallest within-class variance.
  def within(t):
    low, high = values[values <= t].astype(float), values[values > t].astype(float)
    return sum(len(c) * c.var() for c in (low, high) if len(c))
  expected = min(range(255), key=within)
  assert abs(tissue.otsu_threshold(values) - expected) <= 1
  assert 60 < tissue.otsu_threshold(values) < 150


def _synthetic_thumbnail():
  """White glass; a pink 80 px disc with a 30 px hole and a 4 px hole; a 3 px pink speck."""
  yy, xx = np.mgrid[:200, :200]
  disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 80 ** 2
  big_hole = (yy - 100) ** 2 + (xx - 90) ** 2 < 15 ** 2
  small_hole = (abs(yy - 60) < 2) & (abs(xx - 130) < 2)
  speck = (abs(yy - 10) < 2) & (abs(xx - 10) < 2)
  tissue_px = (disc & ~big_hole & ~small_hole) | speck
  image = np.full((200, 200, 3), 245, np.uint8)
  image[tissue_px] = (200, 90, 160)
  return image, disc, big_hole, small_hole, speck


def test_tissue_mask_drops_specks_and_fills_small_holes():
  image, disc, big_hole, small_hole, speck = _synthetic_thumbnail()
  params = tissue.TissueParams(median_size=3, close_size=1, min_tissue_area=100, min_hole_area=50)
  mask = tissue.tissue_mask(image, params)
  assert not mask[speck].any()  # 9 px region < 100 px
  assert not mask[big_hole].any()  # ~700 px hole is kept as a hole
  assert mask[small_hole].all()  # 9 px hole is filled
  assert mask[disc & ~big_hole].mean() > 0.99
  assert not mask[~disc].any()


def test_tissue_mask_keeps_only_the_largest_holes():
  image, disc, big_hole, small_hole, _ = _synthetic_thumbnail()
  params = tissue.TissueParams(median_size=1, close_size=1, min_hole_area=1, max_holes=1)
  mask = tissue.tissue_mask(image, params)
  assert not mask[big_hole].any() and mask[small_hole].all()
  params = tissue.TissueParams(median_size=1, close_size=1, min_hole_area=1, max_holes=2)
  assert not tissue.tissue_mask(image, params)[small_hole].any()


def test_level0_mpp_and_fallbacks():
  assert tiling.level0_mpp({'openslide.mpp-x': '0.2527'}, 's') == pytest.approx(0.2527)
  with mock.patch.object(tiling.logging, 'warning') as warning:
    assert tiling.level0_mpp({'openslide.objective-power': '40'}, 's') == pytest.approx(0.25)
  assert warning.call_count == 1
  with pytest.raises(DataError, match=r's: .*--mpp='):  # no guess: the user is told the fix
    tiling.level0_mpp({'openslide.mpp-x': 'n/a'}, 's')
  assert tiling.level0_mpp({'openslide.mpp-x': 'n/a'}, 's', override=0.5) == 0.5
  assert tiling.level0_mpp({'openslide.mpp-x': '0.25'}, 's', override=0.5) == 0.5


@pytest.mark.parametrize('mpp, downsamples, level, read_size', [
    (0.25, (1.0, 4.0, 16.0), 0, 512),  # 40x without a 20x level: read 512, resize to 256
    (0.25, (1.0, 2.0, 8.0), 1, 256),  # 40x with a 20x level
    (0.2527, (1.0, 4.0002, 16.0), 0, 512),  # TCGA 40x: 1.98 is taken as 2
    (0.3, (1.0, 4.0), 0, 427),  # 1.67 is no whole factor: 256 * 0.5 / 0.3 px
    (0.499, (1.0, 4.0), 0, 256),  # Aperio 20x read as is
    (0.1, (1.0, 2.0, 4.0, 8.0), 2, 320),  # 100x: level 2 is 0.4 um/px, 25% finer than 20x
])
def test_choose_level(mpp, downsamples, level, read_size):
  chosen = tiling.choose_level(mpp, downsamples, target_mpp=0.5)
  assert chosen == level
  assert tiling.read_size_at(mpp * downsamples[chosen], 0.5, 256) == read_size


def test_choose_level_warns_when_slide_is_coarser_than_target():
  with mock.patch.object(tiling.logging, 'warning') as warning:
    assert tiling.choose_level(1.0, (1.0, 4.0), target_mpp=0.5, source='x.svs') == 0
  warning.assert_called_once()
  assert tiling.read_size_at(1.0, 0.5, 256) == 128


def test_grid_coords_follow_the_mask():
  mask = np.zeros((40, 50), bool)  # downsample 8: the slide is 400 x 320 level-0 px
  mask[8:24, 16:32] = True  # level-0 x in [128, 256), y in [64, 192)
  coords = tiling.grid_coords(400, 320, 64, mask, (8.0, 8.0))
  assert coords.dtype == np.int32
  expected = [(x, y) for y in range(0, 320, 64) for x in range(0, 400, 64)
              if any(128 <= x + dx < 256 and 64 <= y + dy < 192
                     for dx in (16, 48) for dy in (16, 48))]
  assert [tuple(c) for c in coords] == expected


def test_grid_coords_pad_edge_cells_but_not_beyond_the_slide():
  mask = np.ones((10, 10), bool)  # 100 x 100 slide, step 64: cells at 0 and 64 on each axis
  coords = tiling.grid_coords(100, 100, 64, mask, (10.0, 10.0))
  assert sorted(map(tuple, coords)) == [(0, 0), (0, 64), (64, 0), (64, 64)]
  coords = tiling.grid_coords(70, 70, 64, np.ones((7, 7), bool), (10.0, 10.0))
  assert sorted(map(tuple, coords)) == [(0, 0)]  # the edge cell's quarter points all lie outside


def test_writer_renames_only_on_success(tmp_path):
  rng = np.random.default_rng(0)
  final = writer.feature_path(str(tmp_path), 's1')
  with writer.FeatureWriter(str(tmp_path), 's1', 8, {'patch_size': 256}) as out:
    for n in (5, 40):
      out.append(rng.normal(size=(n, 8)), rng.integers(0, 1000, (n, 2)))
      assert os.path.exists(final + '.partial') and not writer.is_finished(str(tmp_path), 's1')
  assert writer.is_finished(str(tmp_path), 's1') and not os.path.exists(final + '.partial')
  with h5py.File(final, 'r') as f:
    assert f['features'].shape == (45, 8) and f['features'].dtype == np.float32
    assert f['coords'].shape == (45, 2) and f['coords'].dtype == np.int32
    assert f['features'].chunks == (32, 8) and f['coords'].chunks == (32, 2)
    assert f['coords'].attrs['patch_size'] == 256


def test_writer_leaves_nothing_after_a_failure(tmp_path):
  with pytest.raises(RuntimeError):
    with writer.FeatureWriter(str(tmp_path), 's2', 4) as out:
      out.append(np.zeros((3, 4)), np.zeros((3, 2)))
      raise RuntimeError('reader died')
  assert os.listdir(tmp_path) == []


def test_writer_overwrites_a_stale_partial(tmp_path):
  stale = tmp_path / 's3.h5.partial'
  stale.write_bytes(b'left by a killed process')
  assert not writer.is_finished(str(tmp_path), 's3')
  with writer.FeatureWriter(str(tmp_path), 's3', 4) as out:
    out.append(np.ones((2, 4)), np.zeros((2, 2)))
  assert os.listdir(tmp_path) == ['s3.h5']
