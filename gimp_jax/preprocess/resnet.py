"""ResNet50 trunk (He et al., 2016; torchvision v1.5 layout) up to the third stage, mean-pooled.

This is the patch encoder of CLAM's `resnet50_trunc`: ImageNet-normalised RGB patches go through the
stem and `layer1`..`layer3` of a torchvision `resnet50`, and the [H/16, W/16, 1024] feature map is
averaged over space, giving 1,024 features per patch. Layout is NHWC with HWIO kernels; padding is
written out explicitly so that every convolution and the max-pool match PyTorch's symmetric padding.
BatchNorm always uses its running statistics (inference only).

Module paths follow torchvision's parameter names (`layer1/0/conv1/kernel` for
`layer1.0.conv1.weight`, `layer1/0/downsample/0` for the projection conv), which `convert.py`
relies on.
"""

from flax import nnx
import jax
import jax.numpy as jnp

# ImageNet statistics used by torchvision's pretrained weights (RGB, on [0, 1] pixel values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (blocks, bottleneck width, stride of the first block) for layer1..layer3 of ResNet50.
STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2))
EXPANSION = 4
FEATURE_DIM = STAGES[-1][1] * EXPANSION  # 1024
BN_EPSILON = 1e-5


def _conv(rngs: nnx.Rngs, cin: int, cout: int, k: int, stride: int, dtype) -> nnx.Conv:
  pad = (k - 1) // 2
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                  use_bias=False, dtype=dtype, rngs=rngs)


def _bn(rngs: nnx.Rngs, features: int, dtype) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, use_running_average=True, epsilon=BN_EPSILON, dtype=dtype,
                       rngs=rngs)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (carrying the stride), 1x1 expand; identity or 1x1-conv projection shortcut."""

  def __init__(self, cin: int, width: int, stride: int, *, dtype, rngs: nnx.Rngs):
    cout = width * EXPANSION
    self.conv1 = _conv(rngs, cin, width, 1, 1, dtype)
    self.bn1 = _bn(rngs, width, dtype)
    self.conv2 = _conv(rngs, width, width, 3, stride, dtype)
    self.bn2 = _bn(rngs, width, dtype)
    self.conv3 = _conv(rngs, width, cout, 1, 1, dtype)
    self.bn3 = _bn(rngs, cout, dtype)
    if stride != 1 or cin != cout:
      self.downsample = nnx.List([_conv(rngs, cin, cout, 1, stride, dtype), _bn(rngs, cout, dtype)])
    else:
      self.downsample = None

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, cin] -> [batch, height / stride, width / stride, 4 * width]."""
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return jax.nn.relu(y + shortcut)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1)`: padding never wins the max. x: [B, H, W, C]."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet50Trunk(nnx.Module):
  """Stem + layer1..layer3 of ResNet50, then global average pooling: [B, H, W, 3] -> [B, 1024].

  Attributes:
    dtype: compute dtype of convolutions and BatchNorm (parameters stay float32). The pooled output
      is returned in float32.
  """

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.conv1 = nnx.Conv(3, 64, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.bn1 = _bn(rngs, 64, dtype)
    cin = 64
    for index, (blocks, width, stride) in enumerate(STAGES, start=1):
      layer = []
      for block in range(blocks):
        layer.append(Bottleneck(cin, width, stride if block == 0 else 1, dtype=dtype, rngs=rngs))
        cin = width * EXPANSION
      setattr(self, f'layer{index}', nnx.List(layer))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, 3] normalised RGB -> [batch, 1024] float32 features."""
    x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
    x = _max_pool_3x3_s2(x)
    for layer in (self.layer1, self.layer2, self.layer3):
      for block in layer:
        x = block(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def default_compute_dtype() -> jnp.dtype:
  """bfloat16 on accelerators (GPU/TPU), float32 on CPU where bfloat16 convolutions are slow."""
  return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
