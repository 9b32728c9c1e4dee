"""Mixed precision: compute_dtype = "bfloat16" with float32 parameters and float32 softmax,
pseudo-inverse and losses."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from gimp_jax.configs import nsclc
from gimp_jax.models import build
from gimp_jax.models import mixed_precision
from gimp_jax.models.nystrom import NystromAttention
from gimp_jax.train import optim, steps
from gimp_jax.train.state import create_state, train_state
from gimp_jax.objectives import gimp as gimp_objective
from gimp_jax.preprocess import encoders
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


def test_mixed_precision_dot_accumulates_in_float32_and_keeps_the_operands_dtype():
  """Against NumPy: the float64 product of the bfloat16-rounded operands, rounded to bfloat16 once
  (a bfloat16 accumulator would round at every one of the 512 additions)."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((3, 5, 512)), rng.standard_normal((512, 7))
  a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
  out = mixed_precision.matmul(a16, b16)
  assert out.dtype == jnp.bfloat16 and out.shape == (3, 5, 7)
  want = np.asarray(a16, np.float64) @ np.asarray(b16, np.float64)
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(jnp.asarray(want, jnp.bfloat16), np.float32))
  out32 = mixed_precision.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  assert out32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out32), a @ b, rtol=1e-5, atol=1e-4)


def _bfloat16_dots(fn, *args):
  dots = [e for e in _eqns(jax.make_jaxpr(fn)(*args)) if e.primitive.name == "dot_general"]
  return [e for e in dots if "bfloat16" in _in_dtypes(e)]


def test_every_bfloat16_product_asks_for_a_float32_result():
  """XLA on CPU runs bfloat16 x bfloat16 -> bfloat16 as a float32 product (`mixed_precision`):
  every bfloat16 product of the GiMP pre-training loss and of a ViT patch encoder asks for float32
  (`preferred_element_type`), so that the bfloat16 kernel runs."""
  cfg = _config("bfloat16")
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  model.eval()
  loss_fn = gimp_objective.make_loss(cfg.pretrain)
  graphdef, state = nnx.split(model)
  checks = [("GiMP pre-training loss", lambda s, b: loss_fn(nnx.merge(graphdef, s), b)[0],
             (state, _batch(cfg)), 5)]  # embedding, each layer's qkv and output, GroupMSA, decoder
  for name in ("uni2_h", "conch_v1_5"):  # SwiGLU MLP, registers; CONCH's attentional pooler
    preset = encoders.PRESETS[name].with_depth(1)
    vgraph, vstate = nnx.split(encoders.build(preset, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    size = preset.input_size
    checks.append((name, lambda s, x, g=vgraph: nnx.merge(g, s)(x),
                   (vstate, jnp.zeros((1, size, size, 3), jnp.float32)), 5))
  for name, fn, args, least in checks:
    dots = _bfloat16_dots(fn, *args)
    assert len(dots) >= least, name
    for e in dots:
      assert e.params["preferred_element_type"] == jnp.float32, (name, e)
