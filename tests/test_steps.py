"""The step factory: freezing (optimizer mask, stop_gradient, eval mode) on the real stage runner,
the trainable-only gradient norm, validation selection and early stopping, the pure steps."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax.configs import nsclc
from gimp_jax.models import build
from gimp_jax.data import synthetic
from gimp_jax.train import evaluate, gene_stage, loop, optim, pretrain_stage, selection, steps
from gimp_jax.train import run as run_lib
from gimp_jax.train.state import create_state, train_state
from gimp_jax.objectives import gimp as gimp_objective
from gimp_jax.objectives import supervised


def _batch(cfg, b=4, seed=0):
  rng = np.random.default_rng(seed)
  L, D, G = cfg.pretrain.window, cfg.data.feature_dim, cfg.data.num_genes
  labels = np.array([0, 1] * (b // 2), np.int32)
  patches = rng.standard_normal((b, L, D)).astype(np.float32) + labels[:, None, None]
  return {"patches": jnp.asarray(patches),
          "mpm_mask": jnp.asarray(np.argsort(rng.random((b, L)), axis=1) < L // 2),
          "genes": jnp.asarray(rng.standard_normal((b, G)).astype(np.float32)),
          "label": jnp.asarray(labels)}


def _pretrain_state(cfg, total_steps=30):
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  return train_state(model, cfg.optim, steps_per_epoch=1, epochs=total_steps,
                     frozen=cfg.pretrain.frozen)


def test_frozen_leaves_unchanged_and_without_moments():
  cfg = nsclc.get_config("tiny")
  state = _pretrain_state(cfg)
  before = jax.tree_util.tree_map(np.array, optim.flat_paths(state.params))
  step = steps.make_train_step(gimp_objective.make_loss(cfg.pretrain), cfg.pretrain.frozen)
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


def test_pretrain_step_lowers_loss():
  cfg = nsclc.get_config("tiny")
  cfg.optim.learning_rate = 1e-3
  state = _pretrain_state(cfg)
  step = steps.make_train_step(gimp_objective.make_loss(cfg.pretrain), cfg.pretrain.frozen)
  batch = _batch(cfg)
  history = []
  for i in range(30):
    state, metrics = step(state, batch, jax.random.key(i))
    history.append(float(metrics["rec_loss"]))
  assert np.isfinite(history).all()
  # L_rec only: with the frozen GroupMSA deterministic, CLS_ge of this batch separates the two
  # labels by far more than the margin, so L_tri is mostly 0 here (see test_frozen_* below).
  assert np.mean(history[-5:]) < 0.85 * np.mean(history[:5]), history
  assert int(state.step) == 30


def test_finetune_and_eval_steps_on_padded_bags():
  cfg = nsclc.get_config("tiny")
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  state = train_state(model, cfg.optim, steps_per_epoch=1, epochs=5, frozen=cfg.finetune.frozen)
  rng = np.random.default_rng(0)
  batch = {"patches": jnp.asarray(rng.standard_normal((2, 50, 32)), jnp.float32),
           "patch_mask": jnp.asarray(np.arange(50)[None] < np.array([[50], [20]])),
           "genes": jnp.asarray(rng.standard_normal((2, 96)), jnp.float32),
           "label": jnp.array([0, 1])}
  state, metrics = steps.make_train_step(supervised.finetune_loss(None, cfg.finetune, cfg.task, cfg.survival),
                                         cfg.finetune.frozen)(state, batch, jax.random.key(0))
  assert np.isfinite(float(metrics["loss"]))
  eval_step = steps.make_eval_step()
  out = eval_step(state, batch, jax.random.key(0))
  assert out["probs"].shape == (2, 2) and out["embedding"].shape == (2, 64)
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, rtol=1e-5)
  # Evaluation is deterministic (dropout off).
  again = eval_step(state, batch, jax.random.key(9))
  np.testing.assert_array_equal(np.asarray(out["logits"]), np.asarray(again["logits"]))


def test_gene_pretrain_step():
  cfg = nsclc.get_config("tiny")
  model = build.build_gene_classifier(cfg.model, cfg.data.num_genes, 2, seed=0)
  state = train_state(model, cfg.optim, steps_per_epoch=1, epochs=5)
  b = _batch(cfg)
  state, m = steps.make_train_step(supervised.gene_loss(cfg.task, cfg.survival))(state, {"genes": b["genes"], "label": b["label"]},
                                      jax.random.key(0))
  assert set(m) >= {"loss", "accuracy"} and np.isfinite(float(m["loss"]))


# ----------------------------------------------------------------------------- the real stage


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
  """A tiny cohort through the real stage runner: gene pre-training, then the pretrain stage's
  spec and initial state exactly as `run.pretrain` builds them."""
  out = tmp_path_factory.mktemp("cohort")
  paths = synthetic.make_cohort(str(out), patients=16, genes=96, min_patches=40, max_patches=90,
                                feature_dim=32, seed=0)
  cfg = nsclc.get_config("tiny")
  cfg.data.features_dir, cfg.data.expression, cfg.data.labels = (
      paths["features_dir"], paths["expression"], paths["labels"])
  cfg.gene_pretrain.epochs = 2
  cfg.pretrain.epochs = 1
  cfg.data.bucket_sizes = (128,)
  workdir = str(tmp_path_factory.mktemp("run"))
  r = run_lib.open_run(cfg, workdir)
  gene_stage.gene_pretrain(r)
  spec, state, batch_size = pretrain_stage.pretrain_stage(r)
  batch = loop.to_device(next(iter(spec.batches(0, 0))))
  return r, spec, state, batch, batch_size


def _copy(state):
  return jax.tree_util.tree_map(jnp.copy, state)


def test_pretrain_stage_differentiates_the_pinv_as_pretrain_pinv_grad(pretrain_run):
  """The pre-training stage's model takes `pretrain.pinv_grad` (implicit by default), the other
  stages' `model.pinv_grad` (unrolled), and the implicit step's gradient differs from the unrolled
  one's (the option is live, not ignored)."""
  r, spec, state, batch, _ = pretrain_run
  assert (r.config.pretrain.pinv_grad, r.config.model.pinv_grad) == ("implicit", "unrolled")
  modes = lambda m: {layer.attn.pinv_grad for layer in m.aggregator.layers}  # noqa: E731
  assert modes(state.model(train=False)) == {"implicit"}
  assert modes(r.build()) == {"unrolled"}
  unrolled = state.replace(graphdef=create_state(r.build()).graphdef)
  def grad(s):
    return jax.grad(lambda p: spec.loss_fn(s.replace(params=p).model(train=False), batch)[0])(
        state.params)
  g_imp, g_unr = grad(state), grad(unrolled)
  diff = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(g_imp),
                                                        jax.tree_util.tree_leaves(g_unr))]
  assert max(diff) > 0


def test_stage_runner_keeps_frozen_leaves_bit_identical(pretrain_run):
  r, spec, state, _, batch_size = pretrain_run
  assert spec.frozen == r"^gene_encoder/"
  before = {k: np.asarray(v) for k, v in optim.flat_paths(state.params).items()}
  final, _ = loop.fit_stage(r, spec, _copy(state), batch_size=batch_size)
  after = optim.flat_paths(final.params)
  frozen = [k for k in before if k.startswith("gene_encoder/")]
  assert frozen and int(final.step) > 0
  for k in frozen:
    np.testing.assert_array_equal(np.asarray(after[k]), before[k])
  assert any(not np.array_equal(np.asarray(after[k]), before[k])
             for k in before if k.startswith("aggregator/"))



def test_frozen_gene_encoder_is_deterministic_in_the_step(pretrain_run):
  """CLS_ge (through the gene gap it determines) is the same for two step keys; without freezing,
  GroupMSA's dropout makes it differ, so the check can fail."""
  _, spec, state, batch, _ = pretrain_run
  genes = batch["genes"]
  enc = [state.model(jax.random.key(k), train=True, frozen=spec.frozen).gene_encoder(genes)
         for k in (1, 2)]
  np.testing.assert_array_equal(np.asarray(enc[0]), np.asarray(enc[1]))
  free = [state.model(jax.random.key(k), train=True).gene_encoder(genes) for k in (1, 2)]
  assert not np.array_equal(np.asarray(free[0]), np.asarray(free[1]))
  step = steps.make_train_step(spec.loss_fn, spec.frozen)
  gaps = [float(step(_copy(state), batch, jax.random.key(k))[1]["gene_gap"]) for k in (1, 2)]
  assert gaps[0] == gaps[1]
  unfrozen = steps.make_train_step(spec.loss_fn, "")
  gaps = [float(unfrozen(_copy(state), batch, jax.random.key(k))[1]["gene_gap"]) for k in (1, 2)]
  assert gaps[0] != gaps[1]


def _count(jaxpr, name: str) -> int:
  """Equations named `name` in a jaxpr, nested jaxprs (jit, scan, custom rules) included."""
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == name
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          n += _count(inner, name)
  return n


def test_no_gradient_is_computed_through_frozen_leaves(pretrain_run):
  """The step's program: freezing removes at least one matrix product per GroupMSA matrix product
  of the forward pass (its weight gradients)."""
  _, spec, state, batch, _ = pretrain_run
  key = jax.random.key(0)
  frozen = _count(jax.make_jaxpr(steps.make_train_step(spec.loss_fn, spec.frozen))(
      state, batch, key).jaxpr, "dot_general")
  free = _count(jax.make_jaxpr(steps.make_train_step(spec.loss_fn, ""))(
      state, batch, key).jaxpr, "dot_general")
  model = state.model(train=False)
  encoder = _count(jax.make_jaxpr(lambda g: model.gene_encoder(g))(batch["genes"]).jaxpr,
                   "dot_general")
  assert encoder > 0
  assert free - frozen >= encoder, (free, frozen, encoder)


def test_grad_norm_is_over_trainable_parameters(pretrain_run):
  """Against jax.grad of the same loss with the model as the step builds it, norm taken over the
  leaves whose path does not match the stage's regex. A wide margin keeps every triplet hinge
  active, so the frozen GroupMSA does have a gradient to leave out."""
  r, spec, state, batch, _ = pretrain_run
  cfg = r.config.copy_and_resolve_references()
  cfg.pretrain.margin = 1e3
  loss_fn = gimp_objective.make_loss(cfg.pretrain)
  key = jax.random.key(3)
  _, metrics = steps.make_train_step(loss_fn, spec.frozen)(_copy(state), batch, key)
  assert float(metrics["tri_active"]) == 1.0
  grads = jax.grad(lambda p: loss_fn(
      state.replace(params=p).model(key, train=True, frozen=spec.frozen), batch)[0])(state.params)
  flat = optim.flat_paths(grads)
  want = np.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                     for k, g in flat.items() if not re.search(spec.frozen, k)))
  np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-4)
  everything = np.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                           for g in flat.values()))
  assert everything > want * (1 + 1e-3)


def test_keep_best_selects_on_the_configured_metric_and_stops_early(pretrain_run, tmp_path):
  shared, _, state, _, _ = pretrain_run
  scripted = [{"accuracy": 0.5, "auc": 0.6}, {"accuracy": 0.5, "auc": 0.7},
              {"accuracy": 0.75, "auc": 0.55}, {"accuracy": 0.6, "auc": 0.65}]
  for metric, best_epoch, stops in (("val_auc", 1, [False, False, False, True]),
                                    ("val_accuracy", 2, [False, False, False, False])):
    r = dataclasses.replace(shared, workdir=str(tmp_path / metric))  # the module's Run unchanged
    it = iter(scripted)
    best, on_epoch_end = selection.keep_best(r, "probe", lambda s: next(it), metric, patience=2)
    got = []
    for epoch in range(4):
      out = on_epoch_end(state.replace(step=jnp.asarray(epoch + 1, jnp.int32)), epoch, {})
      got.append(out["stop_early"])
    assert out["best_epoch"] == best_epoch and got == stops
    best.close()
  with pytest.raises(ValueError, match="select_metric"):
    selection.selection_key({"accuracy": 1.0, "auc": 1.0}, "val_loss")


def test_every_step_records_its_time_and_throughput(pretrain_run, tmp_path):
  """step_s, wait_s and patches/s of every step in metrics.jsonl; the stage summary's medians are
  those of the records. A batch source that sleeps and a loss that sleeps on the host (inside the
  jitted step) make the lower bounds checkable."""
  import json
  import time
  shared, spec, state, _, batch_size = pretrain_run
  r = dataclasses.replace(shared, workdir=str(tmp_path), writer=loop.MetricsWriter(str(tmp_path)))
  pause = 0.05

  def slow_batches(epoch, start):
    for batch in spec.batches(epoch, start):
      time.sleep(pause)
      yield batch

  def slow_loss(model, batch):
    loss, metrics = spec.loss_fn(model, batch)
    slept = jax.pure_callback(lambda: (time.sleep(pause), np.float32(0))[1],
                              jax.ShapeDtypeStruct((), jnp.float32))
    return loss + 0.0 * slept, metrics
  timed = dataclasses.replace(spec, loss_fn=slow_loss, batches=slow_batches)
  _, summary = loop.fit_stage(r, timed, _copy(state), batch_size=batch_size)
  r.writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  rows = [row for row in rows if row["stage"] == "pretrain"]
  assert len(rows) == spec.steps_per_epoch * spec.epochs > 1
  window = r.config.pretrain.window
  for row in rows:
    assert row["step_s"] >= pause and row["wait_s"] >= pause
    np.testing.assert_allclose(row["patches_per_s"], batch_size * window / row["step_s"],
                               rtol=1e-6)
  assert summary["median_step_s"] == pytest.approx(np.median([row["step_s"] for row in rows]))
  assert summary["median_patches_per_s"] == pytest.approx(
      np.median([row["patches_per_s"] for row in rows]))
  assert all("step_s" not in h for h in summary["history"])  # timing stays out of the curves


def test_shuffling_the_evaluated_patients_changes_no_probability(pretrain_run):
  """`run.predict` (the report's and `predict`'s path) batches several bags: each patient's
  probabilities must not depend on its batch-mates. 64 landmarks on bags of 40-90 patches make the
  pseudo-inverse iteration far from converged, so a batch-wide pinv scale would show."""
  shared = pretrain_run[0]
  config = shared.config.copy_and_resolve_references()
  config.model.num_landmarks = 64
  config.finetune.batch_size = 4
  r = dataclasses.replace(shared, config=config)
  state = create_state(r.build())
  everyone = np.arange(len(r.cohort.patients))
  probs = {}
  for seed in (0, 1, 2):
    order = np.random.default_rng(seed).permutation(everyone)
    r = dataclasses.replace(r, cohort=dataclasses.replace(
        shared.cohort, splits={**shared.cohort.splits, "test": order}))
    out = evaluate.predict(r, state, "test")
    assert list(out["patient_id"]) == [shared.cohort.patients[i].patient_id for i in order]
    probs[seed] = dict(zip(out["patient_id"], out["probs"]))
  for seed in (1, 2):
    for pid, p in probs[0].items():
      np.testing.assert_allclose(probs[seed][pid], p, rtol=0, atol=1e-6, err_msg=pid)
