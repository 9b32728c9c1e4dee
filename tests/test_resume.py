"""Crashes lose nothing: a real `python -m gimp_jax.main` killed with SIGKILL mid-stage, stopped
with SIGTERM, and restarted on a damaged checkpoint ends bit-identical (CPU) to an uninterrupted
run; a non-finite loss stops the stage and keeps the last good checkpoint; no pickle on user files.

The cohort and the tiny config have the shapes of tests/test_e2e.py, so the subprocesses reuse
its entries of the shared XLA compilation cache (tests/conftest.py).
"""

import ast
import glob
import hashlib
import json
import os
import shutil
import signal
import time

from flax import nnx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, finish, start_main, tiny_flags
from gimp_jax import workdir as workdir_lib
from gimp_jax.configs import nsclc
from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import pipeline
from gimp_jax.train import loop
from gimp_jax.train.state import create_state

# orbax reads of damaged files fail inside coroutines that are garbage-collected in later tests.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
CHECKPOINTS = ("pretrain", "finetune", "finetune_best")
# Steps of the tiny config on 20 patients (12 train): pretrain 3 x 2 epochs, finetune 6 x 2.
# Pre-training saves every 2 steps; fine-tuning only at epoch ends (and on SIGTERM). The supervised
# gene pre-training stage is left out to keep the test short (its loop is the same).
FINETUNE_PER_EPOCH = 6


@pytest.fixture(scope="module")
def inputs(cohort20):
  return cohort20


def flags(paths, workdir, *extra):
  return tiny_flags(paths, workdir, "--config.report.tsne=False", "--config.report.heatmaps=0",
                    "--config.pretrain.checkpoint_every=2",
                    "--config.finetune.checkpoint_every=1000",
                    *([] if any(x.startswith("--config.stages=") for x in extra) else [
                        "--config.stages=('pretrain','finetune','test')"]), *extra)


start = start_main


def logged(workdir, stage):
  """Steps of `stage` in metrics.jsonl, in file order (a resumed run repeats some)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")[:-1]  # the last line may be half-written
  return [r["step"] for r in map(json.loads, lines) if r["stage"] == stage]


def signal_after(args, workdir, stage, steps, sig):
  """Starts the CLI, sends `sig` once `stage` has logged `steps` steps, returns its outcome."""
  proc = start(args)
  deadline = time.time() + 600
  while len(logged(workdir, stage)) < steps:
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      raise AssertionError(f"no {stage} step {steps}: {proc.communicate()[1][-3000:]}")
    time.sleep(0.02)
  proc.send_signal(sig)
  return finish(proc)


def saved_steps(workdir, stage):
  d = os.path.join(workdir, "checkpoints", stage)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def saved_arrays(workdir, stage, step=None):
  """Every array of a checkpoint (params and optimizer state), read back with plain orbax."""
  step = saved_steps(workdir, stage)[-1] if step is None else step
  d = os.path.join(workdir, "checkpoints", stage, str(step))
  ckpt = ocp.StandardCheckpointer()
  tree = {item: ckpt.restore(os.path.join(d, item)) for item in ("params", "opt")}
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def read_meta(workdir, stage, step):
  with open(os.path.join(workdir, "checkpoints", stage, str(step), "meta", "metadata")) as f:
    return json.load(f)


def scores(results):
  """results.json without what legitimately differs between runs (wall time, paths)."""
  out = {k: v for k, v in results.items() if k not in ("stages", "report")}
  out["reference"] = {k: v for k, v in results["reference"].items() if k != "wall_s"}
  timing = ("wall_s", "median_step_s", "median_patches_per_s")
  out["stages"] = {name: {k: v for k, v in s.items() if k not in timing}
                   for name, s in results["stages"].items()}
  return out


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory, damage):
  """An uninterrupted run, and the same command interrupted three ways then finished."""
  base = tmp_path_factory.mktemp("runs")
  ref, wd = str(base / "uninterrupted"), str(base / "interrupted")
  obs = {"ref": ref, "wd": wd, "ref_run": finish(start(flags(inputs, ref)))}
  args = flags(inputs, wd)
  # 1. SIGKILL in the second pre-training epoch.
  obs["kill"] = signal_after(args, wd, "pretrain", 4, signal.SIGKILL)
  obs["pretrain_after_kill"] = saved_steps(wd, "pretrain")
  obs["pretrain_logged_before_restart"] = len(logged(wd, "pretrain"))
  # 2. Restart; SIGTERM in the second fine-tuning epoch.
  obs["term"] = signal_after(args, wd, "finetune", FINETUNE_PER_EPOCH + 2, signal.SIGTERM)
  obs["pretrain_logged_after_restart"] = logged(wd, "pretrain")
  obs["finetune_logged_at_term"] = logged(wd, "finetune")
  obs["finetune_after_term"] = saved_steps(wd, "finetune")
  last = obs["finetune_after_term"][-1]
  obs["term_meta"] = read_meta(wd, "finetune", last)
  # 3. Damage the checkpoint SIGTERM wrote and leave a half-written orbax temporary directory.
  d = os.path.join(wd, "checkpoints", "finetune")
  shutil.copytree(os.path.join(d, str(last)), os.path.join(d, f"{last + 1}.orbax-checkpoint-tmp-1"))
  damage(os.path.join(d, f"{last + 1}.orbax-checkpoint-tmp-1"))
  damage(os.path.join(d, str(last)))
  n_before = len(logged(wd, "finetune"))
  obs["final"] = finish(start(args))
  obs["finetune_logged_by_final"] = logged(wd, "finetune")[n_before:]
  return obs


def test_uninterrupted_reference_ran(runs):
  rc, out, err = runs["ref_run"]
  assert rc == 0, err[-3000:]
  assert "test_accuracy=" in out


def test_sigkill_mid_stage_then_rerun_is_bit_identical(runs):
  rc, _, _ = runs["kill"]
  assert rc == -signal.SIGKILL
  # Killed mid-stage: pre-training had a checkpoint but was not finished, and the rerun went on
  # from the step after it rather than from the start.
  saved = runs["pretrain_after_kill"]
  assert saved and saved[-1] < 6
  assert f"pretrain: resuming at step {saved[-1]} " in runs["term"][2]
  # The steps replayed after the checkpoint are recorded once.
  assert runs["pretrain_logged_after_restart"] == list(range(1, 7))
  rc, out, err = runs["final"]
  assert rc == 0, err[-3000:]
  for stage in CHECKPOINTS:
    a, b = saved_arrays(runs["ref"], stage), saved_arrays(runs["wd"], stage)
    assert saved_steps(runs["ref"], stage)[-1] == saved_steps(runs["wd"], stage)[-1], stage
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stage} {k}")
  with open(os.path.join(runs["ref"], "results.json")) as f:
    ref = json.load(f)
  with open(os.path.join(runs["wd"], "results.json")) as f:
    got = json.load(f)
  assert scores(got) == scores(ref)
  assert out == runs["ref_run"][1]


def test_sigterm_saves_a_checkpoint_then_exits_cleanly(runs):
  rc, _, err = runs["term"]
  assert rc == 128 + signal.SIGTERM, err[-3000:]
  assert "Traceback" not in err
  assert err.splitlines()[-1] == "gimp_jax: stopped; run the same command again to resume."
  # The checkpoint is the step the signal interrupted, not an epoch end or a periodic save.
  last = runs["finetune_after_term"][-1]
  assert last == runs["finetune_logged_at_term"][-1]
  assert last % FINETUNE_PER_EPOCH != 0
  assert runs["finetune_after_term"] == [FINETUNE_PER_EPOCH, last]
  assert runs["term_meta"]["epoch"] == 1 and not runs["term_meta"]["done"]
  assert runs["term_meta"]["batch"] == last - FINETUNE_PER_EPOCH


def test_half_written_checkpoint_is_never_picked_up(runs):
  rc, _, err = runs["final"]
  assert rc == 0, err[-3000:]
  last = runs["finetune_after_term"][-1]
  d = os.path.join(runs["wd"], "checkpoints", "finetune")
  assert f"{d}: step {last} is damaged" in err
  # It went on from the complete epoch-end checkpoint before the damaged one (replaying steps
  # the SIGTERM run had recorded, without recording them again) ...
  assert f"finetune: resuming at step {FINETUNE_PER_EPOCH} " in err
  assert runs["finetune_logged_by_final"] == list(range(last + 1, 2 * FINETUNE_PER_EPOCH + 1))
  with open(os.path.join(runs["wd"], "metrics.jsonl")) as f:
    rows = [(r["stage"], r["step"]) for r in map(json.loads, f)]
  assert len(rows) == len(set(rows))
  # ... set the damaged one aside, and removed orbax's leftover temporary directory.
  assert [n.split("-")[0] for n in os.listdir(d + ".damaged")] == [str(last)]
  assert not [n for n in os.listdir(d) if "tmp" in n]


def test_provenance_records_seed_config_versions_and_checksums(runs, inputs):
  with open(os.path.join(runs["wd"], "provenance.json")) as f:
    record = json.load(f)
  with open(os.path.join(runs["ref"], "provenance.json")) as f:
    ref = json.load(f)
  assert record["seed"] == 0 and record["config"]["data"]["labels"] == inputs["labels"]
  assert {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"} <= set(
      record["versions"])
  files = [inputs["labels"], inputs["expression"],
           *glob.glob(os.path.join(inputs["features_dir"], "*.h5"))]
  assert set(record["inputs"]) == set(files)
  for path in files:
    with open(path, "rb") as f:
      assert record["inputs"][path] == {"bytes": os.path.getsize(path), "method": "sha256",
                                        "sha256": hashlib.sha256(f.read()).hexdigest()}
  # Same seed, config and inputs: the same record (the workdir path is not part of it).
  assert {k: v for k, v in record.items() if k != "config"} == {
      k: v for k, v in ref.items() if k != "config"}
  assert not glob.glob(os.path.join(runs["wd"], "provenance.previous-*"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(inputs, tmp_path):
  """A real input: one training patient's features at 3e38 (finite, so validation accepts it)
  overflow the first layer; it is in the third pre-training batch, after two good steps."""
  root = tmp_path / "in"
  shutil.copytree(os.path.dirname(inputs["labels"]), root)
  paths = {k: v.replace(os.path.dirname(inputs["labels"]), str(root)) for k, v in inputs.items()}
  c = nsclc.get_config("tiny")
  c.data.update(labels=paths["labels"], features_dir=paths["features_dir"],
                expression=paths["expression"])
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_mapping(c.data, seed=c.seed))
  order = pipeline.epoch_order(cohort.split("train"), c.seed, 0)
  patient = cohort.patients[order[2 * c.pretrain.batch_size]]
  with h5py.File(patient.slide_paths[0], "r+") as f:
    f["features"][...] = np.float32(3e38)
  workdir = tmp_path / "run"
  rc, _, err = finish(start(flags(paths, workdir, "--config.stages=('pretrain',)",
                                  "--config.pretrain.checkpoint_every=1")))
  assert rc == 3, err[-3000:]
  assert "Traceback" not in err
  line = err.splitlines()[-1]
  d = workdir / "checkpoints" / "pretrain"
  assert line.startswith("gimp_jax: error: pretrain: non-finite loss ")
  assert line.endswith(f" at step 3 (epoch 0); training stopped and the last good checkpoint "
                       f"(step 2) is kept in {d}. Check the inputs for extreme values or lower "
                       "optim.learning_rate."), line
  assert saved_steps(workdir, "pretrain") == [1, 2]
  assert all(np.isfinite(v).all() for v in saved_arrays(workdir, "pretrain").values())
  assert logged(workdir, "pretrain") == [1, 2]


# ----------------------------------------------------------------------------- in process


def _state(width=3):
  return create_state(nnx.Linear(2, width, rngs=nnx.Rngs(0)), optax.adam(1e-2))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _fit(tmp_path, loss_fn, bad_step=None, on_epoch_end=None, stop=lambda: False):
  def batches(epoch, start):
    for b in range(start, 2):
      yield {"x": np.ones((2, 2), np.float32),
             "bad": np.asarray([epoch * 2 + b + 1 == bad_step])}
  spec = loop.StageSpec("s", loss_fn, batches, steps_per_epoch=2, epochs=3, checkpoint_every=1,
                        on_epoch_end=on_epoch_end)
  writer = loop.MetricsWriter(str(tmp_path))
  try:
    return loop.fit(spec, _state(), workdir=str(tmp_path), key=jax.random.key(0), writer=writer,
                    stop=stop)
  finally:
    writer.close()


def _nan_gradient_loss(model, batch):
  """A finite loss whose gradient is NaN at the bad step: 0 x d sqrt(u)/du at u = 0."""
  w = model.kernel[...]
  u = jnp.abs(w - w + 1.0 - batch["bad"][0].astype(jnp.float32))
  loss = jnp.mean((model(batch["x"]) - 1.0) ** 2) + 0.0 * jnp.sqrt(u).sum()
  return loss, {"loss": loss}


def test_nan_gradients_with_a_finite_loss_stop_before_anything_is_saved(tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match=(
      r"^s: non-finite loss [0-9.]+ \(gradient norm nan\) at step 4 \(epoch 1\); training stopped "
      r"and the last good checkpoint \(step 3\) is kept in .*checkpoints/s\. ")):
    _fit(tmp_path, _nan_gradient_loss, bad_step=4)
  ckpt = StageCheckpoints(str(tmp_path), "s")
  assert ckpt.manager.all_steps() == [2, 3]
  state, _ = ckpt.restore(_state())
  ckpt.close()
  assert all(np.isfinite(x).all() for x in _leaves(state.params))


def test_stop_requested_during_validation_stops_after_the_epoch_checkpoint(tmp_path):
  asked = []
  def on_epoch_end(state, epoch, meta):
    asked.append(epoch)  # SIGTERM arrives while the epoch's validation runs
    return {}
  with pytest.raises(KeyboardInterrupt):
    _fit(tmp_path, _nan_gradient_loss, on_epoch_end=on_epoch_end, stop=lambda: bool(asked))
  ckpt = StageCheckpoints(str(tmp_path), "s")
  assert ckpt.manager.all_steps() == [1, 2]  # nothing of the second epoch
  assert {k: ckpt.meta()[k] for k in ("epoch", "batch", "done")} == {
      "epoch": 1, "batch": 0, "done": False}
  ckpt.close()
  assert asked == [0]


def test_a_kill_while_the_gene_list_is_written_leaves_no_half_file(tmp_path, monkeypatch):
  norm = genes_lib.GeneNormalizer.fit(np.arange(6.0).reshape(2, 3), ["a", "b", "c"])
  cohort = cohort_lib.Cohort((), ("x", "y"), {}, np.zeros((0, 3)), norm, 4)
  real_save = genes_lib.GeneNormalizer.save

  def killed(self, path):
    with open(path, "wb") as f:
      f.write(b"PK\x03\x04 half a zip")
    raise KeyboardInterrupt  # the process dies here
  monkeypatch.setattr(genes_lib.GeneNormalizer, "save", killed)
  with pytest.raises(KeyboardInterrupt):
    workdir_lib.save_normalizer(cohort.normalizer, str(tmp_path))
  assert not (tmp_path / "normalizer.npz").exists()  # the next run fits it again
  monkeypatch.setattr(genes_lib.GeneNormalizer, "save", real_save)
  workdir_lib.save_normalizer(cohort.normalizer, str(tmp_path))
  assert genes_lib.GeneNormalizer.load(str(tmp_path / "normalizer.npz")).genes == ("a", "b", "c")


# ----------------------------------------------------------------------------- no pickle

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                   "marshal"}


def pickle_uses(source: str, name: str = "<src>") -> list[str]:
  """Every way `source` could unpickle a file: pickle-like imports, `torch.load` without
  `weights_only=True`, `np.load(allow_pickle=True)`, `pandas.read_pickle`, `torch.jit.load`."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                               and node.module else [])
      found += [f"{name}:{node.lineno}: import {n}" for n in names
                if n.split(".")[0] in _PICKLE_MODULES]
    if not isinstance(node, ast.Call):
      continue
    func = ast.unparse(node.func)
    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
    if func.endswith("torch.load") and kw.get("weights_only") != "True":
      found.append(f"{name}:{node.lineno}: {func} without weights_only=True")
    if func.split(".")[-1] == "load" and kw.get("allow_pickle") not in (None, "False"):
      found.append(f"{name}:{node.lineno}: {func}(allow_pickle={kw['allow_pickle']})")
    if func.split(".")[-1] in ("read_pickle", "loads") and "pickle" in func or func.endswith(
        "jit.load"):
      found.append(f"{name}:{node.lineno}: {func}")
  return found


def test_the_pickle_detector_detects():
  bad = ("import pickle\nfrom joblib import load\nimport torch\n"
         "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
         "pd.read_pickle(p)\ntorch.jit.load(p)\n")
  assert len(pickle_uses(bad)) == 7
  good = "torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p, allow_pickle=False)\n"
  assert pickle_uses(good) == []


def test_no_pickle_anywhere_in_the_package():
  found = []
  for path in sorted(glob.glob(os.path.join(ROOT, "gimp_jax", "**", "*.py"), recursive=True)):
    with open(path, encoding="utf-8") as f:
      found += pickle_uses(f.read(), os.path.relpath(path, ROOT))
  assert found == []


def _tb_scalars(workdir):
  """(tag, step) of every scalar in the TensorBoard event files (TFRecord framing, read here)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in glob.glob(os.path.join(workdir, "tb", "events*")):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):
      n = int.from_bytes(data[i:i + 8], "little")
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      out += [(v.tag, event.step) for v in event.summary.value]
      i += 12 + n + 4
  return out


def test_replayed_steps_are_recorded_once(tmp_path):
  """Steps 1-5 recorded, a kill mid-line, a resume from the checkpoint at step 3: steps 4-5 are
  replayed but neither metrics.jsonl nor TensorBoard gets them twice."""
  writer = loop.MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    writer.write("pretrain", step, {"loss": 1.0 / step})
  writer.write("finetune_val", 1, {"accuracy": 0.5})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"stage": "pretrain", "st')  # half a line: killed mid-write
  time.sleep(1.1)  # TensorBoard event files are named by the second: a new one for the new run
  writer = loop.MetricsWriter(str(tmp_path))
  writer.resumed("pretrain")
  for step in range(4, 8):
    writer.write("pretrain", step, {"loss": 1.0 / step})
  writer.write("finetune", 1, {"loss": 0.3})  # another stage: not resumed, written
  writer.close()
  rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [(r["stage"], r["step"]) for r in rows] == (
      [("pretrain", s) for s in range(1, 6)] + [("finetune_val", 1)]
      + [("pretrain", 6), ("pretrain", 7), ("finetune", 1)])
  scalars = _tb_scalars(str(tmp_path))
  assert sorted(scalars) == sorted((f"{r['stage']}/{k}", r["step"]) for r in rows
                                   for k in r if k not in ("stage", "step"))
