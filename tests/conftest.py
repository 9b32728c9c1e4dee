"""Shared test settings: CPU only, and a persistent XLA compilation cache shared by the test
processes (the CLI tests start subprocesses that compile the same steps); and `run_numbers`, which
checks a finished run's results.json against a NumPy recomputation from the predictions it wrote."""

import csv
import glob
import json
import os
import tempfile

import numpy as np
import pytest

_CACHE = os.path.join(tempfile.gettempdir(), "gimp_jax_test_xla_cache")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


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
