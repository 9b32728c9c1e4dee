"""Load a torchvision `resnet50` state dict (`.pth` or `.safetensors`) into `ResNet50Trunk`.

Every convolution and BatchNorm of the trunk is filled from the entry whose torchvision name is the
module's path joined with dots (`layer2.0.downsample.0.weight`). Convolution kernels are transposed
from PyTorch's OIHW to Flax's HWIO; BatchNorm `weight`, `bias`, `running_mean`, `running_var` become
`scale`, `bias`, `mean`, `var`. `layer4.*`, `fc.*` and `num_batches_tracked` belong to the full
network and are ignored; any other unknown key, a missing key or a wrong shape raises `DataError`.
Nothing is ever downloaded: the user supplies the file (e.g. torchvision's `IMAGENET1K_V1` weights
or timm's `resnet50.tv_in1k`, which share these names).
"""

import os
import re

from flax import nnx
import jax.numpy as jnp
import numpy as np

from gimp_jax.errors import DataError
from gimp_jax.preprocess.resnet import ResNet50Trunk

# Entries of a full torchvision resnet50 that the truncated trunk does not use.
_IGNORED = re.compile(r'^(layer4\.|fc\.)|\.num_batches_tracked$')
_BN_FIELDS = (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'),
              ('running_var', 'var'))


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict from `.pth`/`.pt` (torch.load, weights_only) or `.safetensors` as float32.

  A checkpoint that wraps the weights as {'state_dict': ...} or prefixes every key with 'module.'
  (DataParallel) is unwrapped.
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: weights file not found (field: --weights)')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      raw = load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers.
      raise DataError(f'{path}: not a readable safetensors file ({e})') from e
  elif path.endswith(('.pth', '.pt', '.bin')):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise DataError(f'{path}: reading .pth needs PyTorch; install torch or save the weights as '
                      '.safetensors') from e
    try:
      raw = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle errors, or objects that weights_only refuses to load.
      raise DataError(f'{path}: torch.load(weights_only=True) failed ({e})') from e
    if isinstance(raw, dict) and isinstance(raw.get('state_dict'), dict):
      raw = raw['state_dict']
    if not isinstance(raw, dict):
      raise DataError(f'{path}: expected a state dict (name -> tensor), got {type(raw).__name__}')
    raw = {k: v.detach().float().numpy() for k, v in raw.items() if isinstance(v, torch.Tensor)}
  else:
    raise DataError(f'{path}: unknown weights format, expected .pth, .pt or .safetensors')
  if raw and all(k.startswith('module.') for k in raw):
    raw = {k[len('module.'):]: v for k, v in raw.items()}
  return {k: np.asarray(v, np.float32) for k, v in raw.items()}


def _assign(variable: nnx.Variable, value: np.ndarray, key: str, source: str) -> None:
  current = variable.get_value()  # an array, or a ShapeDtypeStruct in an abstract model.
  if value.shape != tuple(current.shape):
    raise DataError(f'{source}: {key} has shape {value.shape}, expected {tuple(current.shape)}')
  variable.set_value(jnp.asarray(value, current.dtype))


def load_torchvision_weights(model: ResNet50Trunk, state_dict: dict[str, np.ndarray],
                             source: str = '<state dict>') -> None:
  """Copies torchvision resnet50 weights into `model` in place.

  Args:
    model: the trunk to fill; may be abstract (`nnx.eval_shape`), since every variable is set.
    state_dict: torchvision names -> arrays (conv weights OIHW).
    source: the file name, used in error messages.

  Raises:
    DataError: a key of the trunk is missing, has the wrong shape, or an unexpected key is present.
  """
  used = set()
  missing = []
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, (nnx.Conv, nnx.BatchNorm)):
      continue
    prefix = '.'.join(str(p) for p in path)
    if isinstance(node, nnx.Conv):
      fields = (('weight', 'kernel'),)
    else:
      fields = _BN_FIELDS
    for torch_name, flax_name in fields:
      key = f'{prefix}.{torch_name}'
      if key not in state_dict:
        missing.append(key)
        continue
      value = state_dict[key]
      if flax_name == 'kernel':
        value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value  # OIHW -> HWIO
      _assign(getattr(node, flax_name), value, key, source)
      used.add(key)
  if missing:
    raise DataError(f'{source}: missing {len(missing)} resnet50 keys, e.g. {missing[:3]}')
  unknown = sorted(k for k in state_dict if k not in used and not _IGNORED.search(k))
  if unknown:
    raise DataError(f'{source}: unknown keys for a torchvision resnet50, e.g. {unknown[:3]}')


def resnet50_trunk_from_state_dict(state_dict: dict[str, np.ndarray], dtype=jnp.float32,
                                   source: str = '<state dict>') -> ResNet50Trunk:
  """`ResNet50Trunk(dtype=dtype)` holding torchvision resnet50 weights.

  The module is built abstractly (no random initialisation, which costs seconds on CPU) and every
  variable is then set from `state_dict`.
  """
  model = nnx.eval_shape(lambda: ResNet50Trunk(dtype=dtype, rngs=nnx.Rngs(0)))
  load_torchvision_weights(model, state_dict, source=source)
  return model


def resnet50_trunk_from_file(path: str, dtype=jnp.float32) -> ResNet50Trunk:
  """`ResNet50Trunk(dtype=dtype)` filled from a torchvision resnet50 .pth / .safetensors file."""
  return resnet50_trunk_from_state_dict(load_state_dict(path), dtype=dtype, source=path)
