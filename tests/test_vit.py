"""The ViT patch encoders against PyTorch timm (the models TRIDENT builds), same weights and inputs.

Each preset at its published width and 1 block: random timm weights (LayerScale, tokens and biases
drawn far from their initial values, so no part is an identity) are saved as the user would have
them (.safetensors, .bin, or Hugging Face's layout for Phikon-v2), loaded through the CLI's path
(`encoders.from_file`), and the features compared within 1e-4 at the native grid and at a smaller
one (position-embedding interpolation). CONCH v1.5's pooler is checked against NumPy.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import timm
import torch
import torch.nn.functional as F

from gimp_jax.errors import DataError
from gimp_jax.preprocess import encoders
from gimp_jax.preprocess import pos_embed

pytestmark = pytest.mark.usefixtures('fast_compilation')

# The timm calls of TRIDENT's `trident/patch_encoder_models/load.py`, at depth 1.
TIMM = {
    'uni': ('vit_large_patch16_224', dict(init_values=1e-5)),
    'uni2_h': ('vit_giant_patch14_224', dict(
        patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
        mlp_ratio=2.66667 * 2, no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU, reg_tokens=8)),
    'virchow2': ('vit_huge_patch14_224', dict(
        init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, global_pool='',
        mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)),
    'h_optimus_0': ('vit_giant_patch14_reg4_dinov2', dict(img_size=224, global_pool='token',
                                                          init_values=1e-5)),
    'phikon_v2': ('vit_large_patch16_224', dict(init_values=1e-5)),  # DINOv2 ViT-L/16, no registers
}


def _timm_model(name, seed, depth=1, **extra):
  arch, kwargs = TIMM[name]
  kwargs = dict(kwargs, depth=depth, num_classes=0, dynamic_img_size=True, **extra)
  model = timm.create_model(arch, pretrained=False, **kwargs).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, p in model.named_parameters():
      if key.endswith('gamma') or (p.ndim == 1 and 'norm' in key and key.endswith('weight')):
        p.uniform_(0.5, 1.5, generator=generator)
      elif p.ndim == 1:
        p.normal_(0.0, 0.1, generator=generator)
      elif key in ('cls_token', 'reg_token', 'pos_embed'):
        p.normal_(0.0, 0.5, generator=generator)
      else:  # Linear [out, in] or Conv2d [out, 3, p, p]: unit-variance activations
        p.normal_(0.0, float(np.prod(p.shape[1:])) ** -0.5, generator=generator)
  return model


def _timm_features(name, model, x):
  """x: [B, H, W, 3] float32 normalised -> the encoder's features as TRIDENT returns them."""
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  if name == 'virchow2':  # TRIDENT's Virchow2 forward: CLS ⊕ mean of the patch tokens
    out = torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)
  return out.numpy()


def _jitted(model, method=lambda m, x: m(x)):
  """`method(model, x)` as one compiled program (faster than op-by-op dispatch, even compiled)."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: method(nnx.merge(graphdef, state), x))
  return lambda x: np.asarray(forward(state, x))


def _inputs(size, batch=2, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def _save(state_dict, path):
  safetensors.numpy.save_file({k: v.detach().numpy().copy() for k, v in state_dict.items()}, path)
  return str(path)


def _to_hf_dinov2(state_dict):
  """timm ViT names -> Hugging Face `Dinov2Model` names (q, k, v split), with its mask token."""
  out = {'embeddings.mask_token': torch.zeros(1, state_dict['cls_token'].shape[-1])}
  for key, value in state_dict.items():
    parts = key.split('.')
    if key == 'cls_token':
      out['embeddings.cls_token'] = value
    elif key == 'pos_embed':
      out['embeddings.position_embeddings'] = value
    elif key.startswith('patch_embed.proj.'):
      out[f'embeddings.patch_embeddings.projection.{parts[-1]}'] = value
    elif key.startswith('norm.'):
      out[f'layernorm.{parts[-1]}'] = value
    else:
      layer, rest = parts[1], '.'.join(parts[2:])
      pre = f'encoder.layer.{layer}.'
      if rest.startswith('attn.qkv.'):
        for name, chunk in zip(('query', 'key', 'value'), value.chunk(3, dim=0)):
          out[f'{pre}attention.attention.{name}.{parts[-1]}'] = chunk
      elif rest.startswith('attn.proj.'):
        out[f'{pre}attention.output.dense.{parts[-1]}'] = value
      elif rest.startswith('ls'):
        out[f'{pre}layer_scale{rest[2]}.lambda1'] = value
      else:
        out[pre + rest] = value  # norm1, norm2, mlp.fc1, mlp.fc2
  return out


@pytest.mark.parametrize('name', ['uni', 'uni2_h', 'virchow2', 'h_optimus_0', 'phikon_v2'])
def test_preset_matches_timm(name, tmp_path):
  preset = encoders.PRESETS[name].with_depth(1)
  torch_model = _timm_model(name, seed=len(name))
  state = torch_model.state_dict()
  if name == 'phikon_v2':
    path = _save(_to_hf_dinov2(state), tmp_path / 'model.safetensors')
  elif name == 'uni':  # the `.bin` TRIDENT loads, through the optional torch path
    path = str(tmp_path / 'pytorch_model.bin')
    torch.save(state, path)
  else:
    path = _save(state, tmp_path / 'model.safetensors')
  model = _jitted(encoders.from_file(preset, path))
  p = preset.vit.patch_size
  for size in (preset.input_size, 5 * p):  # the trained grid, and an interpolated 5 x 5 one
    x = _inputs(size)
    ours = model(x)
    ref = _timm_features(name, torch_model, x)
    assert ours.shape == ref.shape == (2, preset.feature_dim)
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4, err_msg=f'{name} at {size}px')


def test_bfloat16_is_close_and_parameters_stay_float32(tmp_path):
  preset = encoders.PRESETS['uni'].with_depth(1)
  torch_model = _timm_model('uni', seed=3)
  path = _save(torch_model.state_dict(), tmp_path / 'uni.safetensors')
  model = encoders.from_file(preset, path, dtype=jnp.bfloat16)
  assert model.blocks[0].attn.qkv.kernel[...].dtype == np.float32
  x = _inputs(224, batch=1)
  ours = _jitted(model)(x)
  ref = _timm_features('uni', torch_model, x)
  assert ours.dtype == np.float32
  assert np.abs(ours - ref).max() < 0.05 * np.abs(ref).max()


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _numpy_conch_head(tokens, sd):
  """CONCH v1.5's AttentionalPooler (1 query, 8 heads) and ln_contrast, in float64 NumPy."""
  g = {k: v.detach().numpy().astype(np.float64) for k, v in sd.items()}
  q = _layer_norm(g['attn_pool_contrast.query'], g['attn_pool_contrast.ln_q.weight'],
                  g['attn_pool_contrast.ln_q.bias'], 1e-5) @ g['attn_pool_contrast.to_q.weight'].T
  x = _layer_norm(tokens, g['attn_pool_contrast.ln_k.weight'], g['attn_pool_contrast.ln_k.bias'],
                  1e-5)
  kv = x @ g['attn_pool_contrast.to_kv.weight'].T
  k, v = kv[..., :768], kv[..., 768:]
  heads = []
  for h in range(8):
    s = slice(96 * h, 96 * (h + 1))
    logits = np.einsum('qd,bkd->bqk', q[:, s], k[..., s]) / np.sqrt(96)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    heads.append(np.einsum('bqk,bkd->bqd', w / w.sum(-1, keepdims=True), v[..., s]))
  pooled = (np.concatenate(heads, -1) @ g['attn_pool_contrast.to_out.weight'].T)[:, 0]
  return _layer_norm(pooled, g['ln_contrast.weight'], g['ln_contrast.bias'], 1e-5)


def test_conch_v1_5_matches_its_reference(tmp_path):
  """Trunk: timm ViT-L/16 (LayerScale 1.0) at 448 px with the position grid resampled as CONCH's
  code does (checkpoint 16 x 16 -> bilinear to the trunk's 14 x 14 at load -> bicubic by 28.1/14 in
  the forward); pooler and final LayerNorm in NumPy."""
  preset = encoders.PRESETS['conch_v1_5'].with_depth(1)
  trunk = timm.create_model('vit_large_patch16_224', pretrained=False, depth=1, init_values=1.0,
                            num_classes=0, img_size=448).eval()
  torch.manual_seed(0)
  with torch.no_grad():
    for key, p in trunk.named_parameters():
      p.copy_(torch.randn(p.shape) * (0.1 if p.ndim == 1 else float(np.prod(p.shape[1:])) ** -0.5))
    for block in trunk.blocks:
      block.ls1.gamma.uniform_(0.5, 1.5)
      block.ls2.gamma.uniform_(0.5, 1.5)
    trunk.norm.weight.uniform_(0.5, 1.5)
    ckpt_pos = torch.randn(1, 1 + 16 * 16, 1024) * 0.5
    grid16 = ckpt_pos[:, 1:].reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    grid14 = F.interpolate(grid16, size=(14, 14), mode='bilinear', align_corners=False,
                           antialias=False)
    grid28 = F.interpolate(grid14, scale_factor=(28.1 / 14, 28.1 / 14), mode='bicubic')
    trunk.pos_embed.copy_(torch.cat([ckpt_pos[:, :1],
                                     grid28.permute(0, 2, 3, 1).reshape(1, 28 * 28, -1)], 1))
  head = {'attn_pool_contrast.query': torch.randn(1, 768),
          'attn_pool_contrast.ln_q.weight': torch.rand(768) + 0.5,
          'attn_pool_contrast.ln_q.bias': torch.randn(768) * 0.1,
          'attn_pool_contrast.ln_k.weight': torch.rand(1024) + 0.5,
          'attn_pool_contrast.ln_k.bias': torch.randn(1024) * 0.1,
          'attn_pool_contrast.to_q.weight': torch.randn(768, 768) / 768 ** 0.5,
          'attn_pool_contrast.to_kv.weight': torch.randn(1536, 1024) / 32,
          'attn_pool_contrast.to_out.weight': torch.randn(768, 768) / 768 ** 0.5,
          'ln_contrast.weight': torch.rand(768) + 0.5, 'ln_contrast.bias': torch.randn(768) * 0.1}
  checkpoint = {f'trunk.{k}': v for k, v in trunk.state_dict().items()}
  checkpoint['trunk.pos_embed'] = ckpt_pos
  model = encoders.from_file(preset, _save({**checkpoint, **head}, tmp_path / 'conch.safetensors'))
  x = _inputs(448, batch=1)
  with torch.no_grad():
    tokens = trunk.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours_tokens = _jitted(model, lambda m, x: m.trunk.tokens(x))(x)
  np.testing.assert_allclose(ours_tokens, tokens, rtol=0, atol=1e-4)
  ours = _jitted(model)(x)
  ref = _numpy_conch_head(tokens.astype(np.float64), head)
  assert ours.shape == (1, 768) and np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize('n, m', [(14, 5), (14, 28), (16, 14), (7, 7)])
def test_resampling_matrices_match_torch_interpolate(n, m):
  grid = torch.randn(1, 3, n, n, dtype=torch.float64)
  cases = [(pos_embed.timm_bicubic(n, m), dict(size=(m, m), mode='bicubic', antialias=True,
                                               align_corners=False))]
  cases.append((pos_embed.bilinear(n, m), dict(size=(m, m), mode='bilinear', align_corners=False)))
  scale = (m + 0.1) / n
  cases.append((pos_embed.dino_bicubic(n, scale), dict(scale_factor=(scale, scale),
                                                       mode='bicubic')))
  for weights, kwargs in cases:
    ref = F.interpolate(grid, **kwargs)[0].numpy()
    ours = np.einsum('ih,jw,chw->cij', weights, weights, grid[0].numpy())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9, err_msg=str(kwargs))


def test_weights_that_do_not_fit_name_missing_and_extra_keys(tmp_path):
  preset = encoders.PRESETS['uni'].with_depth(1)
  state = {k: v for k, v in _timm_model('uni', seed=1).state_dict().items()
           if k != 'blocks.0.ls2.gamma'}
  state['head.weight'] = torch.zeros(3, 1024)
  with pytest.raises(DataError, match=r'bad\.safetensors: .*missing .*blocks\.0\.ls2\.gamma.*'
                                      r'unexpected .*head\.weight'):
    encoders.from_file(preset, _save(state, tmp_path / 'bad.safetensors'))
  deeper = encoders.PRESETS['uni'].with_depth(2)  # a one-block file for a two-block model
  state.pop('head.weight')
  state['blocks.0.ls2.gamma'] = torch.ones(1024)
  with pytest.raises(DataError, match=r'missing keys \(blocks\.1\.'):
    encoders.from_file(deeper, _save(state, tmp_path / 'short.safetensors'))
  state['pos_embed'] = torch.zeros(1, 100, 1024)
  with pytest.raises(DataError, match='pos_embed has shape'):
    encoders.from_file(preset, _save(state, tmp_path / 'grid.safetensors'))


@pytest.mark.parametrize('name', ['uni', 'virchow2'])
def test_input_recipe_matches_tridents_transform(name):
  """TRIDENT's torchvision transform on a PIL patch (bilinear for UNI, bicubic for Virchow2):
  random pixels (the worst case for overshoot and rounding) within 2 grey levels, 90% exact."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from torchvision import transforms  # pylint: disable=g-import-not-at-top
  preset = encoders.PRESETS[name]
  patch = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
  mode = (transforms.InterpolationMode.BICUBIC if preset.resize == 'cubic'
          else transforms.InterpolationMode.BILINEAR)
  reference = transforms.Compose([
      transforms.Resize(preset.input_size, interpolation=mode), transforms.ToTensor(),
      transforms.Normalize(preset.mean, preset.std)])(Image.fromarray(patch[0]))
  ours = np.asarray(encoders.prepare(preset, jnp.asarray(patch)))[0]
  levels = np.abs(ours - reference.permute(1, 2, 0).numpy()) * np.asarray(preset.std) * 255
  assert ours.shape == (224, 224, 3)
  assert levels.max() < 2.01 and (levels < 0.01).mean() > 0.9
