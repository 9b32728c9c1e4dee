"""How the benchmark measures and reports: timing, memory, FLOPs, device peaks, Markdown.

- Timing: repeats of the competing implementations are interleaved (A B C, C B A, A B C, ...) so
  that a machine whose load drifts (other jobs on a shared CPU) penalises all of them alike; both
  the wall time and the process CPU time of each call are recorded (the CPU time is less
  sensitive to other processes stealing cores).
- Memory: the device's peak counters (GPU) or the growth of the peak resident set (CPU).
- Cost: model FLOPs counted from a jaxpr (every dot_general and convolution, loop bodies
  multiplied by their trip count; XLA's `compiled.cost_analysis()` counts a while loop's body
  once, so it undercounts the 6 pseudo-inverse iterations; both numbers are reported), XLA's
  `cost_analysis()` bytes and `memory_analysis()` sizes, the device's peak FLOP/s and bandwidth
  (a table of datasheet numbers, overridable by flags; CPU values are rough) and the roofline.
- Report: the Markdown tables of the results and the numbers derived from them.
"""

import ctypes
import dataclasses
import math
import os
import platform
import time
from typing import Callable

import jax
import jax.extend.core as jex
import numpy as np

GIB = 2.0 ** 30
OURS = "gimp_jax"


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


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo, as `lscpu` prints it), or the machine type."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                  platform.machine())
  except OSError:
    return platform.machine()


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


# ----------------------------------------------------------------------------- cost


def matmul_flops(jaxpr) -> float:
  """2 * M * N * K summed over every dot_general / conv in `jaxpr` (a Jaxpr or ClosedJaxpr).

  scan bodies count `length` times; while bodies once (their trip count is not static).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[i] for i in contract)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      dn = eqn.params["dimension_numbers"]
      spatial = math.prod(rhs[i] for i in dn.rhs_spec[2:])
      in_per_group = rhs[dn.rhs_spec[1]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * spatial * in_per_group
    times = eqn.params.get("length", 1) if name == "scan" else 1
    for sub in jex.jaxprs_in_params(eqn.params):
      total += times * matmul_flops(sub)
  return total


def model_flops(fn, *args) -> float:
  """Matmul FLOPs of one call `fn(*args)` (traced, not run)."""
  return matmul_flops(jax.make_jaxpr(fn)(*args))


def xla_costs(compiled) -> dict:
  """FLOPs, bytes accessed and memory sizes XLA reports for a compiled computation.

  `memory_bytes` = arguments + outputs + temporaries - donated (aliased) bytes: what the call
  needs on the device while it runs, from XLA's buffer assignment (no run needed).
  """
  out = {}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost:
    out["xla_flops"] = float(cost.get("flops", 0.0))
    out["xla_bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  mem = compiled.memory_analysis()
  if mem is not None:
    out["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
    out["xla_argument_bytes"] = int(mem.argument_size_in_bytes)
    out["xla_output_bytes"] = int(mem.output_size_in_bytes)
    out["xla_memory_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                  + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  return out


@dataclasses.dataclass(frozen=True)
class Peaks:
  """Peak dense FLOP/s per compute dtype and memory bandwidth of one device."""
  name: str
  tflops: dict
  gbytes_per_s: float
  approximate: bool


# Datasheet numbers (dense, no sparsity). float32 is plain FP32 (the benchmark runs float32
# matmuls at full precision by default; see --matmul_precision).
_GPU_PEAKS = (
    ("H200", {"float32": 67.0, "bfloat16": 989.0}, 4800.0),
    ("H100", {"float32": 67.0, "bfloat16": 989.0}, 3350.0),
    ("A100", {"float32": 19.5, "bfloat16": 312.0}, 2039.0),
    ("L4", {"float32": 30.3, "bfloat16": 121.0}, 300.0),
)


def device_peaks(peak_tflops: float = 0.0, peak_gbps: float = 0.0) -> Peaks:
  """Peaks of jax's first device; explicit `peak_tflops` / `peak_gbps` (> 0) override.

  CPU: cores x 32 FLOP/cycle (two 256-bit FMA pipes, float32) x 3 GHz, and 20 GB/s: rough, as
  the clock, the vector units and the memory channels of a shared virtual machine are unknown.
  bfloat16 gets the float32 number on CPU (AVX2 has no bfloat16 arithmetic).
  """
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  tflops, gbps, approximate = None, None, True
  if dev.platform == "gpu":
    for key, t, bw in _GPU_PEAKS:
      if key in kind:
        tflops, gbps, approximate = dict(t), bw, False
        break
  if tflops is None:
    cores = os.cpu_count() or 1
    f32 = cores * 32 * 3.0e9 / 1e12 if dev.platform == "cpu" else 1.0
    tflops, gbps = {"float32": f32, "bfloat16": f32}, 20.0
  if peak_tflops > 0:
    tflops, approximate = {k: peak_tflops for k in tflops}, False
  if peak_gbps > 0:
    gbps = peak_gbps
  return Peaks(name=kind, tflops=tflops, gbytes_per_s=gbps, approximate=approximate)


def roofline_seconds(flops: float, bytes_accessed: float, peaks: Peaks, dtype: str) -> float:
  """The least time the FLOPs and the bytes allow: max(FLOPs / peak, bytes / bandwidth)."""
  return max(flops / (peaks.tflops[dtype] * 1e12), bytes_accessed / (peaks.gbytes_per_s * 1e9))


# ----------------------------------------------------------------------------- report


def ratios(rows: list[dict]) -> dict:
  """{"<ours> / <theirs>": {"wall": median ratio, "cpu": median ratio}} for every gimp_jax row
  (the CLI's default and its options) against every other implementation; < 1 = ours faster."""
  ours = [r for r in rows if r["impl"].startswith(OURS)]
  out = {}
  for o in ours:
    for r in rows:
      if not r["impl"].startswith(OURS):
        out[f"{o['impl']} / {r['impl']}"] = {
            "wall": o["wall_s"]["median"] / r["wall_s"]["median"],
            "cpu": o["cpu_s"]["median"] / r["cpu_s"]["median"]}
  return out


def _bytes(row: dict) -> str:
  if "xla_memory_bytes" in row:
    text = f"{row['xla_memory_bytes'] / GIB:.2f} (XLA)"
    if "peak_bytes" in row:
      text += f"; {row['peak_bytes'] / GIB:.2f} dev"
    elif "peak_increase_bytes" in row:
      text += f"; {row['peak_increase_bytes'] / GIB:.2f} RSS"
    return text
  if "peak_bytes" in row:
    return f"{row['peak_bytes'] / GIB:.2f}"
  if "peak_increase_bytes" in row:
    return f"{row['peak_increase_bytes'] / GIB:.2f} RSS"
  return ""


def workload_table(workloads: list[dict]) -> str:
  """One row per (workload, dtype, implementation)."""
  lines = ["| workload | shapes | dtype | impl | wall s median [p25, p75] | CPU s | start-up s "
           "| memory GiB | model TFLOP | TFLOP/s | % peak | ours / this (wall, CPU), per gimp_jax row |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for w in workloads:
    shapes = ", ".join(f"{k}={v}" for k, v in w["shapes"].items())
    for r in w["rows"]:
      wall, cpu = r["wall_s"], r["cpu_s"]
      ratio_text = "; ".join(
          f"{pair.split(' / ')[0]}: {v['wall']:.2f}, {v['cpu']:.2f}"
          for pair, v in w["ratios"].items() if pair.endswith(f" / {r['impl']}"))
      tflops = r.get("achieved_tflops")
      frac = r.get("fraction_of_peak")
      lines.append(
          f"| {w['workload']} | {shapes} | {w['dtype']} | {r['impl']} | "
          f"{wall['median']:.3f} [{wall['p25']:.3f}, {wall['p75']:.3f}] | {cpu['median']:.3f} | "
          f"{r.get('startup_s', 0.0):.1f} | {_bytes(r)} | {w['model_flops'] / 1e12:.3f} | "
          f"{'' if tflops is None else f'{tflops:.3f}'} | "
          f"{'' if frac is None else f'{100 * frac:.1f}'} | {ratio_text} |")
  return "\n".join(lines)


def scaling_table(scaling: dict) -> str:
  lines = ["| dtype | patches | XLA total GiB | XLA temp GiB | arguments GiB | run s | "
           "measured peak GiB |", "|---|---|---|---|---|---|---|"]
  for p in scaling["points"]:
    measured = p.get("peak_bytes", p.get("peak_increase_bytes"))
    lines.append(
        f"| {p['dtype']} | {p['patches']:,} | {p['xla_memory_bytes'] / GIB:.3f} | "
        f"{p['xla_temp_bytes'] / GIB:.3f} | {p['xla_argument_bytes'] / GIB:.3f} | "
        f"{p.get('run_wall_s', float('nan')):.2f} | "
        f"{'' if measured is None else f'{measured / GIB:.3f}'} |")
  lines.append("")
  for dtype, fit in scaling["linear_fit"].items():
    lines.append(f"- {dtype}: {fit['bytes_per_patch'] / 1024:.1f} KiB per patch + "
                 f"{fit['intercept_bytes'] / 2**20:.0f} MiB, R^2 = {fit['r2']:.6f}, largest "
                 f"relative residual {100 * fit['max_relative_residual']:.2f}%")
  return "\n".join(lines)


def loading_table(loading: dict) -> str:
  lines = [f"Cohort: {loading['patients']} slides x {loading['patches_per_slide']:,} patches "
           f"({loading['files_bytes'] / 2**20:.0f} MiB of .h5), prefetch {loading['prefetch']}.",
           "",
           "| batches | loader alone patches/s | with prefetch patches/s | step consumes "
           "patches/s | consumer wait per batch s | stall fraction |",
           "|---|---|---|---|---|---|"]
  for name in ("pretrain_windows", "whole_bags"):
    m = loading[name]
    lines.append(f"| {name} | {m['sync_patches_per_s']:,.0f} | "
                 f"{m['prefetch_patches_per_s']:,.0f} | "
                 f"{m.get('step_consumes_patches_per_s', float('nan')):,.0f} | "
                 f"{m['wait_s_per_batch']:.3f} | {m['stall_fraction']:.3f} |")
  return "\n".join(lines)


def _ours_median(results: dict, workload: str) -> float | None:
  for w in results["workloads"]:
    if w["workload"] == workload and w["dtype"] == "float32":
      for r in w["rows"]:
        if r["impl"] == OURS:
          return r["wall_s"]["median"]
  return None


def consumer_seconds(results: dict, sizes) -> tuple[float, float]:
  """Seconds a pre-training step and a whole-bag step of the loading cohort's slide size take
  (gimp_jax, float32; the whole-bag step scaled linearly from the fine-tuning workload). 1 s when
  the workload was not run."""
  pre = _ours_median(results, "pretrain") or 1.0
  fine = _ours_median(results, "finetune")
  fine = fine * sizes.loading_patches / sizes.finetune_patches if fine else 1.0
  return pre, fine


def markdown(results: dict) -> str:
  env = results["environment"]
  out = [f"# gimp_jax benchmark ({results['size']} sizes)", "",
         f"Device: {env['device']} ({env['platform']}, {env['cpu_count']} CPU cores, torch "
         f"threads {env['torch_threads']}); jax {env['jax']}, torch {env['torch']}; float32 "
         f"matmul precision {env['matmul_precision']}. Peaks: {env['peak_tflops']} TFLOP/s, "
         f"{env['peak_gbps']} GB/s{' (rough estimates)' if env['peaks_approximate'] else ''}. "
         f"Load average at start {env['loadavg_start'][0]:.1f}, at end "
         f"{env.get('loadavg_end', [float('nan')])[0]:.1f}. {results['repeats']} interleaved "
         f"repeats; bench took {results.get('bench_wall_s', 0) / 60:.1f} min.", "",
         f"- uptime at start: `{env.get('uptime_start', '')}`",
         f"- uptime at end: `{env.get('uptime_end', '')}`",
         f"- versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}; "
         f"python {env['python']}; CPU {env.get('cpu_model', '')}; XLA_FLAGS "
         f"`{env.get('xla_flags', '')}`", "",
         f"Sizes: {results['sizes']}", ""]
  out += ["Wall = median wall-clock seconds of one call [quartiles]; CPU = median process CPU "
          "seconds (less sensitive to other jobs, but counts spinning worker threads); start-up = "
          "compilation + first call (gimp_jax), first call (PyTorch, torch.compile included); "
          "memory = XLA buffer assignment (arguments + outputs + temporaries - donated) for "
          "gimp_jax, and the measured peak (device counter on GPU, peak-RSS growth of one call on "
          "CPU); model FLOPs counted from the jaxpr (matmuls, loops times trip count). "
          "ours / this < 1: gimp_jax faster.", ""]
  if "parity" in results:
    out += [f"Parity (eval-mode losses, same weights, gimp_jax vs torch): {results['parity']}",
            ""]
  if results["workloads"]:
    out += ["## Step and forward times", "", workload_table(results["workloads"]), ""]
    skipped = sorted({f"{w['workload']} {w['dtype']} {impl}: {why}"
                      for w in results["workloads"] for impl, why in w.get("skipped", {}).items()})
    out += [f"- not run: {line}" for line in skipped]
    for w in results["workloads"]:
      if "roofline_s" in w:
        out.append(f"- {w['workload']} {w['dtype']}: roofline {w['roofline_s']:.4f} s; gimp_jax "
                   f"at {w['gimp_jax_over_roofline']:.1f}x of it")
    out.append("")
  if "memory_scaling" in results:
    out += ["## Whole-slide forward memory against patches", "",
            scaling_table(results["memory_scaling"]), ""]
  if "loading" in results:
    out += ["## Data loading", "", loading_table(results["loading"]), ""]
  return "\n".join(out)
