"""The patch encoders `python -m gimp_jax.preprocess --encoder=...` offers, with their input recipe.

Each preset is the published architecture (as TRIDENT builds it with timm) and its evaluation
transform: patches of `patch_size` pixels at `magnification` are resized to `input_size` (TRIDENT's
`Resize` on PIL images: antialiased, one axis at a time, rounded to uint8 after each; within one
grey level of PIL's fixed-point result), scaled to [0, 1] and normalised with the encoder's mean
and std. Output widths: UNI 1,024; UNI2-h 1,536; CONCH v1.5
768; Virchow2 2,560 (CLS and the mean of the patch tokens); Phikon-v2 1,024; H-optimus-0 1,536;
ResNet50-trunc 1,024 (CLAM's, patches as read, no resize).

Weights are the user's file (`.safetensors`, `.bin`, `.pth`), in timm's layout (Phikon-v2 also in
Hugging Face's `Dinov2Model` layout); nothing is downloaded.
"""

from collections.abc import Callable
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from gimp_jax.preprocess import convert
from gimp_jax.preprocess import resnet
from gimp_jax.preprocess import vit
from gimp_jax.preprocess import vit_convert

IMAGENET = (resnet.IMAGENET_MEAN, resnet.IMAGENET_STD)
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclasses.dataclass(frozen=True)
class Preset:
  """One encoder and its input recipe.

  Attributes:
    name: the `--encoder` value.
    vit: the ViT's shape, or None for ResNet50-trunc.
    conch: wrap the ViT's tokens in CONCH v1.5's attentional pooler (768-d).
    input_size: side the patches are resized to; None keeps them as read.
    resize: 'linear' or 'cubic' (TRIDENT's interpolation for this encoder).
    mean, std: RGB normalisation on [0, 1] values.
    patch_size, magnification: tiling defaults (pixels at that magnification).
  """
  name: str
  vit: vit.ViTConfig | None
  conch: bool = False
  input_size: int | None = 224
  resize: str = 'linear'
  mean: tuple[float, ...] = IMAGENET[0]
  std: tuple[float, ...] = IMAGENET[1]
  patch_size: int = 256
  magnification: float = 20.0

  @property
  def feature_dim(self) -> int:
    if self.vit is None:
      return resnet.FEATURE_DIM
    return 768 if self.conch else self.vit.feature_dim

  def with_depth(self, depth: int) -> 'Preset':
    """The same preset with `depth` blocks (tests and benchmarks at full width, reduced depth)."""
    if self.vit is None or depth <= 0:
      return self
    return dataclasses.replace(self, vit=dataclasses.replace(self.vit, depth=depth))


_VIT_L16 = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096)
PRESETS = {p.name: p for p in (
    Preset('resnet50_trunc', None, input_size=None),
    Preset('uni', vit.ViTConfig(**_VIT_L16, init_values=1e-5)),
    Preset('uni2_h', vit.ViTConfig(
        patch_size=14, embed_dim=1536, depth=24, num_heads=24, mlp_hidden=int(1536 * 2.66667 * 2),
        mlp='swiglu_packed', reg_tokens=8, no_embed_class=True, init_values=1e-5)),
    Preset('conch_v1_5', vit.ViTConfig(**_VIT_L16, init_values=1.0, pool='', pos_interp='dino'),
           conch=True, input_size=448, patch_size=512),
    Preset('virchow2', vit.ViTConfig(
        patch_size=14, embed_dim=1280, depth=32, num_heads=16, mlp_hidden=int(1280 * 5.3375),
        mlp='swiglu_packed', reg_tokens=4, init_values=1e-5, pool='cls_mean'), resize='cubic'),
    Preset('phikon_v2', vit.ViTConfig(**_VIT_L16, init_values=1e-5)),
    Preset('h_optimus_0', vit.ViTConfig(
        patch_size=14, embed_dim=1536, depth=40, num_heads=24, mlp_hidden=int(1536 * 2.66667 * 2),
        mlp='swiglu_packed', reg_tokens=4, no_embed_class=True, init_values=1e-5),
           mean=H_OPTIMUS[0], std=H_OPTIMUS[1]),
)}


def build(preset: Preset, *, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
  """The preset's model with random weights: [B, S, S, 3] normalised RGB -> [B, feature_dim]."""
  if preset.vit is None:
    return resnet.ResNet50Trunk(dtype=dtype, rngs=rngs)
  if preset.conch:
    return vit.ConchVisionTower(preset.vit, dtype=dtype, rngs=rngs)
  return vit.VisionTransformer(preset.vit, dtype=dtype, rngs=rngs)


def from_state_dict(preset: Preset, state_dict: dict[str, np.ndarray], *, dtype=jnp.float32,
                    source: str = '<state dict>') -> nnx.Module:
  """The preset's model carrying `state_dict` (timm names; see `vit_convert.load_weights`)."""
  if preset.vit is None:
    return convert.resnet50_trunk_from_state_dict(state_dict, dtype=dtype, source=source)
  model = nnx.eval_shape(lambda: build(preset, dtype=dtype, rngs=nnx.Rngs(0)))
  vit_convert.load_weights(model, state_dict, source, resize_pos_embed=preset.conch)
  return model


def from_file(preset: Preset, path: str, *, dtype=jnp.float32) -> nnx.Module:
  """The preset's model from a `.safetensors`, `.bin`, `.pth` or `.pt` file (DataError if unfit)."""
  return from_state_dict(preset, convert.load_state_dict(path), dtype=dtype, source=path)


def prepare(preset: Preset, images: jax.Array) -> jax.Array:
  """uint8 [B, P, P, 3] -> normalised float32 [B, S, S, 3] (S = input_size, or P when None)."""
  x = images.astype(jnp.float32)
  size = preset.input_size
  if size is not None and images.shape[1:3] != (size, size):
    # PIL (TRIDENT's torchvision Resize on PIL images): horizontal pass, then vertical, each
    # rounded and clipped to uint8, which matters where bicubic overshoots.
    for shape in ((x.shape[0], x.shape[1], size, 3), (x.shape[0], size, size, 3)):
      x = jax.image.resize(x, shape, method=preset.resize, antialias=True)
      x = jnp.clip(jnp.round(x), 0, 255)
  mean = jnp.asarray(preset.mean, jnp.float32)
  std = jnp.asarray(preset.std, jnp.float32)
  return (x / 255.0 - mean) / std


def make_feature_fn(preset: Preset, model: nnx.Module, devices=None
                    ) -> Callable[[np.ndarray], jax.Array]:
  """A jitted uint8 [B, P, P, 3] -> float32 [B, feature_dim], data-parallel over `devices`.

  The batch is split over the devices (default: every local device; B must be a multiple of their
  number) and the weights replicated; the model is split once and every call with the same shape
  reuses one compiled program. Calls are asynchronous (JAX dispatch).
  """
  devices = jax.local_devices() if devices is None else devices
  mesh = Mesh(np.asarray(devices), ('data',))
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  batch = NamedSharding(mesh, P('data'))

  @jax.jit
  def features(state, images):
    return nnx.merge(graphdef, state)(prepare(preset, images)).astype(jnp.float32)

  def call(images: np.ndarray) -> jax.Array:
    if len(images) % len(devices):
      raise ValueError(f'batch of {len(images)} is not a multiple of {len(devices)} devices')
    return features(state, jax.device_put(images, batch))

  return call
