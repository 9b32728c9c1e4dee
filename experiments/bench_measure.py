"""Timing and memory measurement for bench.py: interleaved repeats, robust summaries, peaks.

Repeats of the competing implementations are interleaved (A B C, C B A, A B C, ...) so that a
machine whose load drifts (other jobs on a shared CPU) penalises all of them alike; both the wall
time and the process CPU time of each call are recorded (the CPU time is less sensitive to other
processes stealing cores).
"""

import ctypes
import dataclasses
import threading
import time
from typing import Callable

import jax
import numpy as np

_PAGE = 4096
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@dataclasses.dataclass
class Runner:
  """One implementation of a workload.

  Attributes:
    name: "gimp_jax", "gimp_jax_bucketed", "torch_eager", "torch_compile", ...
    run: one call of the workload that returns only when the device is done.
    info: what is known without timing (compile seconds, FLOPs, XLA memory, ...).
    framework: "jax" or "torch" (decides how device memory is read).
  """
  name: str
  run: Callable[[], object]
  info: dict = dataclasses.field(default_factory=dict)
  framework: str = "jax"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of one blocking call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(runners: list[Runner], repeats: int) -> dict[str, dict[str, list[float]]]:
  """Times every runner `repeats` times, alternating the order each round.

  Returns:
    {runner name: {"wall_s": [repeats], "cpu_s": [repeats]}}.
  """
  out = {r.name: {"wall_s": [], "cpu_s": []} for r in runners}
  for i in range(repeats):
    for r in (runners if i % 2 == 0 else runners[::-1]):
      wall, cpu = timed(r.run)
      out[r.name]["wall_s"].append(wall)
      out[r.name]["cpu_s"].append(cpu)
  return out


def summary(values: list[float]) -> dict:
  """Median, quartiles, min, max and count."""
  v = np.asarray(values, np.float64)
  q25, med, q75 = np.percentile(v, [25, 50, 75])
  return {"median": float(med), "p25": float(q25), "p75": float(q75), "min": float(v.min()),
          "max": float(v.max()), "n": int(v.size)}


def _rss_bytes() -> int:
  with open("/proc/self/statm", "rb") as f:
    return int(f.read().split()[1]) * _PAGE


def release_freed_memory_to_os() -> None:
  """Makes glibc return freed blocks above 256 KiB to the OS at once (mallopt), so that the
  resident set follows the live allocations and a sampled RSS peak means something."""
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
    libc.mallopt(_M_TRIM_THRESHOLD, 0)
  except OSError:
    pass


def peak_rss_increase(fn: Callable[[], object], interval_s: float = 0.001) -> int:
  """Peak resident-set growth (bytes) over the RSS before one call of `fn`, sampled by a thread."""
  base = _rss_bytes()
  peak = [base]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_bytes())
      time.sleep(interval_s)
  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  try:
    fn()
  finally:
    done.set()
    thread.join()
  return max(peak[0], _rss_bytes()) - base


def peak_memory(runner: Runner) -> dict:
  """Peak memory of one more call of the runner.

  GPU + torch: `torch.cuda.max_memory_allocated` after a reset (exact for that call). GPU + jax:
  `peak_bytes_in_use` of the device (a high-water mark since process start; the XLA buffer
  assignment in `info` is the per-call number). CPU: sampled peak RSS increase (approximate).
  """
  platform = jax.devices()[0].platform
  if platform == "gpu" and runner.framework == "torch":
    import torch  # pylint: disable=import-outside-toplevel
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    runner.run()
    return {"peak_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_increase_bytes": int(torch.cuda.max_memory_allocated() - base),
            "memory_method": "torch.cuda.max_memory_allocated"}
  if platform != "cpu":
    runner.run()
    stats = jax.devices()[0].memory_stats() or {}
    return {"peak_bytes": int(stats.get("peak_bytes_in_use", 0)),
            "memory_method": "device peak_bytes_in_use since process start"}
  return {"peak_increase_bytes": peak_rss_increase(runner.run),
          "memory_method": "sampled peak RSS increase (approximate)"}
