"""What a computation costs and what the device allows: FLOPs, bytes, memory, peaks, roofline.

- `matmul_flops`: model FLOPs counted from a jaxpr (every dot_general and convolution, loop bodies
  multiplied by their trip count). XLA's `compiled.cost_analysis()` counts a while loop's body once,
  so it undercounts the 6 pseudo-inverse iterations; both numbers are reported.
- `xla_costs`: `cost_analysis()` FLOPs and bytes and `memory_analysis()` sizes of a compiled call.
- `device_peaks`: peak FLOP/s and memory bandwidth of the local device (a table of datasheet
  numbers, overridable by flags; CPU values are rough estimates).
"""

import dataclasses
import math
import os

import jax
import jax.extend.core as jex


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
# matmuls at full precision by default; see bench.py --matmul_precision).
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
