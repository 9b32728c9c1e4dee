"""Optimizer, freezing, stage transitions and the pure steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gimp_jax.configs import nsclc
from gimp_jax import methods
from gimp_jax.models import build
from gimp_jax.train import optim, steps, transfer
from gimp_jax.train.state import create_state


def _batch(cfg, b=4, seed=0):
  rng = np.random.default_rng(seed)
  L, D, G = cfg.pretrain.window, cfg.data.feature_dim, cfg.data.num_genes
  labels = np.array([0, 1] * (b // 2), np.int32)
  patches = rng.standard_normal((b, L, D)).astype(np.float32) + labels[:, None, None]
  return {"patches": jnp.asarray(patches),
          "mpm_mask": jnp.asarray(rng.random((b, L)) < 0.5),
          "genes": jnp.asarray(rng.standard_normal((b, G)).astype(np.float32)),
          "label": jnp.asarray(labels)}


def _pretrain_state(cfg, total_steps=30):
  model = build.build_gimp(cfg, cfg.data.num_genes, 2, seed=0)
  params = create_state(model).params
  tx = optim.make_optimizer(cfg.optim, params, total_steps=total_steps, steps_per_epoch=1,
                            frozen_regex=cfg.pretrain.frozen)
  return create_state(model, tx)


def test_frozen_leaves_unchanged_and_without_moments():
  cfg = nsclc.get_config("tiny")
  state = _pretrain_state(cfg)
  before = jax.tree_util.tree_map(np.array, optim.flat_paths(state.params))
  step = steps.make_pretrain_step(cfg.pretrain)
  batch = _batch(cfg)
  for i in range(5):
    state, _ = step(state, batch, jax.random.key(i))
  after = optim.flat_paths(state.params)
  frozen = [k for k in before if k.startswith("gene_encoder/")]
  assert frozen
  for k in frozen:
    np.testing.assert_array_equal(np.asarray(after[k]), before[k])
  changed = [k for k in before if k.startswith("aggregator/")
             and not np.array_equal(np.asarray(after[k]), before[k])]
  assert len(changed) > 10
  # Moments exist only for trainable leaves: count the Adam mu entries.
  mu_sizes = [leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
              if "mu" in jax.tree_util.keystr(path)]
  trainable = sum(np.size(v) for k, v in before.items() if not k.startswith("gene_encoder/"))
  assert sum(mu_sizes) == trainable


def test_freeze_regex_must_match():
  cfg = nsclc.get_config("tiny")
  params = create_state(build.build_gimp(cfg, cfg.data.num_genes, 2, seed=0)).params
  with pytest.raises(ValueError, match="matched no parameter"):
    optim.freeze_labels(params, r"^no_such_module/")


def test_pretrain_step_lowers_loss():
  cfg = nsclc.get_config("tiny")
  cfg.optim.learning_rate = 1e-3
  state = _pretrain_state(cfg)
  step = steps.make_pretrain_step(cfg.pretrain)
  batch = _batch(cfg)
  history = []
  for i in range(30):
    state, metrics = step(state, batch, jax.random.key(i))
    history.append(float(metrics["loss"]))
  assert np.isfinite(history).all()
  assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5]), history
  assert int(state.step) == 30


def test_cosine_schedule_and_warmup():
  cfg = nsclc.get_config("tiny")
  cfg.optim.warmup_epochs = 2
  cfg.optim.grad_clip = 0.0
  params = {"w": jnp.zeros(())}
  tx = optim.make_optimizer(cfg.optim, params, total_steps=10, steps_per_epoch=1)
  lrs = []
  state = tx.init(params)
  for _ in range(10):
    # lr of AdamW with a constant gradient of 1: first update magnitude ~ lr
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    lrs.append(-float(updates["w"]))
  assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-5, rel=1e-3)
  assert lrs[2] == pytest.approx(1e-4, rel=1e-2) and lrs[-1] < lrs[3]


def test_gene_encoder_transfer_into_gimp():
  cfg = nsclc.get_config("tiny")
  gene = create_state(build.build_gene_classifier(cfg, cfg.data.num_genes, 2, seed=5)).params
  gimp = create_state(build.build_gimp(cfg, cfg.data.num_genes, 2, seed=0)).params
  new, report = transfer.gene_encoder_into_gimp(gene, gimp)
  src, dst, old = optim.flat_paths(gene), optim.flat_paths(new), optim.flat_paths(gimp)
  assert report["copied"] and all(k.startswith("gene_encoder/") for k in report["copied"])
  for k in report["copied"]:
    np.testing.assert_array_equal(np.asarray(dst[k]), np.asarray(src[k]))
  for k in report["fresh"]:
    np.testing.assert_array_equal(np.asarray(dst[k]), np.asarray(old[k]))
  assert "head/fc1/kernel" in report["fresh"]


def test_pretrained_into_finetune_new_head_and_shape_mismatch():
  cfg = nsclc.get_config("tiny")
  pre = create_state(build.build_gimp(cfg, cfg.data.num_genes, 2, seed=1)).params
  fine = create_state(build.build_gimp(cfg, cfg.data.num_genes, 3, seed=2)).params
  new, report = transfer.pretrained_into_finetune(pre, fine)
  assert set(report["fresh"]) == {"head/fc1/bias", "head/fc1/kernel", "head/fc2/bias",
                                  "head/fc2/kernel"}
  np.testing.assert_array_equal(np.asarray(optim.flat_paths(new)["aggregator/embed/kernel"]),
                                np.asarray(optim.flat_paths(pre)["aggregator/embed/kernel"]))
  with pytest.raises(ValueError, match="shape"):
    transfer.transfer_params(pre, fine)  # the 2-class head cannot go into a 3-class head


def test_finetune_and_eval_steps_on_padded_bags():
  cfg = nsclc.get_config("tiny")
  model = build.build_gimp(cfg, cfg.data.num_genes, 2, seed=0)
  params = create_state(model).params
  tx = optim.make_optimizer(cfg.optim, params, total_steps=5, steps_per_epoch=1,
                            frozen_regex=cfg.finetune.frozen)
  state = create_state(model, tx)
  rng = np.random.default_rng(0)
  batch = {"patches": jnp.asarray(rng.standard_normal((2, 50, 32)), jnp.float32),
           "patch_mask": jnp.asarray(np.arange(50)[None] < np.array([[50], [20]])),
           "genes": jnp.asarray(rng.standard_normal((2, 96)), jnp.float32),
           "label": jnp.array([0, 1])}
  state, metrics = steps.make_finetune_step()(state, batch, jax.random.key(0))
  assert np.isfinite(float(metrics["loss"]))
  eval_step = steps.make_eval_step(methods.gimp_forward)
  out = eval_step(state, batch, jax.random.key(0))
  assert out["probs"].shape == (2, 2) and out["embedding"].shape == (2, 64)
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, rtol=1e-5)
  # Evaluation is deterministic (dropout off).
  again = eval_step(state, batch, jax.random.key(9))
  np.testing.assert_array_equal(np.asarray(out["logits"]), np.asarray(again["logits"]))


def test_gene_pretrain_step():
  cfg = nsclc.get_config("tiny")
  model = build.build_gene_classifier(cfg, cfg.data.num_genes, 2, seed=0)
  params = create_state(model).params
  tx = optim.make_optimizer(cfg.optim, params, total_steps=5, steps_per_epoch=1)
  state = create_state(model, tx)
  b = _batch(cfg)
  state, m = steps.gene_pretrain_step(state, {"genes": b["genes"], "label": b["label"]},
                                      jax.random.key(0))
  assert set(m) >= {"loss", "accuracy"} and np.isfinite(float(m["loss"]))
