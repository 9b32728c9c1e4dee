"""Weights from PyTorch modules into gimp_jax modules (no pickle: modules are passed in memory)."""

from flax import nnx
import jax.numpy as jnp
import numpy as np

from gimp_jax.models.nystrom import NystromAttention


def _array(t) -> jnp.ndarray:
  return jnp.asarray(np.asarray(t.detach().cpu().numpy(), dtype=np.float32))


def nystrom_attention_from_torch(module, *, dtype=jnp.float32) -> NystromAttention:
  """Our NystromAttention carrying the weights of a `nystrom_attention.NystromAttention` module.

  Args:
    module: a PyTorch `nystrom_attention.NystromAttention` (0.0.10 to 0.0.14) with `residual=True`.
    dtype: compute dtype of the returned module.

  Returns:
    NystromAttention with the same dim, heads, dim_head, landmarks, pinv iterations, kernel and
    dropout rate, and copied weights (Linear weights transposed; conv [H, 1, K, 1] -> [H, K]).
  """
  if not getattr(module, "residual", False):
    raise ValueError("Only residual=True NystromAttention modules are supported.")
  qkv = module.to_qkv.weight            # [3 * inner, dim]
  out_lin = module.to_out[0]            # Linear(inner, dim)
  conv = module.res_conv.weight         # [H, 1, K, 1]
  heads = module.heads
  inner, dim = out_lin.weight.shape[1], out_lin.weight.shape[0]
  ours = NystromAttention(
      dim, heads=heads, dim_head=inner // heads, num_landmarks=module.num_landmarks,
      pinv_iterations=module.pinv_iterations, residual_kernel=conv.shape[2],
      dropout=float(module.to_out[1].p), dtype=dtype, rngs=nnx.Rngs(0))
  ours.to_qkv.kernel[...] = _array(qkv).T
  ours.to_out.kernel[...] = _array(out_lin.weight).T
  ours.to_out.bias[...] = _array(out_lin.bias)
  ours.res_conv[...] = _array(conv)[:, 0, :, 0]
  return ours
