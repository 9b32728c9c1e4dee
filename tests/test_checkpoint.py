"""gimp_jax.checkpoint: a round trip is bit-identical (params, Adam moments, step, meta); saves
replace a step or refuse an older one; damaged steps are set aside, unfitting ones refused."""

import os
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.errors import DataError
from gimp_jax.train.state import create_state


def _state(width=3):
  return create_state(nnx.Linear(2, width, rngs=nnx.Rngs(0)), optax.adam(1e-2))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_trees_identical(a, b):
  """Same structure, and every leaf equal bit for bit (same dtype and shape)."""
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))


def _trained(steps=3):
  """A state after `steps` Adam updates: non-zero moments, count and step to save."""
  state = _state()
  rng = np.random.default_rng(0)
  for _ in range(steps):
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), state.params)
    state = state.apply_gradients(grads)
  return state


def test_round_trip_is_bit_identical_with_meta(tmp_path):
  state = _trained()
  mu = state.opt_state[0].mu
  assert int(state.step) == 3 and all(np.abs(x).max() > 0 for x in _leaves(mu))
  meta = {"epoch": 2, "batch": 1, "best": 0.8125, "done": False,
          "config": {"optim": {"learning_rate": 1e-2}, "stages": ["pretrain"]}}
  ckpt = StageCheckpoints(str(tmp_path), "stage")
  ckpt.save(state, meta)
  ckpt.close()
  assert os.path.isdir(tmp_path / "checkpoints" / "stage" / "3")

  ckpt = StageCheckpoints(str(tmp_path), "stage")  # a new process would open it like this
  assert ckpt.latest_step() == 3 and ckpt.meta() == meta
  restored, got_meta = ckpt.restore(_state())
  assert got_meta == meta
  _assert_trees_identical(restored.params, state.params)
  _assert_trees_identical(restored.opt_state, state.opt_state)
  assert restored.step.dtype == jnp.int32 and int(restored.step) == 3
  _assert_trees_identical(ckpt.restore_params(_state().params), state.params)
  ckpt.close()
  # The restored state trains on exactly as the original.
  grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
  _assert_trees_identical(restored.apply_gradients(grads).params,
                          state.apply_gradients(grads).params)


def test_no_checkpoint_reads_as_none(tmp_path):
  ckpt = StageCheckpoints(str(tmp_path), "empty")
  assert ckpt.latest_step() is None and ckpt.meta() is None
  assert ckpt.restore(_state()) is None and ckpt.restore_params(_state().params) is None
  ckpt.close()


def test_same_step_is_replaced_older_step_refused_and_max_to_keep(tmp_path):
  ckpt = StageCheckpoints(str(tmp_path), "s", max_to_keep=2)
  for k in (1, 2, 3):
    ckpt.save(_bump(_state(), k), {"epoch": k})
  assert ckpt.manager.all_steps() == [2, 3]  # the two newest are kept
  ckpt.save(_bump(_state(), 3).replace(params=_bump(_state(), 7).params), {"epoch": 7})
  assert ckpt.manager.all_steps() == [2, 3] and ckpt.meta() == {"epoch": 7}
  _assert_trees_identical(ckpt.restore_params(_state().params), _bump(_state(), 7).params)
  with pytest.raises(RuntimeError, match=r"step 1 is older than the latest checkpoint \(step 3\)"):
    ckpt.save(_bump(_state(), 1), {"epoch": 1})
  assert ckpt.meta(step=2) == {"epoch": 2}
  ckpt.close()


def _bump(state, k):
  return state.replace(step=jnp.asarray(k, jnp.int32),
                       params=jax.tree_util.tree_map(lambda x: x + k, state.params))



@pytest.mark.parametrize("how", ["truncated", "meta", "emptied", "no_params"])
def test_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, how, damage):
  ckpt = StageCheckpoints(str(tmp_path), "s", max_to_keep=3)
  for k in (1, 2, 3):
    ckpt.save(_bump(_state(), k), {"epoch": k})
  ckpt.close()
  d = tmp_path / "checkpoints" / "s"
  shutil.copytree(d / "3", d / "4.orbax-checkpoint-tmp-1700000000")  # a save killed mid-way
  if how == "truncated":
    damage(str(d / "3"))
  elif how == "meta":
    (d / "3" / "meta" / "metadata").write_text('{"epo')
  elif how == "emptied":
    shutil.rmtree(d / "3")
    (d / "3").mkdir()
  else:
    shutil.rmtree(d / "3" / "params")
  ckpt = StageCheckpoints(str(tmp_path), "s", max_to_keep=3)
  state, meta = ckpt.restore(_state())
  assert int(state.step) == 2 and meta == {"epoch": 2}
  for a, b in zip(_leaves(state.params), _leaves(_bump(_state(), 2).params)):
    np.testing.assert_array_equal(a, b)
  assert [n.split("-")[0] for n in os.listdir(str(d) + ".damaged")] == ["3"]
  # Training goes on from step 2 (orbax removes its leftover temporary directory before saving).
  ckpt.save(state.replace(step=jnp.asarray(3, jnp.int32)), {"epoch": 3})
  ckpt.close()
  assert sorted(os.listdir(d)) == ["1", "2", "3"]


def test_a_damaged_step_is_set_aside_by_process_zero_only(tmp_path, monkeypatch, damage):
  """In a job of several processes the others read the older step and leave the moving to
  process 0."""
  ckpt = StageCheckpoints(str(tmp_path), "s", max_to_keep=3)
  for k in (1, 2):
    ckpt.save(_bump(_state(), k), {"epoch": k})
  ckpt.close()
  d = tmp_path / "checkpoints" / "s"
  damage(str(d / "2"))
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  ckpt = StageCheckpoints(str(tmp_path), "s", max_to_keep=3)
  state, meta = ckpt.restore(_state())
  ckpt.close()
  assert int(state.step) == 1 and meta == {"epoch": 1}
  assert sorted(os.listdir(d)) == ["1", "2"] and not os.path.exists(str(d) + ".damaged")


def test_checkpoints_that_do_not_fit_the_model_are_refused_not_discarded(tmp_path):
  ckpt = StageCheckpoints(str(tmp_path), "s")
  for k in (1, 2):
    ckpt.save(_bump(_state(), k), {"epoch": k})
  with pytest.raises(DataError, match=r"checkpoints/s: step 2: no checkpoint of this stage reads "
                     r"back \(.*\); was the config changed\?"):
    ckpt.restore(_state(width=5))
  assert ckpt.manager.all_steps() == [1, 2]
  assert not (tmp_path / "checkpoints" / "s.damaged").exists()
  ckpt.close()
