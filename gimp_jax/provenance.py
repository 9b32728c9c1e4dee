"""What a run was made from: `workdir/provenance.json` (seed, config, library versions, inputs).

Every input file the run reads (labels CSV, expression matrix or per-sample files, manifest, the
`.h5` of every patient kept, or the TFDS shards) is recorded with its size and a SHA-256:
- files up to `FULL_HASH_BYTES`: the SHA-256 of the whole file (`"method": "sha256"`);
- larger files (whole-slide feature files of real cohorts): the SHA-256 of the size, the
  modification time (ns) and the first and last MiB (`"method": "sha256(size,mtime,head,tail)"`),
  so that a cohort of hundreds of GB is fingerprinted in seconds.

The record holds no timestamps, so the same config on the same inputs and libraries writes the same
file. When a resumed run finds a record that differs (inputs or config changed in between), the
old one is kept as `provenance.previous-<k>.json` and a warning names what changed; where the
processes of a job meet (`JOB_FIELDS`: a resumed job gets a new port) is not a change.
"""

import hashlib
import importlib.metadata
import json
import os
import platform
from typing import Any

from absl import logging
import jax
import ml_collections

from gimp_jax import atomic
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.errors import DataError

FILENAME = "provenance.json"
FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20
# `parallel` fields that say where the processes of a job meet and which of them this is: a resumed
# job gets a new coordinator port (each process its own rank), and that is not a change of the run.
JOB_FIELDS = ("coordinator_address", "process_id", "local_device_ids")
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "h5py",
              "ml-collections", "tensorflow-datasets", "array-record")


def library_versions() -> dict[str, str]:
  """Python, the libraries that shape the numbers, and the JAX backend."""
  out = {"python": platform.python_version(), "platform": platform.platform(),
         "jax_backend": jax.default_backend(),
         "devices": sorted({d.device_kind for d in jax.devices()})}
  for name in _LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def fingerprint(path: str) -> dict[str, Any]:
  """Size and SHA-256 of a file (whole file, or size + mtime + first/last MiB when large)."""
  st = os.stat(path)
  h = hashlib.sha256()
  with open(path, "rb") as f:
    if st.st_size <= FULL_HASH_BYTES:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
      method = "sha256"
    else:
      h.update(f"{st.st_size}:{st.st_mtime_ns}:".encode())
      h.update(f.read(_EDGE_BYTES))
      f.seek(st.st_size - _EDGE_BYTES)
      h.update(f.read(_EDGE_BYTES))
      method = "sha256(size,mtime,head,tail)"
  return {"bytes": st.st_size, "method": method, "sha256": h.hexdigest()}


def _files_under(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  return sorted(os.path.join(root, n) for root, _, names in os.walk(path) for n in names)


def input_files(data: ml_collections.ConfigDict, cohort: cohort_lib.Cohort | None) -> list[str]:
  """Every file a run of the `data` config block reads: labels, expression, manifest and the kept
  patients' slides."""
  if data.get("source", "h5") == "tfds":
    return _files_under(data.tfds_dir)
  files = [data.labels, *_files_under(data.expression)]
  if data.get("manifest"):
    files.append(data.manifest)
  if cohort is not None:
    files += [p for patient in cohort.patients for p in patient.slide_paths]
  return files


def build_record(config: ml_collections.ConfigDict,
                 cohort: cohort_lib.Cohort | None) -> dict[str, Any]:
  """The provenance record of a run on `cohort` (the loaded, validated cohort)."""
  record = {"seed": int(config.seed), "config": json.loads(config.to_json_best_effort()),
            "versions": library_versions(),
            "inputs": {os.path.abspath(p): fingerprint(p)
                       for p in input_files(config.data, cohort)}}
  if cohort is not None:
    record["cohort"] = {"class_names": list(cohort.class_names),
                        "feature_dim": int(cohort.feature_dim), "num_genes": int(cohort.num_genes),
                        "patients": len(cohort.patients),
                        "splits": {k: int(v.size) for k, v in cohort.splits.items()}}
  return record


def _changes(old: dict, new: dict) -> list[str]:
  """Human-readable differences between two records (inputs, config, versions)."""
  out = []
  for path in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
    a, b = old.get("inputs", {}).get(path), new["inputs"].get(path)
    if a is None or b is None:
      out.append(f"{path}: {'added' if a is None else 'no longer read'}")
    elif a.get("sha256") != b["sha256"]:
      out.append(f"{path}: content changed")
  for key in ("seed", "config", "versions"):
    a, b = old.get(key), new[key]
    if key == "config" and isinstance(a, dict):  # a resumed job's new port is no change
      a, b = [{**c, "parallel": {k: v for k, v in c.get("parallel", {}).items()
                                 if k not in JOB_FIELDS}} for c in (a, b)]
    if a != b:
      out.append(f"{key} changed")
  return out


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON through a temporary file and a rename (`gimp_jax.atomic`: a kill or a full disk
  never leaves half a file; a path that is not a regular file is refused with DataError)."""
  atomic.write(path, lambda f: json.dump(obj, f, indent=2, default=float))


def record(workdir: str, config: ml_collections.ConfigDict,
           cohort: cohort_lib.Cohort | None) -> dict[str, Any]:
  """Writes `workdir/provenance.json`; a differing earlier record is kept and the change logged."""
  new = build_record(config, cohort)
  path = os.path.join(workdir, FILENAME)
  old = None
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      logging.warning("%s: unreadable (%s); writing a new record", path, e)
  if isinstance(old, dict):
    changes = _changes(old, new)
    if changes:
      k = 1
      while os.path.exists(os.path.join(workdir, f"provenance.previous-{k}.json")):
        k += 1
      os.replace(path, os.path.join(workdir, f"provenance.previous-{k}.json"))
      logging.warning("%s: this run differs from the one that started the workdir (kept as "
                      "provenance.previous-%d.json):\n%s", path, k, "\n".join(changes))
  write_json_atomic(path, new)
  return new


def load(workdir: str) -> dict[str, Any] | None:
  """The record of a workdir, or None when it has none; DataError when it is unreadable."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: unreadable provenance record ({e})") from e
  if not isinstance(out, dict):
    raise DataError(f"{path}: not a provenance record")
  return out
