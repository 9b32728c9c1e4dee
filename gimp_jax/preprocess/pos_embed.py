"""Resampling a ViT's position-embedding grid as the PyTorch references do, as 1-D weight matrices.

A grid [h, w, D] is resampled separably: `out = Wy @ grid @ Wx^T` with `Wy: [h', h]`, `Wx: [w', w]`.
The matrices depend only on the sizes, so they are built once in NumPy (float64) and applied as
constants inside the jitted forward. Three PyTorch `F.interpolate` calls are reproduced:

- `timm_bicubic(n, m)`: timm's `resample_abs_pos_embed` (`mode='bicubic', antialias=True`,
  output size given). PyTorch's antialiased kernel is Keys' cubic with a = -0.5, stretched by the
  scale when downsampling, over taps that stop at the border, renormalised to sum to one.
- `dino_bicubic(n, scale)`: DINO's `interpolate_pos_encoding` (CONCH v1.5's trunk): `mode='bicubic'`
  without antialias, `scale_factor` given, so the output is floor(n * scale) and source coordinates
  use 1 / scale; Keys' cubic with a = -0.75 over four taps clamped to the border.
- `bilinear(n, m)`: `mode='bilinear', align_corners=False, antialias=False` (CONCH v1.5's load-time
  resize of a checkpoint's grid).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter `a`, at offsets `x`."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def timm_bicubic(n: int, m: int) -> np.ndarray:
  """[m, n] weights of PyTorch's antialiased bicubic resize from n to m samples."""
  scale = n / m
  support = 2.0 * scale if scale >= 1 else 2.0
  inv = 1.0 / scale if scale >= 1 else 1.0
  weights = np.zeros((m, n))
  for i in range(m):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n)
    taps = np.arange(lo, hi)
    w = _cubic((taps - center + 0.5) * inv, -0.5)
    weights[i, taps] = w / w.sum()
  return weights


def dino_bicubic(n: int, scale: float) -> np.ndarray:
  """[floor(n * scale), n] weights of PyTorch's bicubic (a = -0.75) upsampling by `scale`."""
  m = int(math.floor(n * scale))
  weights = np.zeros((m, n))
  for i in range(m):
    src = (i + 0.5) / scale - 0.5
    base = math.floor(src)
    t = src - base
    for offset, w in zip((-1, 0, 1, 2), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
      weights[i, min(max(base + offset, 0), n - 1)] += w
  return weights


def bilinear(n: int, m: int) -> np.ndarray:
  """[m, n] weights of PyTorch's bilinear resize (align_corners=False, no antialias)."""
  scale = n / m
  weights = np.zeros((m, n))
  for i in range(m):
    src = max(scale * (i + 0.5) - 0.5, 0.0)
    lo = int(src)
    hi = lo + 1 if lo < n - 1 else lo
    frac = src - lo
    weights[i, lo] += 1 - frac
    weights[i, hi] += frac
  return weights


def resample(grid: jax.Array, wy: np.ndarray, wx: np.ndarray) -> jax.Array:
  """grid: [h, w, D] -> [h', w', D] with Wy: [h', h], Wx: [w', w] (computed in float32)."""
  wy = jnp.asarray(wy, jnp.float32)
  wx = jnp.asarray(wx, jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum('ih,hwd->iwd', wy, grid.astype(jnp.float32), precision=hp)
  return jnp.einsum('jw,iwd->ijd', wx, out, precision=hp)
