"""State dicts of timm ViTs (and Hugging Face DINOv2, CONCH v1.5) into `vit.py`'s modules.

Every parameter of the NNX model has one timm name, its module path joined with dots: Linear
`kernel` <- `weight` transposed, LayerNorm `scale` <- `weight`, biases, `gamma`, `cls_token`,
`reg_token`, `pos_embed`, `query` as they are; the patch embedding's Linear <- the Conv2d weight
[D, 3, p, p] laid out as [p, p, 3] rows. A Hugging Face `Dinov2Model` state dict (Phikon-v2) is
renamed to timm's first (`hf_dinov2_to_timm`: separate q, k, v concatenated into qkv,
`layer_scale*.lambda1` -> `gamma`, `mask_token` dropped). A key missing from the file, or one the
model has no place for, raises `DataError` naming them; so does a wrong shape.
"""

import re

from flax import nnx
import jax.numpy as jnp
import numpy as np

from gimp_jax.errors import DataError
from gimp_jax.preprocess import pos_embed

_HF_RENAMES = (
    (r'^embeddings\.cls_token$', 'cls_token'),
    (r'^embeddings\.position_embeddings$', 'pos_embed'),
    (r'^embeddings\.register_tokens$', 'reg_token'),
    (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'^encoder\.layer\.(\d+)\.norm(\d)\.', r'blocks.\1.norm\2.'),
    (r'^encoder\.layer\.(\d+)\.attention\.output\.dense\.', r'blocks.\1.attn.proj.'),
    (r'^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$', r'blocks.\1.ls\2.gamma'),
    (r'^encoder\.layer\.(\d+)\.mlp\.fc(\d)\.', r'blocks.\1.mlp.fc\2.'),
    (r'^layernorm\.', 'norm.'),
)
_HF_QKV = re.compile(
    r'^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$')


def is_hf_dinov2(state_dict: dict[str, np.ndarray]) -> bool:
  """True for a Hugging Face `Dinov2Model` state dict (`embeddings.patch_embeddings.*` keys)."""
  return any(k.startswith('embeddings.patch_embeddings.') for k in state_dict)


def hf_dinov2_to_timm(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a Hugging Face `Dinov2Model` state dict to timm's ViT names.

  Unknown keys keep their name (so that loading reports them as extra).
  """
  out, qkv = {}, {}
  for key, value in state_dict.items():
    match = _HF_QKV.match(key)
    if match:
      qkv.setdefault((match[1], match[3]), {})[match[2]] = value
      continue
    if key == 'embeddings.mask_token':  # used in pre-training only
      continue
    for pattern, repl in _HF_RENAMES:
      if re.match(pattern, key):
        key = re.sub(pattern, repl, key)
        break
    out[key] = value
  for (layer, field), parts in qkv.items():
    name = f'blocks.{layer}.attn.qkv.{field}'
    if set(parts) != {'query', 'key', 'value'}:
      missing = sorted({'query', 'key', 'value'} - set(parts))
      out.update({f'encoder.layer.{layer}.attention.attention.{m}.{field} (for {name})': None
                  for m in missing})
      continue
    out[name] = np.concatenate([parts['query'], parts['key'], parts['value']], axis=0)
  return out


def _torch_name(path: tuple) -> tuple[str, str]:
  """(timm key, how to convert) of an NNX parameter path."""
  *module, leaf = (str(p) for p in path)
  prefix = '.'.join(module)
  if leaf == 'kernel':
    kind = 'patch' if module[-2:] == ['patch_embed', 'proj'] else 'linear'
    return f'{prefix}.weight', kind
  if leaf == 'scale':
    return f'{prefix}.weight', 'copy'
  return (f'{prefix}.{leaf}' if prefix else leaf), 'copy'


def _convert(value: np.ndarray, kind: str) -> np.ndarray:
  """PyTorch layout -> ours: Linear [out, in] -> [in, out]; Conv2d [D, 3, p, p] -> [p*p*3, D]."""
  if kind == 'linear' and value.ndim == 2:
    return value.T
  if kind == 'patch' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
  return value


def _resize_pos_embed(value: np.ndarray, shape: tuple, prefix: int = 1) -> np.ndarray:
  """CONCH v1.5's load-time resize of [1, prefix + g^2, D]: CLS kept, the grid resampled bilinearly.

  A table that is not a square grid after `prefix` rows is returned as it is (then a shape error).
  """
  old = int(round(np.sqrt(value.shape[1] - prefix)))
  new = int(round(np.sqrt(shape[1] - prefix)))
  if old * old + prefix != value.shape[1] or new * new + prefix != shape[1]:
    return value
  grid = np.asarray(pos_embed.resample(jnp.asarray(value[0, prefix:].reshape(old, old, -1)),
                                       pos_embed.bilinear(old, new), pos_embed.bilinear(old, new)))
  return np.concatenate([value[:, :prefix], grid.reshape(1, new * new, -1)], axis=1)


def load_weights(model: nnx.Module, state_dict: dict[str, np.ndarray], source: str,
                 resize_pos_embed: bool = False) -> None:
  """Copies a timm-named state dict into `model` (a `VisionTransformer` or `ConchVisionTower`).

  Args:
    model: filled in place; may be abstract (`nnx.eval_shape`): every parameter is set.
    state_dict: timm names -> arrays (Hugging Face DINOv2 names are renamed first).
    source: the file, for error messages.
    resize_pos_embed: resample a `pos_embed` whose grid differs from the model's (bilinear, as
      CONCH v1.5's loader does); otherwise a different grid is a shape error.

  Raises:
    DataError: missing or unexpected keys (named), or a shape that does not match.
  """
  if is_hf_dinov2(state_dict):
    state_dict = hf_dinov2_to_timm(state_dict)
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  wanted = {}
  for path, variable in params:
    key, kind = _torch_name(path)
    wanted[key] = (variable, kind)
  missing = sorted(set(wanted) - set(k for k, v in state_dict.items() if v is not None))
  missing += sorted(k for k, v in state_dict.items() if v is None)
  extra = sorted(k for k, v in state_dict.items() if v is not None and k not in wanted)
  if missing or extra:
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing keys ({", ".join(missing[:8])}'
                   f'{", ..." if len(missing) > 8 else ""})')
    if extra:
      parts.append(f'{len(extra)} unexpected keys ({", ".join(extra[:8])}'
                   f'{", ..." if len(extra) > 8 else ""})')
    raise DataError(f'{source}: weights do not fit this encoder: {"; ".join(parts)}')
  for key, (variable, kind) in wanted.items():
    current = variable.get_value()
    value = np.asarray(state_dict[key], np.float32)
    if key.endswith('pos_embed') and resize_pos_embed and value.shape != tuple(current.shape):
      value = _resize_pos_embed(value, tuple(current.shape))
    value = _convert(value, kind)
    if value.shape != tuple(current.shape):
      raise DataError(f'{source}: {key} has shape {value.shape}, expected the shape of '
                      f'{tuple(current.shape)} (after layout conversion)')
    variable.set_value(jnp.asarray(value, current.dtype))
