"""Timing and memory measurement for bench.py: interleaved repeats, robust summaries, peaks.

Repeats of the competing implementations are interleaved (A B C, C B A, A B C, ...) so that a
machine whose load drifts (other jobs on a shared CPU) penalises all of them alike; both the wall
time and the process CPU time of each call are recorded (the CPU time is less sensitive to other
processes stealing cores).
"""

import ctypes
import dataclasses
import time
from typing import Callable

import jax
import numpy as np



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


def repeats_within(first_call_s: float, repeats: int, budget_s: float) -> int:
  """`repeats`, cut so that one implementation's repeats take about `budget_s` (at least 2)."""
  if first_call_s * repeats <= budget_s:
    return repeats
  return max(2, int(budget_s // first_call_s))


def interleaved(runners: list[Runner], repeats: int, budget_s: float = float("inf")
                ) -> dict[str, dict[str, list[float]]]:
  """Times every runner up to `repeats` times, alternating the order each round; a runner whose
  first call took long gets fewer repeats (`repeats_within`, at least 2).

  Returns:
    {runner name: {"wall_s": [n], "cpu_s": [n]}}.
  """
  out = {r.name: {"wall_s": [], "cpu_s": []} for r in runners}
  wanted = {r.name: repeats_within(r.info.get("first_call_s", 0.0), repeats, budget_s)
            for r in runners}
  for i in range(repeats):
    for r in (runners if i % 2 == 0 else runners[::-1]):
      if i >= wanted[r.name]:
        continue
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


def _status_bytes(field: str) -> int:
  """A `VmRSS` / `VmHWM` line of /proc/self/status, in bytes."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def peak_rss_increase(fn: Callable[[], object]) -> int | None:
  """Growth of the kernel's peak resident set (VmHWM) over the RSS before one call of `fn`.

  Free heap pages are first handed back to the OS (malloc_trim) so that the call's allocations
  must fault in fresh pages, and the peak counter is reset (/proc/self/clear_refs); memory a
  framework keeps cached across calls is not counted. None when /proc is unavailable.
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    base = _status_bytes("VmRSS")
  except OSError:
    fn()
    return None
  fn()
  return _status_bytes("VmHWM") - base


def peak_memory(runner: Runner) -> dict:
  """Peak memory of one more call of the runner.

  GPU + torch: `torch.cuda.max_memory_allocated` after a reset (exact for that call). GPU + jax:
  `peak_bytes_in_use` of the device (a high-water mark since process start; the XLA buffer
  assignment in `info` is the per-call number). CPU: `peak_rss_increase`.
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
          "memory_method": "peak RSS (VmHWM) increase over one call"}
