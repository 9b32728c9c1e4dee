"""One run per workdir, and the config that made it.

`lock(workdir)`: a run holds `workdir/run.lock` (JSON: pid, host, process start time, command)
from start to exit. A second run on the same workdir is refused with `WorkdirBusy` naming the
holder. A lock left by a run that died without cleaning up (SIGKILL, power cut) is stale when its
host is this host and its process is gone (or the PID now belongs to a process started at another
time); it is replaced with a warning. A lock from another host cannot be checked from here: the
message says which host and process hold it, and to delete the file if that run is dead.
Taking and replacing the lock happen under an `flock` on `run.lock.guard`, so two runs started at
the same instant cannot both win. A job of several processes (`jax.distributed`) is one run: its
process 0 holds the lock, with a token that the other processes check.

`check_config(workdir, config, allow_change)`: `workdir/config.json` records the config that made
the workdir's checkpoints. A rerun with a different config is refused (DataError listing the
differing fields) unless `allow_change`; then `record_config` keeps the old record as
`config.previous-<k>.json`, and `change_history` lists the changes for results.json.

`stored_normalizer` / `save_normalizer`: the gene list the run's models were trained on
(`normalizer.npz`), fitted on the first run's training split and reused on resume and by `predict`.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from gimp_jax import provenance
from gimp_jax.data import genes as genes_lib
from gimp_jax.errors import DataError

LOCK = "run.lock"
CONFIG = "config.json"
NORMALIZER = "normalizer.npz"
# Fields that change no number of a finished stage: which stages to run (each stage keeps its own
# checkpoints), how many batches are read ahead, what the report draws, and where the processes
# of a job meet and which of them this is (a resumed job gets a new port; each process its rank).
NEUTRAL_FIELDS = ("stages", "data.prefetch", "report.",
                  *(f"parallel.{name}" for name in provenance.JOB_FIELDS))
# Fields added since earlier workdirs were made -> the value that reproduces what those runs did:
# absent from a recorded config, they count as holding it.
ADDED_FIELDS = {"model.head_fusion": "concat"}


class WorkdirBusy(DataError):
  """Another run holds the workdir."""


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (/proc), or None where unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict[str, Any]) -> bool:
  """Whether the holder of a lock written on this host still runs."""
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  started = holder.get("start")
  return started is None or _start_time(pid) in (None, started)


def _describe(holder: dict[str, Any]) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
  return (f"process {holder.get('pid')} on host {holder.get('host')} since {since} "
          f"({holder.get('command', '?')})")


def _read(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
    return out if isinstance(out, dict) else {}
  except (OSError, ValueError):
    return {}  # unreadable: written by a process killed mid-write, so stale


def _take(path: str, me: dict[str, Any]) -> None:
  """Writes `me` into the lock at `path` unless a live run holds it (under the guard's flock)."""
  with open(path + ".guard", "a", encoding="utf-8") as guard:
    fcntl.flock(guard, fcntl.LOCK_EX)
    try:
      if os.path.exists(path):
        holder = _read(path)
        if holder.get("host") not in (None, me["host"]):
          raise WorkdirBusy(f"{path}: workdir in use by {_describe(holder)}; if that run is dead, "
                            "delete this file")
        if holder and _alive(holder):
          raise WorkdirBusy(f"{path}: workdir in use by {_describe(holder)}; wait for it to "
                            "finish or use another --workdir")
        logging.warning("%s: stale lock of %s (no longer running); taking it over.", path,
                        _describe(holder))
      tmp = f"{path}.tmp-{os.getpid()}"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(me, f)
      os.replace(tmp, path)
    finally:
      fcntl.flock(guard, fcntl.LOCK_UN)


def _job_lock(path: str, me: dict[str, Any]) -> None:
  """The lock of a job of several processes: one holder per job, process 0.

  Process 0 takes the lock with a random job token in it, then broadcasts (taken?, token) to the
  other processes, which check that the lock they read holds their job's token: the workdir is
  the same directory for every process (a shared file system) and no other run holds it.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  token = np.frombuffer(os.urandom(16), np.int32)
  taken, error = 1, None
  if jax.process_index() == 0:
    me["job"] = {"token": token.tolist(), "processes": jax.process_count()}
    try:
      _take(path, me)
    except (DataError, OSError) as e:  # told to the others, then raised
      taken, error = 0, e
  got = np.asarray(multihost_utils.broadcast_one_to_all(
      np.concatenate([[taken], token]).astype(np.int32)))
  if error is not None:
    raise error
  if not got[0]:
    raise WorkdirBusy(f"{path}: process 0 of this job could not take the workdir lock (its "
                      "error names the run that holds it)")
  if jax.process_index() != 0 and _read(path).get("job", {}).get("token") != got[1:].tolist():
    raise DataError(f"{path}: the lock does not hold this job's token (process 0 locked another "
                    f"directory): --workdir must name one directory on a file system shared by "
                    f"every process")


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[str]:
  """Holds `workdir/run.lock` for the duration of the block (created with the workdir).

  In a job of several processes (`jax.process_count() > 1`; every process calls this) the lock is
  the job's: process 0 holds it and the others check that it holds their job's token
  (`_job_lock`).

  Raises:
    WorkdirBusy: another live run holds it (the message names its process, host and command).
    DataError: the workdir cannot be created, or (several processes) is not shared.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise DataError(f"{workdir}: workdir: cannot be created ({e.strerror or e})") from e
  path = os.path.join(workdir, LOCK)
  me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
        "time": time.time(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300]}
  if jax.process_count() > 1:
    _job_lock(path, me)
  else:
    _take(path, me)
  try:
    yield path
  finally:
    if _read(path).get("pid") == me["pid"] and jax.process_index() == 0:
      os.remove(path)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'pretrain.window': 64, ...} of a nested JSON dict."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
  return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """'field: old -> new' for every field that differs (NEUTRAL_FIELDS left out; an ADDED_FIELDS
  field absent from `old` holds its earlier behaviour's value)."""
  a, b = _flat(old), _flat(new)
  a.update({k: v for k, v in ADDED_FIELDS.items() if k not in a and k in b})
  out = []
  for key in sorted(set(a) | set(b)):
    if key in NEUTRAL_FIELDS or key.startswith(tuple(f for f in NEUTRAL_FIELDS if f[-1] == ".")):
      continue
    if a.get(key, "<unset>") != b.get(key, "<unset>"):
      out.append(f"{key}: {json.dumps(a.get(key, '<unset>'))} -> "
                 f"{json.dumps(b.get(key, '<unset>'))}")
  return out


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _load(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: unreadable config record ({e}); move it away to start over") from e


def check_config(workdir: str, config: ml_collections.ConfigDict, allow_change: bool
                 ) -> list[str]:
  """Compares `config` with the one recorded in `workdir` (none recorded: a new workdir).

  Returns:
    The changes accepted (empty when the config is the recorded one).

  Raises:
    DataError: the config differs and `allow_change` is False (every differing field listed).
  """
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return []
  changes = config_changes(_load(path), as_json(config))
  if changes and not allow_change:
    raise DataError(
        f"{path}: the config differs from the one this workdir was made with ("
        + "; ".join(changes) + "). Use another --workdir, or pass --allow_config_change to go on "
        "in this one (finished stages are kept, not rerun; the others run with the new config)")
  if changes:
    logging.warning("%s: config changed: %s", path, "; ".join(changes))
  return changes


def _previous(workdir: str, k: int) -> str:
  return os.path.join(workdir, f"config.previous-{k}.json")


def record_config(workdir: str, config: ml_collections.ConfigDict, changes: list[str]) -> None:
  """Writes `workdir/config.json`; with `changes`, the old one is kept as config.previous-<k>."""
  path = os.path.join(workdir, CONFIG)
  if changes:
    k = 1
    while os.path.exists(_previous(workdir, k)):
      k += 1
    os.replace(path, _previous(workdir, k))
  provenance.write_json_atomic(path, as_json(config))


def change_history(workdir: str) -> list[dict[str, Any]]:
  """[{"config": "config.previous-<k>.json", "changes": [...]}]: each earlier config of the
  workdir and how the next one differed from it (the stages it finished kept its numbers)."""
  out, k = [], 1
  while os.path.exists(_previous(workdir, k)):
    after = _previous(workdir, k + 1)
    after = after if os.path.exists(after) else os.path.join(workdir, CONFIG)
    out.append({"config": os.path.basename(_previous(workdir, k)),
                "changes": config_changes(_load(_previous(workdir, k)), _load(after))})
    k += 1
  return out


def stored_normalizer(workdir: str | None, init_from: str = ""
                      ) -> tuple[genes_lib.GeneNormalizer | None, str | None]:
  """The gene list a run must use and where it is stored, or (None, None) to fit one on train.

  The workdir's own (a resumed run) comes first, then that of `init_from` (`config.init_from`: a
  model trained in another workdir).

  Raises:
    DataError: the file is unreadable.
  """
  for directory in (workdir, init_from):
    if directory:
      path = os.path.join(directory, NORMALIZER)
      if os.path.exists(path):
        return genes_lib.GeneNormalizer.load(path), path
  return None, None


def save_normalizer(normalizer: genes_lib.GeneNormalizer, workdir: str) -> None:
  """Stores the run's gene list once (temporary file + rename: a kill leaves no half file); in a
  job of several processes process 0 writes it."""
  path = os.path.join(workdir, NORMALIZER)
  if jax.process_index() == 0 and not os.path.exists(path):
    tmp = os.path.join(workdir, f"normalizer.tmp-{os.getpid()}.npz")
    try:
      normalizer.save(tmp)
      os.replace(tmp, path)
    finally:  # a full disk: no half temporary file left behind
      if os.path.exists(tmp):
        os.remove(tmp)
