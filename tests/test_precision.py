"""Mixed precision: compute_dtype = "bfloat16" with float32 parameters and float32 softmax,
pseudo-inverse and losses."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from gimp_jax.configs import nsclc
from gimp_jax.models import build
from gimp_jax.models.nystrom import NystromAttention
from gimp_jax.train import optim, steps
from gimp_jax.train.state import create_state, train_state
from gimp_jax.objectives import gimp as gimp_objective
from flax import nnx


def _config(dtype: str):
  cfg = nsclc.get_config("tiny")
  cfg.compute_dtype = dtype
  return cfg


def _batch(cfg, b: int = 4, seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  L, D, G = cfg.pretrain.window, cfg.data.feature_dim, cfg.data.num_genes
  labels = (np.arange(b) % 2).astype(np.int32)
  return {"patches": jnp.asarray(rng.standard_normal((b, L, D)).astype(np.float32)),
          "mpm_mask": jnp.asarray(np.argsort(rng.random((b, L)), axis=1) < L // 2),
          "genes": jnp.asarray(rng.standard_normal((b, G)).astype(np.float32)),
          "label": jnp.asarray(labels)}


def _eqns(jaxpr):
  """Every equation of a (closed) jaxpr, nested ones (scan, jit, custom_vjp) included."""
  for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
    yield eqn
    for sub in jex.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def _in_dtypes(eqn) -> set[str]:
  return {str(v.aval.dtype) for v in eqn.invars if hasattr(v.aval, "dtype")}


def test_bfloat16_model_keeps_float32_parameters_and_the_same_initialisation():
  cfg = _config("float32")
  f32, bf16 = (create_state(build.build_gimp(cfg.model, cfg.data.feature_dim, 96, 2, seed=0,
                                             dtype=dtype)).params
               for dtype in ("float32", "bfloat16"))
  a, b = optim.flat_paths(f32), optim.flat_paths(bf16)
  assert a.keys() == b.keys()
  for name in a:
    assert b[name].dtype == jnp.float32, name
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_bfloat16_pretrain_loss_close_to_float32():
  """bfloat16 against float32 with the same weights on the test batch.

  L_rec (MPM) agrees within 1e-3 absolute (measured ~1e-4). The total loss is held to 1e-2
  relative, not absolute: L_tri is a difference of squared distances between 2d-dimensional
  LayerNorm outputs (~2 * 2d = 128 on this model, ~2000 at the paper's d = 512), so bfloat16's
  2^-9 rounding of the embeddings moves it by 1e-2 to 5e-2 absolute (0.3% here, 0.9% at the
  paper's sizes); only a float32 aggregator would hold it to 1e-2 absolute.
  """
  out = {}
  for dtype in ("float32", "bfloat16"):
    cfg = _config(dtype)
    model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                             dtype=cfg.compute_dtype)
    model.eval()
    loss_fn = gimp_objective.make_loss(cfg.pretrain)
    loss, metrics = jax.jit(lambda m, b: loss_fn(m, b))(model, _batch(cfg))
    assert loss.dtype == jnp.float32 and metrics["rec_loss"].dtype == jnp.float32
    out[dtype] = {"loss": float(loss), "rec": float(metrics["rec_loss"])}
  assert out["bfloat16"] != out["float32"]  # bfloat16 really ran
  np.testing.assert_allclose(out["bfloat16"]["rec"], out["float32"]["rec"], rtol=0, atol=1e-3)
  np.testing.assert_allclose(out["bfloat16"]["loss"], out["float32"]["loss"], rtol=1e-2)


def test_bfloat16_train_step_keeps_float32_state():
  cfg = _config("bfloat16")
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  state = train_state(model, cfg.optim, steps_per_epoch=1, epochs=10, frozen=cfg.pretrain.frozen)
  state, metrics = steps.make_train_step(gimp_objective.make_loss(cfg.pretrain), cfg.pretrain.frozen)(state, _batch(cfg), jax.random.key(0))
  assert np.isfinite(float(metrics["loss"]))
  for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype


def test_bfloat16_attention_keeps_softmax_and_pinv_in_float32():
  """Traced bfloat16 Nyström attention: projections run in bfloat16, every exp (softmax) and
  every matmul of the pseudo-inverse iterations (the [m, m] @ [m, m] products, m = 8 landmarks;
  dim_head 16 so that no other product has that shape) in float32."""
  attn = NystromAttention(64, heads=4, dim_head=16, num_landmarks=8, dtype=jnp.bfloat16,
                          pinv_iterations=6, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(attn)
  x = jnp.ones((2, 50, 64), jnp.float32)
  for mask in (None, jnp.arange(50)[None, :] < jnp.array([[50], [31]])):
    jaxpr = jax.make_jaxpr(lambda s, x, mask=mask: nnx.merge(graphdef, s)(x, mask))(state, x)
    eqns = list(_eqns(jaxpr))
    exps = [e for e in eqns if e.primitive.name == "exp"]
    assert exps and all(_in_dtypes(e) == {"float32"} for e in exps)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert any(_in_dtypes(e) == {"bfloat16"} for e in dots)  # the qkv / output projections
    pinv_dots = [e for e in dots if all(v.aval.shape[-2:] == (8, 8) for v in e.invars)]
    assert len(pinv_dots) >= 6 * 4  # 4 products per iteration
    assert all(_in_dtypes(e) == {"float32"} for e in pinv_dots)
