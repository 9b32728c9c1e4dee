"""Shared test settings: CPU only, and a persistent XLA compilation cache shared by the test
processes (the CLI tests start subprocesses that compile the same steps); `run_numbers`, which
checks a finished run's results.json against a NumPy recomputation from the predictions it wrote;
and the helpers the command-line tests share (`run_module`, `start_main`, `finish`, `tiny_flags`,
the `cohort20` fixture, the checkpoint readers `saved_arrays` and `assert_checkpoints_match`),
imported as `from conftest import ...`."""

import csv
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

_CACHE = os.path.join(tempfile.gettempdir(), "gimp_jax_test_xla_cache")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f"--config={os.path.join(ROOT, 'configs', 'nsclc.py')}:tiny"


def _env() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def run_module(module: str, *args: str, timeout: int = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """`python -m module args` from the repository root, to completion (stdout, stderr captured);
  `env` adds to the environment."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env={**_env(), **(env or {})}, capture_output=True, text=True,
                        timeout=timeout)


def start_main(args: list[str]) -> subprocess.Popen:
  """`python -m gimp_jax.main args` started in the background (to signal or race it)."""
  return subprocess.Popen([sys.executable, "-m", "gimp_jax.main", *args], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str, str]:
  """(exit code, stdout, stderr) of a `start_main` process."""
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def tiny_flags(paths: dict[str, str], workdir, *extra: str) -> list[str]:
  """The flags of a `:tiny` run of `configs/nsclc.py` on the cohort `paths` in `workdir`."""
  return [TINY, f"--workdir={workdir}", f"--config.data.features_dir={paths['features_dir']}",
          f"--config.data.expression={paths['expression']}",
          f"--config.data.labels={paths['labels']}", *extra]


@pytest.fixture(scope="session")
def cohort20(tmp_path_factory):
  """The command-line tests' cohort: 20 synthetic patients, 96 genes, 40-90 patches of 32."""
  from gimp_jax.data import synthetic  # pylint: disable=g-import-not-at-top (after the env above)
  out = tmp_path_factory.mktemp("cohort20")
  return synthetic.make_cohort(str(out), patients=20, genes=96, min_patches=40, max_patches=90,
                               feature_dim=32, seed=0)


def one_config_per_method() -> list[str]:
  """A config of every method module (`gimp_jax.methods`): the one named after it, else the first;
  the end-to-end tests run these, `trace_stages` every config."""
  from gimp_jax.configs import methods as method_configs  # pylint: disable=g-import-not-at-top
  by_method = {}
  for name in method_configs.known():
    method = method_configs.get_config(name, "tiny").method
    if name == method or method not in by_method:
      by_method[method] = name
  return sorted(by_method.values())


def trace_stages(config, cohort) -> dict[str, dict]:
  """{stage: metrics shapes} of one training step of each training stage of `config` on the first
  batch the stage's pipeline gives from `cohort` (a loaded `Cohort`): the model is built and the
  CLI's step (`steps.make_train_step`) traced with `jax.eval_shape`, nothing compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  from gimp_jax import methods  # pylint: disable=g-import-not-at-top
  from gimp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from gimp_jax.models import build  # pylint: disable=g-import-not-at-top
  from gimp_jax.objectives import supervised, survival  # pylint: disable=g-import-not-at-top
  from gimp_jax.train import loop, steps  # pylint: disable=g-import-not-at-top
  from gimp_jax.train.state import create_state, frozen_regex, train_state  # pylint: disable=g-import-not-at-top
  outputs = survival.num_outputs(cohort.task, config.survival, cohort.num_classes)
  d = config.data
  stages = {
      "gene_pretrain": lambda: (
          build.build_gene_classifier(config.model, cohort.num_genes, outputs, 0),
          supervised.gene_loss(cohort.task, config.survival), "",
          pipeline.gene_batches(cohort, "train", batch_size=2, prefetch=0)),
      "pretrain": lambda: (
          methods.build(config, cohort.gene_names, outputs, 0,
                        build.pretrain_model_cfg(config.model, config.pretrain)),
          methods.pretrain_loss(config), config.pretrain.frozen,
          pipeline.pretrain_batches(cohort, "train", batch_size=2, window=config.pretrain.window,
                                    ratio=config.pretrain.mask_ratio, seed=0, epoch=0,
                                    prefetch=0)),
      "finetune": lambda: (
          methods.build(config, cohort.gene_names, outputs, 0), methods.finetune_loss(config),
          config.finetune.frozen,
          pipeline.bag_batches(cohort, "train", batch_size=2, bucket_sizes=d.bucket_sizes,
                               prefetch=0)),
  }
  out = {}
  for name in [s for s in config.stages if s in stages]:
    model, loss_fn, frozen, batches = stages[name]()
    frozen = frozen_regex(frozen, create_state(model).params)
    state = train_state(model, config.optim, steps_per_epoch=1, epochs=1, frozen=frozen)
    _, metrics = jax.eval_shape(steps.make_train_step(loss_fn, frozen), state,
                                loop.to_device(next(iter(batches))), jax.random.key(0))
    out[name] = metrics
  return out


def assert_every_config_traces(config_of, cohort) -> None:
  """Every method config (`config_of(name)` -> its config) traces one step of each of its
  training stages on `cohort` (`trace_stages`): a scalar loss and the gradient norm."""
  from gimp_jax.configs import methods as method_configs  # pylint: disable=g-import-not-at-top
  for name in method_configs.known():
    config = config_of(name)
    traced = trace_stages(config, cohort)
    assert set(traced) == set(config.stages) - {"test", "probe"}, name
    for metrics in traced.values():
      assert metrics["loss"].shape == () and "grad_norm" in metrics, name


def saved_steps(workdir: str, stage: str) -> list[int]:
  """The steps of a stage's checkpoints in `workdir`, oldest first."""
  d = os.path.join(workdir, "checkpoints", stage)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _orbax_items(workdir: str, stage: str):
  """(checkpointer, folder, {"params", "opt": metadata tree}) of a stage's newest checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  d = os.path.join(workdir, "checkpoints", stage, str(saved_steps(workdir, stage)[-1]))
  ckpt, meta = ocp.StandardCheckpointer(), {}
  for item in ("params", "opt"):
    m = ckpt.metadata(os.path.join(d, item))
    meta[item] = getattr(m, "item_metadata", m)
  return ckpt, d, meta


def saved_arrays(workdir: str, stage: str) -> dict[str, np.ndarray]:
  """Every array of a stage's newest checkpoint (params, optimizer state), read with plain orbax
  onto this process's first device, whatever the devices it was saved from."""
  import jax  # pylint: disable=g-import-not-at-top
  ckpt, d, meta = _orbax_items(workdir, stage)
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  tree = {item: ckpt.restore(os.path.join(d, item), jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), meta[item]))
          for item in meta}
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def saved_device_counts(workdir: str, stage: str) -> set[int]:
  """The device counts of the shardings that a stage's newest checkpoint records for its
  parameters: {1} from one device, {n} from an n-device mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  meta = _orbax_items(workdir, stage)[2]["params"]
  return {int(np.prod(getattr(m.sharding, "shape", [1])))
          for m in jax.tree_util.tree_leaves(meta)}


def assert_checkpoints_match(got: str, expected: str, stage: str, tol: float,
                             learning_rate: float) -> None:
  """A stage's newest checkpoint in workdir `got` equals the one in `expected` (same steps), every
  leaf to `tol`, but for the key third of GroupMSA's fused [q | k | v] bias: softmax is invariant
  to it, so its true gradient is 0 and Adam turns the float rounding of that 0 (which differs
  between two XLA programs) into steps of up to the learning rate; there the bound is learning
  rate x steps."""
  steps = saved_steps(expected, stage)
  assert saved_steps(got, stage) == steps
  one, two = saved_arrays(expected, stage), saved_arrays(got, stage)
  assert one.keys() == two.keys()
  key_bias = 0
  for key in one:
    a, b = one[key], two[key]
    if "['qkv']['bias']" in key:
      a, b = a.reshape(3, -1), b.reshape(3, -1)
      assert np.max(np.abs(b[1] - a[1])) <= learning_rate * steps[-1], key
      a, b, key_bias = a[[0, 2]], b[[0, 2]], key_bias + 1
    np.testing.assert_allclose(b, a, rtol=tol, atol=tol, err_msg=key)
  assert key_bias >= 2  # GroupMSA's intra- and inter-fragment attention


def run_split(ids: np.ndarray, report_dir, prefix: str) -> dict[str, np.ndarray]:
  """A finished run's val and test patients (indices into `ids`) from its `<prefix>_<split>.csv`
  files in `report_dir`, and train the rest."""
  split = {}
  for name in ("val", "test"):
    with open(os.path.join(report_dir, f"{prefix}_{name}.csv"), encoding="utf-8") as f:
      split[name] = np.flatnonzero(np.isin(ids, [r["patient_id"] for r in csv.DictReader(f)]))
  split["train"] = np.setdiff1d(np.arange(ids.size), np.concatenate([split["val"], split["test"]]))
  return split


def _mann_whitney_auc(positive: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
  """AUC of `scores` for `positive` over all (positive, negative) pairs, ties counting 1/2, and
  the largest error the ties can cause when `scores` were rounded: half the tied pair fraction."""
  pos, neg = scores[positive], scores[~positive]
  greater = (pos[:, None] > neg[None]).sum()
  tied = (pos[:, None] == neg[None]).sum()
  pairs = pos.size * neg.size
  return (greater + 0.5 * tied) / pairs, 0.5 * tied / pairs


def check_run_numbers(workdir: str, labels_csv: str) -> dict:
  """Recomputes a finished run's val/test accuracy, AUC and macro F1 from the predictions CSVs in
  `workdir/report` and the true labels in the cohort's `labels_csv`, with NumPy, and asserts that
  results.json holds the same numbers. Returns results.json.

  The CSVs hold probabilities to 6 significant digits, so the AUC may differ from the run's (made
  from float32 probabilities) by at most half the fraction of (positive, negative) pairs that the
  rounding tied; accuracy and F1 must match to 1e-12 (an argmax flipped by rounding would need two
  class probabilities equal to 6 digits, which the assertion on `predicted` below would catch).
  """
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  with open(labels_csv, encoding="utf-8") as f:
    true_name = {row["patient_id"]: row["label"] for row in csv.DictReader(f)}
  names = results["class_names"]
  assert sorted(names) == sorted(set(true_name.values()))
  seen = set()
  for split in ("val", "test"):
    with open(os.path.join(workdir, "report", f"predictions_{split}.csv"), encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == results["splits"][split] > 0, split
    ids = [r["patient_id"] for r in rows]
    assert len(set(ids)) == len(ids) and not seen & set(ids), split  # splits are disjoint
    seen |= set(ids)
    labels = np.array([names.index(true_name[pid]) for pid in ids])
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=0, atol=1e-5)  # softmax, 6 digits
    pred = probs.argmax(1)
    np.testing.assert_array_equal([int(r["predicted"]) for r in rows], pred)
    np.testing.assert_array_equal([int(r["label"]) for r in rows], labels)
    np.testing.assert_allclose(results[f"{split}_accuracy"], np.mean(pred == labels),
                               rtol=0, atol=1e-12)
    f1s = []
    for c in sorted(set(labels) | set(pred)):
      tp, fp, fn = [np.sum((pred == c) & (labels == c)), np.sum((pred == c) & (labels != c)),
                    np.sum((pred != c) & (labels == c))]
      f1s.append(2 * tp / (2 * tp + fp + fn))
    np.testing.assert_allclose(results[f"{split}_f1"], np.mean(f1s), rtol=0, atol=1e-12)
    if len(set(labels)) < len(names):  # a class absent from the split: AUC undefined
      assert np.isnan(results[f"{split}_auc"]), split
      continue
    classes = [1] if len(names) == 2 else range(len(names))
    aucs, slack = zip(*[_mann_whitney_auc(labels == c, probs[:, c]) for c in classes])
    assert abs(results[f"{split}_auc"] - np.mean(aucs)) <= np.mean(slack) + 1e-12, (
        split, results[f"{split}_auc"], aucs, slack)
  return results


@pytest.fixture
def run_numbers():
  """`check_run_numbers` as a fixture (test modules do not import each other)."""
  return check_run_numbers


def _damage(step_dir: str) -> None:
  """A checkpoint step whose files lost their second half (a kill mid-delete, a power cut)."""
  for path in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope="session")
def damage():
  """`_damage` as a fixture (test modules do not import each other)."""
  return _damage


@pytest.fixture(scope="module")
def fast_compilation():
  """Tiny models run in microseconds; XLA's optimisation passes are most of their cost (a module
  asks for it with `pytestmark = pytest.mark.usefixtures("fast_compilation")`)."""
  import jax  # pylint: disable=g-import-not-at-top (after the environment above is set)
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)
