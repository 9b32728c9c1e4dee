"""The fine-tuning step's parts, one by one, in XLA and in PyTorch: what `experiments.bench.profile
--part components` times.

Every part is timed forward and forward + backward (XLA: `jax.vjp` of the part against a fixed
random cotangent, compiled; PyTorch: the same ops as the `nystrom-attention` package / the bench's
`torch_reference`, eager, `.backward` of the same cotangent), on one bag of N tokens (B = 1), the
paper's model (dim 512, 8 heads of 64, m = 256 landmarks, 33-tap residual convolution, 1024-d
features). Only what the fine-tuning step differentiates is differentiated: parameters and the
activations between layers, never the input patches (no dX of the embedding), and the frozen gene
encoder runs forward only in both frameworks.

The XLA parts are the code of `gimp_jax.models.nystrom` (the masked path the CLI's bags take, all
N tokens real) called piece by piece; the PyTorch parts are the package's ops. Shapes per part are
in `parts`.
"""

import dataclasses
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from experiments.bench import measure
from experiments.bench import torch_reference as tr
from gimp_jax.models import aggregator, nystrom

DIM, HEADS, DH, M, K, FEAT = 512, 8, 64, 256, 33, 1024


@dataclasses.dataclass
class Part:
  """One part: `jax_fn(*diff, *const)` and `torch_fn(*diff, *const)` on the same arrays."""
  name: str
  jax_fn: Callable
  torch_fn: Callable
  diff: tuple          # numpy arrays differentiated (parameters, activations)
  const: tuple = ()    # numpy arrays held constant (input patches, masks)


def _rand(rng, *shape, scale=1.0):
  return (rng.standard_normal(shape) * scale).astype(np.float32)


def _masked_attn3(q_land, k, mask):
  """attn3 of `NystromAttention._masked` (key mask, here without virtual front keys)."""
  logits = jnp.einsum("bhid,bhjd->bhij", q_land, k)
  return nystrom.softmax_rows(logits, mask, jnp.zeros(mask.shape[:1], jnp.int32))


def _layernorm(h, scale, bias):
  """The aggregator's LayerNorm (`aggregator.norm_rows`) with the given parameters."""
  norm = nnx.LayerNorm(DIM, epsilon=1e-5, rngs=nnx.Rngs(0))
  norm.scale.value, norm.bias.value = scale, bias
  return aggregator.norm_rows(norm, h)


def parts(n: int, seed: int = 0) -> list[Part]:
  """The parts at bag length n (shapes: x [1, n, 1024], h [1, n, 512], q/k/v [1, 8, n, 64],
  landmarks [1, 8, 256, 64], attn1 [1, 8, n, 256], attn3 [1, 8, 256, n], attn2 [1, 8, 256, 256])."""
  rng = np.random.default_rng(seed)
  x = rng.random((1, n, FEAT), np.float32)
  h = _rand(rng, 1, n, DIM)
  w_emb, b_emb = _rand(rng, FEAT, DIM, scale=FEAT ** -0.5), _rand(rng, DIM, scale=0.01)
  w_qkv = _rand(rng, DIM, 3 * DIM, scale=DIM ** -0.5)
  w_out, b_out = _rand(rng, DIM, DIM, scale=DIM ** -0.5), _rand(rng, DIM, scale=0.01)
  ln_s, ln_b = np.ones(DIM, np.float32), np.zeros(DIM, np.float32)
  q, k, v = (_rand(rng, 1, HEADS, n, DH, scale=0.5) for _ in range(3))
  land = _rand(rng, 1, HEADS, M, DH, scale=0.5)
  attn1 = np.asarray(jax.nn.softmax(_rand(rng, 1, HEADS, n, M), -1))
  attn3 = np.asarray(jax.nn.softmax(_rand(rng, 1, HEADS, M, n), -1))
  attn2 = np.asarray(jax.nn.softmax(_rand(rng, 1, HEADS, M, M) * 0.1, -1))
  small = _rand(rng, 1, HEADS, M, DH)
  kernel = _rand(rng, HEADS, K, scale=K ** -0.5)
  mask = np.ones((1, n), bool)
  heads_t = lambda t: t.reshape(1, n, HEADS, DH).permute(0, 2, 1, 3)  # noqa: E731
  heads_j = lambda t: t.reshape(1, n, HEADS, DH).transpose(0, 2, 1, 3)  # noqa: E731

  def j_qkv(h, w):
    qq, kk, vv = jnp.split(h @ w, 3, axis=-1)
    return heads_j(qq) * DH ** -0.5, heads_j(kk), heads_j(vv)

  def t_qkv(h, w):
    qq, kk, vv = (h @ w).chunk(3, dim=-1)
    return heads_t(qq) * DH ** -0.5, heads_t(kk), heads_t(vv)

  def j_landmarks(h, w, mask):
    seg = jnp.where(mask, jnp.arange(n)[None] * M // n, M).reshape(-1)
    sums = jax.ops.segment_sum(h.reshape(n, DIM), seg, num_segments=M + 1,
                               indices_are_sorted=True)[:M]
    return (sums / (n / M)) @ w[:, :2 * DIM]

  l = -(-n // M)

  def t_landmarks(h, w, mask):  # the package: sums of l consecutive front-padded q and k (the
    del w, mask                 # projection is the qkv part's); q and k stand in as h twice
    hp = F.pad(h, (0, 0, l * M - n, 0)).reshape(1, M, l, DIM)
    return [hp.sum(2) / l, (2 * hp).sum(2) / l]

  def j_out(o, w, b):
    return o.transpose(0, 2, 1, 3).reshape(1, n, DIM) @ w + b

  def t_out(o, w, b):
    return o.permute(0, 2, 1, 3).reshape(1, n, DIM) @ w + b

  def t_conv(v, kernel):
    return F.conv2d(v, kernel[:, None, :, None], padding=(K // 2, 0), groups=HEADS)

  def t_pinv(a):
    abs_a = a.abs()
    z = a.transpose(-1, -2) / (abs_a.sum(-1).max() * abs_a.sum(-2).max())
    eye = torch.eye(M)[None]
    for _ in range(6):
      xz = a @ z
      z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z

  return [
      Part("embed Linear 1024->512 + ReLU (dW, db; no dX)",
           lambda w, b, x: jax.nn.relu(x @ w + b), lambda w, b, x: F.relu(x @ w + b),
           (w_emb, b_emb), (x,)),
      Part("LayerNorm [N, 512]", _layernorm,
           lambda h, s, b: F.layer_norm(h, (DIM,), s, b, 1e-5), (h, ln_s, ln_b)),
      Part("qkv projection 512->1536 + split heads", j_qkv, t_qkv, (h, w_qkv)),
      Part("landmark means of q, k (ours: segment sum of x, projected; package: project, sum)",
           j_landmarks, t_landmarks, (h, w_qkv), (mask,)),
      Part("attn1 = softmax_m(q k~^T) [8, N, 256]",
           lambda q, kl: nystrom.softmax_rows(jnp.einsum("bhid,bhjd->bhij", q, kl)),
           lambda q, kl: (q @ kl.transpose(-1, -2)).softmax(-1), (q, land)),
      Part("attn3 = softmax_N(q~ k^T) [8, 256, N] (ours: key mask)", _masked_attn3,
           lambda ql, k, mask: (ql @ k.transpose(-1, -2)).softmax(-1), (land, k), (mask,)),
      Part("attn3 @ v [8, 256, N] x [8, N, 64]", lambda a, v: a @ v, lambda a, v: a @ v,
           (attn3, v)),
      Part("attn1 @ (pinv @ attn3 v) [8, N, 256] x [8, 256, 64] (ours)",
           lambda a, s: a @ s, lambda a, s: a @ s, (attn1, small)),
      Part("(attn1 @ pinv) @ (attn3 v) (package's order)",
           lambda a, p, s: (a @ p) @ s, lambda a, p, s: (a @ p) @ s, (attn1, attn2, small)),
      Part("pinv, 6 iterations [8, 256, 256]",
           lambda a: nystrom.iterative_pinv(a, 6, True), t_pinv, (attn2,)),
      Part("depthwise conv residual, 33 taps", nystrom.depthwise_conv_seq, t_conv, (v, kernel)),
      Part("merge heads + output projection 512->512", j_out, t_out, (q, w_out, b_out)),
  ]


def _cotangent(out, rng):
  return jax.tree_util.tree_map(lambda o: _rand(rng, *o.shape), out)


def jax_runners(part: Part) -> list[measure.Runner]:
  """Forward and forward + backward of `part` in XLA, compiled and warmed up."""
  diff = tuple(jnp.asarray(a) for a in part.diff)
  const = tuple(jnp.asarray(a) for a in part.const)
  fwd = lambda *d: part.jax_fn(*d, *const)  # noqa: E731
  ct = jax.tree_util.tree_map(jnp.asarray, _cotangent(jax.eval_shape(fwd, *diff),
                                                      np.random.default_rng(1)))

  def fwd_bwd(*d):
    out, vjp = jax.vjp(fwd, *d)
    return out, vjp(ct)
  runners = []
  for label, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
    compiled = jax.jit(fn).lower(*diff).compile()
    run = lambda c=compiled: jax.block_until_ready(c(*diff))  # noqa: E731
    run()
    runners.append(measure.Runner(f"{part.name} | {label} | XLA", run,
                                  {"model_flops": measure.model_flops(fn, *diff)}))
  return runners


def torch_runners(part: Part) -> list[measure.Runner]:
  """Forward (no graph) and forward + backward of `part` in PyTorch eager."""
  diff = [torch.from_numpy(a.copy()).requires_grad_(True) for a in part.diff]
  const = [torch.from_numpy(a.copy()) for a in part.const]
  with torch.no_grad():
    out = part.torch_fn(*diff, *const)
  outs = out if isinstance(out, (tuple, list)) else (out,)
  rng = np.random.default_rng(1)
  cts = [torch.from_numpy(_rand(rng, *o.shape)) for o in outs]

  def fwd():
    with torch.no_grad():
      return part.torch_fn(*diff, *const)

  def fwd_bwd():
    for d in diff:
      d.grad = None
    o = part.torch_fn(*diff, *const)
    o = o if isinstance(o, (tuple, list)) else (o,)
    torch.autograd.backward(list(o), cts)
  runners = []
  for label, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
    fn()
    runners.append(measure.Runner(f"{part.name} | {label} | PyTorch", fn, {}))
  tr.synchronize()
  return runners
