"""gimp_jax.train.optim: parameter paths; frozen leaves get exactly zero updates and no Adam
moments; the first AdamW step, the warm-up + cosine schedule and gradient accumulation against
NumPy formulas; a freezing regex that matches nothing is an error."""

import logging

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gimp_jax.train import optim


class _Encoder(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)


class _Model(nnx.Module):
  def __init__(self, rngs):
    self.gene_encoder = _Encoder(rngs)
    self.head = nnx.Linear(4, 2, rngs=rngs)


PATHS = {"gene_encoder/fc1/kernel": (3, 4), "gene_encoder/fc1/bias": (4,),
         "gene_encoder/norm/scale": (4,), "gene_encoder/norm/bias": (4,),
         "head/kernel": (4, 2), "head/bias": (2,)}


def _params():
  return nnx.state(_Model(nnx.Rngs(0)), nnx.Param)


def _config(**overrides):
  cfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, weight_decay=0.1, warmup_epochs=0.0,
                                       end_lr_fraction=0.0, grad_clip=0.0, grad_accum_steps=1))
  cfg.update(overrides)
  return cfg


def _grads(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)


def _flat(tree):
  return {k: np.asarray(v, np.float64) for k, v in optim.flat_paths(tree).items()}


def test_paths_name_module_and_parameter():
  params = _params()
  flat = optim.flat_paths(params)
  assert {k: v.shape for k, v in flat.items()} == PATHS
  mask = optim.flat_paths(optim.frozen_mask(params, r"^gene_encoder/fc1/"))
  assert {k for k, v in mask.items() if v} == {"gene_encoder/fc1/kernel", "gene_encoder/fc1/bias"}
  assert not any(optim.flat_paths(optim.frozen_mask(params, "")).values())  # '' freezes nothing


def test_frozen_leaves_get_exactly_zero_updates_and_no_moments():
  params = _params()
  tx = optim.make_optimizer(_config(), params, total_steps=10, steps_per_epoch=1,
                            frozen_regex=r"^gene_encoder/")
  state = tx.init(params)
  mu = [(jax.tree_util.keystr(p), leaf) for p, leaf
        in jax.tree_util.tree_flatten_with_path(state)[0] if ".mu" in jax.tree_util.keystr(p)]
  assert sorted(leaf.shape for _, leaf in mu) == sorted([(4, 2), (2,)])  # the head's only
  assert all("head" in path for path, _ in mu)
  current = params
  for step in range(3):  # weight decay 0.1 would move a frozen leaf if it got any update
    updates, state = tx.update(_grads(params, step), state, current)
    for name, value in optim.flat_paths(updates).items():
      if name.startswith("gene_encoder/"):
        assert not np.any(np.asarray(value)), name  # exactly 0.0
      else:
        assert np.abs(np.asarray(value)).min() > 0, name
    current = optax.apply_updates(current, updates)
  before, after = _flat(params), _flat(current)
  for name in PATHS:
    if name.startswith("gene_encoder/"):
      np.testing.assert_array_equal(after[name], before[name])


def test_first_adamw_step_is_the_numpy_formula():
  """Step 1 of Adam with bias correction: m_hat = g, v_hat = g^2, so the update is
  -lr * (g / (|g| + eps) + wd * p) (decoupled weight decay), lr = peak without warm-up."""
  params = _params()
  cfg = _config()
  tx = optim.make_optimizer(cfg, params, total_steps=10, steps_per_epoch=1)
  grads = _grads(params, 0)
  updates, _ = tx.update(grads, tx.init(params), params)
  p, g, u = _flat(params), _flat(grads), _flat(updates)
  for name in PATHS:
    want = -cfg.learning_rate * (g[name] / (np.abs(g[name]) + 1e-8) + cfg.weight_decay * p[name])
    np.testing.assert_allclose(u[name], want, rtol=1e-5, atol=1e-9, err_msg=name)


def _numpy_lr(step, *, peak, warmup, total, end_fraction):
  """Linear warm-up 0 -> peak over `warmup` steps, then cosine peak -> end over the rest."""
  if step < warmup:
    return peak * step / warmup
  decay = max(total, warmup + 1) - warmup
  t = min(step - warmup, decay)
  end = peak * end_fraction
  return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * t / decay))


@pytest.mark.parametrize("warmup_epochs,end_fraction", [(0.0, 0.0), (1.5, 0.1)])
def test_learning_rate_schedule_matches_numpy(warmup_epochs, end_fraction):
  """The applied learning rate, read from AdamW with a constant gradient of 1 and no weight decay
  (each update is then -lr (1 - 1e-8)), follows warm-up + cosine at every step and stays at the
  end value after `total_steps`."""
  cfg = _config(weight_decay=0.0, warmup_epochs=warmup_epochs, end_lr_fraction=end_fraction)
  params = {"w": jnp.zeros((), jnp.float32)}
  steps_per_epoch, total = 2, 12
  tx = optim.make_optimizer(cfg, params, total_steps=total, steps_per_epoch=steps_per_epoch)
  state, got = tx.init(params), []
  for _ in range(total + 3):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    got.append(-float(updates["w"]))
  warmup = int(warmup_epochs * steps_per_epoch)
  want = [_numpy_lr(s, peak=1e-2, warmup=warmup, total=total, end_fraction=end_fraction)
          for s in range(total + 3)]
  # rtol: float32 Adam bias correction, e.g. 1 - 0.999^2 = 0.002 has ~3e-5 relative error; an
  # off-by-one step would be 1.7% off at step 1.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-10)
  assert got[-1] == pytest.approx(1e-2 * end_fraction, rel=1e-4, abs=1e-10)


def test_gradient_accumulation_applies_the_mean_every_k_steps():
  params = _params()
  one = optim.make_optimizer(_config(), params, total_steps=10, steps_per_epoch=1)
  two = optim.make_optimizer(_config(grad_accum_steps=2), params, total_steps=10,
                             steps_per_epoch=1)
  g1, g2 = _grads(params, 1), _grads(params, 2)
  state = two.init(params)
  first, state = two.update(g1, state, params)
  assert not any(np.any(np.asarray(v)) for v in jax.tree_util.tree_leaves(first))
  second, _ = two.update(g2, state, params)
  mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g1, g2)
  want, _ = one.update(mean, one.init(params), params)
  for name, value in _flat(second).items():
    np.testing.assert_allclose(value, _flat(want)[name], rtol=1e-5, atol=1e-9, err_msg=name)


def test_with_gradient_accumulation_the_schedule_runs_over_the_updates():
  """k = 3, 12 training steps: 4 optimizer updates, and the cosine reaches its end value at the
  last of them (sized in training steps, it would decay over only a third of the cosine)."""
  cfg = _config(weight_decay=0.0, end_lr_fraction=0.1, grad_accum_steps=3)
  params = {"w": jnp.zeros((), jnp.float32)}
  tx = optim.make_optimizer(cfg, params, total_steps=12, steps_per_epoch=12)
  state, got = tx.init(params), []
  for _ in range(12):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    got.append(-float(updates["w"]))
  applied = got[2::3]
  assert got[0] == got[1] == 0.0 and len(applied) == 4
  want = [_numpy_lr(u, peak=1e-2, warmup=0, total=4, end_fraction=0.1) for u in range(4)]
  np.testing.assert_allclose(applied, want, rtol=1e-4, atol=1e-10)


def test_a_freezing_regex_that_matches_nothing_raises():
  params = _params()
  with pytest.raises(ValueError, match=r"'\^encoder/' matched no parameter"):
    optim.freeze_labels(params, r"^encoder/")
  with pytest.raises(ValueError, match="matched no parameter"):
    optim.make_optimizer(_config(), params, total_steps=5, steps_per_epoch=1,
                         frozen_regex=r"^gene_encoder/fc2/")
  labels = optim.flat_paths(optim.freeze_labels(params, r"/bias$"))
  assert {k for k, v in labels.items() if v == optim.FROZEN} == {
      "gene_encoder/fc1/bias", "gene_encoder/norm/bias", "head/bias"}


def test_no_warmup_builds_no_empty_schedule_piece(caplog):
  """Warm-up 0 used to join an empty linear piece, which optax logs about on every stage."""
  caplog.set_level(logging.DEBUG)
  optim.make_optimizer(_config(warmup_epochs=0.0), {"w": jnp.zeros(())}, total_steps=4,
                       steps_per_epoch=2)
  assert not [r for r in caplog.records if "transition_steps" in r.getMessage()]
