"""Runs the benchmark: `python -m experiments.bench --size cpu` (see the package docstring)."""

import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
import time

# Both frameworks share the accelerator: JAX must not grab 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.bench import measure
from experiments.bench import torch_reference as tr
from experiments.bench import workloads as wl
from gimp_jax import methods

WORKLOADS = ("pretrain", "slide_forward", "finetune", "memory_scaling", "loading")
FRAMEWORKS = ("gimp_jax", "torch_eager", "torch_compile")

_SIZE = flags.DEFINE_enum("size", "cpu", list(wl.SIZES), "Workload sizes (printed at start).")
_JSON = flags.DEFINE_string("json", None, "Write the results here (default: the size's; cpu: "
                            "experiments/results/bench_cpu.json and .md).")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Markdown table path (default: JSON path .md).")
_WORKLOADS = flags.DEFINE_list("workloads", [], f"Subset of {WORKLOADS} (default: the size's).")
_DTYPES = flags.DEFINE_list("dtypes", [], "Compute dtypes (default: the size's).")
_FRAMEWORKS = flags.DEFINE_list("frameworks", [], f"Subset of {FRAMEWORKS} (default: the size's).")
# What `--size` runs unless the flags above say otherwise. cpu: the CLI's three float32 workloads
# against PyTorch eager and the loader, in ~10 minutes on 2 cores (torch.compile and bfloat16 on
# CPU would take longer than everything else together; see --torch_bf16_on_cpu).
DEFAULTS = {
    "cpu": {"workloads": ["pretrain", "slide_forward", "finetune", "loading"],
            "dtypes": ["float32"], "frameworks": ["gimp_jax", "torch_eager"],
            "json": "experiments/results/bench_cpu.json"},
    "paper": {"workloads": list(WORKLOADS), "dtypes": ["float32", "bfloat16"],
              "frameworks": list(FRAMEWORKS), "json": ""},
    "smoke": {"workloads": list(WORKLOADS), "dtypes": ["float32"],
              "frameworks": ["gimp_jax", "torch_eager"], "json": ""},
}
_REPEATS = flags.DEFINE_integer("repeats", 0, "Timed repeats (0 = the size's default).")
_COMPILE_MODE = flags.DEFINE_string("compile_mode", "default", "torch.compile mode.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s (0 = table).")
_PEAK_GBPS = flags.DEFINE_float("peak_gbps", 0.0, "Device memory bandwidth GB/s (0 = table).")
_PRECISION = flags.DEFINE_enum(
    "matmul_precision", "highest", ["highest", "default"],
    "float32 matmuls: 'highest' = true float32 in both frameworks (JAX precision HIGHEST, torch "
    "allow_tf32=False); 'default' = TF32 on NVIDIA GPUs in both.")
_SCALING_RUN_MAX = flags.DEFINE_integer(
    "scaling_run_max", -1, "Also run the forward for slides up to this size (-1 = size default).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "", "jax.profiler trace of one pretrain step.")
_BUDGET = flags.DEFINE_float(
    "time_budget_s", 300.0, "Seconds of timed repeats per implementation and workload: a slow "
    "one (e.g. PyTorch bfloat16 on a CPU without bfloat16 units) gets fewer (at least 2).")
_TORCH_BF16_CPU = flags.DEFINE_bool(
    "torch_bf16_on_cpu", False, "Also time PyTorch in bfloat16 on a CPU. Off by default: on a CPU "
    "without bfloat16 units its autocast runs 10-25x slower than its float32 (smoke sizes: "
    "fine-tuning step 242 s vs 11.8 s), so a whole-slide step would take about half an hour.")
_CHECK = flags.DEFINE_bool("check", True, "First check that both models give the same losses.")


def _setup() -> None:
  jax.config.update("jax_default_matmul_precision", _PRECISION.value)
  torch.backends.cuda.matmul.allow_tf32 = _PRECISION.value == "default"
  torch.backends.cudnn.allow_tf32 = _PRECISION.value == "default"
  torch.manual_seed(0)


def _uptime() -> str:
  """The `uptime` line (load averages over 1, 5 and 15 minutes)."""
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def environment(peaks: measure.Peaks) -> dict:
  dev = jax.devices()[0]
  versions = {name: importlib.metadata.version(name) for name in
              ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "nystrom-attention", "grain")}
  return {"device": peaks.name, "platform": dev.platform, "jax": jax.__version__,
          "torch": torch.__version__, "versions": versions, "cpu_count": os.cpu_count(),
          "cpu_model": measure.cpu_model(),
          "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "peak_tflops": peaks.tflops, "peak_gbps": peaks.gbytes_per_s,
          "peaks_approximate": peaks.approximate, "matmul_precision": _PRECISION.value,
          "loadavg_start": os.getloadavg(), "uptime_start": _uptime()}


def check_parity() -> dict:
  """Eval-mode losses of both models with the same weights on a small pre-training batch (4
  windows of 800 patches, 600 genes): they must agree to float32 rounding, or the comparison is
  meaningless."""
  cfg = wl.model_config("float32")
  cfg.model.num_fragments = 24
  cfg.pretrain.window = 800
  with tempfile.TemporaryDirectory(prefix="gimp_bench_") as tmp:
    batch = wl.pretrain_batch(wl.write_cohort(tmp, [cfg.pretrain.window] * 4, 600), cfg)
  model, flat = wl.model_and_params(cfg, 600)
  model.eval()
  tmodel = wl.torch_model(cfg, 600, flat).eval()
  jb, tb = {k: jnp.asarray(v) for k, v in batch.items()}, tr.to_torch(batch)
  p = cfg.pretrain
  pretrain_loss = jax.jit(lambda m, b: methods.pretrain_loss(cfg)(m, b)[0])
  finetune_loss = jax.jit(lambda m, b: methods.finetune_loss(cfg)(m, b)[0])
  out = {}
  with torch.no_grad():
    out["pretrain_loss"] = (float(pretrain_loss(model, jb)),
                            float(tr.pretrain_loss(tmodel, tb, p)))
    out["finetune_loss"] = (float(finetune_loss(model, jb)), float(tr.finetune_loss(tmodel, tb)))
  out["max_abs_diff"] = max(abs(a - b) for a, b in out.values())
  if out["max_abs_diff"] > 1e-3:
    raise AssertionError(f"gimp_jax and the PyTorch reference disagree: {out}")
  return out


def _row(name: str, runner: measure.Runner, times: dict, memory: dict, flops: float,
         peaks: measure.Peaks, dtype: str) -> dict:
  wall = measure.summary(times["wall_s"])
  row = {"impl": name, "wall_s": wall, "cpu_s": measure.summary(times["cpu_s"]),
         "samples_wall_s": times["wall_s"], **memory,
         **{k: v for k, v in runner.info.items()}}
  if flops:
    row["achieved_tflops"] = flops / wall["median"] / 1e12
    row["fraction_of_peak"] = row["achieved_tflops"] / peaks.tflops[dtype]
  return row


def option(name: str):
  """A flag's value, or the size's default (`DEFAULTS`) when the flag is not given."""
  value = {"workloads": _WORKLOADS, "dtypes": _DTYPES, "frameworks": _FRAMEWORKS,
           "json": _JSON}[name].value
  return DEFAULTS[_SIZE.value][name] if value in (None, []) else value


def run_workload(name: str, cohort, sizes: wl.Sizes, dtype: str, repeats: int,
                 peaks: measure.Peaks) -> dict:
  """Builds, warms up, times (interleaved) and measures the memory of every implementation."""
  start = time.perf_counter()
  frameworks, skipped = list(option("frameworks")), {}
  if dtype == "bfloat16" and jax.devices()[0].platform == "cpu" and not _TORCH_BF16_CPU.value:
    skipped = {f: "PyTorch bfloat16 on CPU (see --torch_bf16_on_cpu)" for f in frameworks
               if f.startswith("torch")}
    frameworks = [f for f in frameworks if f not in skipped]
  runners, shapes = wl.BUILDERS[name](cohort, sizes, dtype, frameworks, _COMPILE_MODE.value)
  logging.info("%s %s %s: built and compiled in %.0f s", name, dtype, shapes,
               time.perf_counter() - start)
  times = measure.interleaved(runners, repeats, _BUDGET.value)
  if name == "pretrain" and _PROFILE_DIR.value and runners[0].framework == "jax":
    with jax.profiler.trace(os.path.join(_PROFILE_DIR.value, f"pretrain_{dtype}")):
      runners[0].run()
  memory = {r.name: measure.peak_memory(r) if r.info["first_call_s"] < _BUDGET.value / 2
            else {"memory_method": "skipped (slow)"} for r in runners}
  jax_info = next((r.info for r in runners if r.framework == "jax"), {})
  flops = jax_info.get("model_flops", 0.0)
  rows = [_row(r.name, r, times[r.name], memory[r.name], flops, peaks, dtype) for r in runners]
  result = {"workload": name, "dtype": dtype, "shapes": shapes, "model_flops": flops,
            "rows": rows, "ratios": measure.ratios(rows), "skipped": skipped}
  ours = next((r for r in rows if r["impl"] == "gimp_jax"), None)
  if ours and "xla_bytes_accessed" in ours:
    bound = measure.roofline_seconds(flops, ours["xla_bytes_accessed"], peaks, dtype)
    result["roofline_s"] = bound
    result["gimp_jax_over_roofline"] = ours["wall_s"]["median"] / bound
  del runners
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()  # hand PyTorch's cached blocks back before the next workload
  return result


def memory_scaling(sizes: wl.Sizes, dtypes: list[str], run_max: int) -> dict:
  """XLA buffer sizes of the whole-slide forward against N; real runs where affordable."""
  points = []
  for dtype in dtypes:
    for n in sizes.scaling_patches:
      point = {"dtype": dtype, "patches": n, **wl.forward_memory(n, dtype)}
      if n <= run_max:
        model, _ = wl.model_and_params(wl.model_config(dtype), 8)
        runner = wl.jax_slide_forward_runner(model, wl.random_patches(n))
        point["run_wall_s"] = measure.timed(runner.run)[0]
        point.update(measure.peak_memory(runner))
        del runner, model
        gc.collect()
      logging.info("memory scaling %s", point)
      points.append(point)
  fits = {}
  for dtype in dtypes:
    pts = [p for p in points if p["dtype"] == dtype]
    n = np.array([p["patches"] for p in pts], np.float64)
    y = np.array([p["xla_memory_bytes"] for p in pts], np.float64)
    slope, intercept = np.polyfit(n, y, 1)
    resid = y - (slope * n + intercept)
    fits[dtype] = {"bytes_per_patch": slope, "intercept_bytes": intercept,
                   "r2": 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()),
                   "max_relative_residual": float(np.max(np.abs(resid) / y))}
  return {"points": points, "linear_fit": fits}


def main(argv):
  del argv
  _setup()
  sizes = wl.SIZES[_SIZE.value]
  repeats = _REPEATS.value or sizes.repeats
  run_max = sizes.scaling_run_max if _SCALING_RUN_MAX.value < 0 else _SCALING_RUN_MAX.value
  peaks = measure.device_peaks(_PEAK_TFLOPS.value, _PEAK_GBPS.value)
  results = {"size": _SIZE.value, "sizes": dataclasses.asdict(sizes), "repeats": repeats,
             "environment": environment(peaks), "workloads": []}
  print(f"device: {peaks.name}; sizes ({_SIZE.value}): {dataclasses.asdict(sizes)}", flush=True)
  start = time.perf_counter()
  if _CHECK.value:
    results["parity"] = check_parity()
    print(f"parity (gimp_jax, torch): {results['parity']}", flush=True)
  workloads, dtypes, json_path = option("workloads"), option("dtypes"), option("json")
  timed = [w for w in WORKLOADS if w in workloads and w in wl.BUILDERS]
  if timed:
    with tempfile.TemporaryDirectory(prefix="gimp_bench_") as tmp:
      cohort = wl.workload_cohort(tmp, sizes)  # CLAM files the timed batches are read from
      for name in timed:
        for dtype in dtypes:
          result = run_workload(name, cohort, sizes, dtype, repeats, peaks)
          results["workloads"].append(result)
          print(measure.workload_table([result]), flush=True)
  if "memory_scaling" in workloads:
    results["memory_scaling"] = memory_scaling(sizes, dtypes, run_max)
    print(measure.scaling_table(results["memory_scaling"]), flush=True)
  if "loading" in workloads:
    results["loading"] = wl.loading(
        sizes.loading_patients, sizes.loading_patches, sizes.pretrain_batch, sizes.window,
        *measure.consumer_seconds(results, sizes))
    print(measure.loading_table(results["loading"]), flush=True)
  results["bench_wall_s"] = time.perf_counter() - start
  results["environment"]["loadavg_end"] = os.getloadavg()
  results["environment"]["uptime_end"] = _uptime()
  markdown = measure.markdown(results)
  print(markdown)
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1, default=float)
    md_path = _MARKDOWN.value or os.path.splitext(json_path)[0] + ".md"
    with open(md_path, "w", encoding="utf-8") as f:
      f.write(markdown)


if __name__ == "__main__":
  app.run(main)
