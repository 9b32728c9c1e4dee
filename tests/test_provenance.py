"""provenance.json: checksums computed independently with hashlib, the large-file fingerprint,
changed inputs on resume, and atomic writes."""

import hashlib
import json
import os

import jax
import pytest

from gimp_jax.configs import nsclc
from gimp_jax import provenance
from gimp_jax import preflight
from gimp_jax.data import synthetic


@pytest.fixture
def run_inputs(tmp_path):
  paths = synthetic.make_cohort(str(tmp_path / "in"), patients=6, genes=8, min_patches=3,
                                max_patches=5, feature_dim=4, seed=2)
  c = nsclc.get_config("tiny")
  c.data.update(features_dir=paths["features_dir"], expression=paths["expression"],
                labels=paths["labels"], feature_dim=4, num_genes=0)
  cohort, problems = preflight.check(c)
  assert not problems
  return c, cohort, paths


def test_fingerprints_small_and_large_files(tmp_path, monkeypatch):
  data = os.urandom(5 << 20)
  path = tmp_path / "big.bin"
  path.write_bytes(data)
  assert provenance.fingerprint(str(path)) == {
      "bytes": len(data), "method": "sha256", "sha256": hashlib.sha256(data).hexdigest()}
  monkeypatch.setattr(provenance, "FULL_HASH_BYTES", 4 << 20)
  mtime = os.stat(path).st_mtime_ns
  h = hashlib.sha256(f"{len(data)}:{mtime}:".encode() + data[:1 << 20] + data[-(1 << 20):])
  quick = provenance.fingerprint(str(path))
  assert quick == {"bytes": len(data), "method": "sha256(size,mtime,head,tail)",
                   "sha256": h.hexdigest()}
  # A change in the first MiB shows, and so does one in the middle (through the mtime).
  path.write_bytes(b"x" + data[1:])
  os.utime(path, ns=(mtime, mtime))
  assert provenance.fingerprint(str(path))["sha256"] != quick["sha256"]
  path.write_bytes(data[:3 << 20] + b"x" + data[(3 << 20) + 1:])
  assert provenance.fingerprint(str(path))["sha256"] != quick["sha256"]


def test_record_lists_every_input_with_its_checksum(run_inputs, tmp_path):
  c, cohort, paths = run_inputs
  record = provenance.record(str(tmp_path), c, cohort)
  with open(tmp_path / "provenance.json") as f:
    assert json.load(f) == json.loads(json.dumps(record))
  slides = [p for patient in cohort.patients for p in patient.slide_paths]
  assert set(record["inputs"]) == {paths["labels"], paths["expression"], *slides}
  for path, fp in record["inputs"].items():
    with open(path, "rb") as f:
      assert fp["sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert record["seed"] == c.seed and record["config"] == json.loads(c.to_json_best_effort())
  assert record["versions"]["jax"] == jax.__version__
  assert record["versions"]["jax_backend"] == "cpu"
  assert record["cohort"]["class_names"] == list(cohort.class_names)
  assert not [n for n in os.listdir(tmp_path) if "tmp" in n]


def test_a_resumed_run_on_changed_inputs_keeps_the_old_record(run_inputs, tmp_path, caplog):
  c, cohort, paths = run_inputs
  first = provenance.record(str(tmp_path), c, cohort)
  assert provenance.record(str(tmp_path), c, cohort) == first
  assert not os.path.exists(tmp_path / "provenance.previous-1.json")
  with open(paths["expression"], "a") as f:
    f.write("\n")
  provenance.record(str(tmp_path), c, cohort)
  with open(tmp_path / "provenance.previous-1.json") as f:
    assert json.load(f) == json.loads(json.dumps(first))
  assert f"{paths['expression']}: content changed" in caplog.text


def test_a_resumed_job_on_a_new_coordinator_port_keeps_its_record(run_inputs, tmp_path, caplog):
  """A job of several processes resumed after a kill meets on a new port (`JOB_FIELDS`): no
  previous record, as for one process resumed; another `parallel` field is a change."""
  c, cohort, _ = run_inputs
  c.parallel.update(coordinator_address="localhost:1234", num_processes=2, process_id=0)
  provenance.record(str(tmp_path), c, cohort)
  c.parallel.coordinator_address = "localhost:5678"
  provenance.record(str(tmp_path), c, cohort)
  assert sorted(os.listdir(tmp_path)) == ["in", "provenance.json"]
  with open(tmp_path / "provenance.json") as f:
    assert json.load(f)["config"]["parallel"]["coordinator_address"] == "localhost:5678"
  c.parallel.num_processes = 4
  provenance.record(str(tmp_path), c, cohort)
  assert os.path.exists(tmp_path / "provenance.previous-1.json")
  assert "config changed" in caplog.text
