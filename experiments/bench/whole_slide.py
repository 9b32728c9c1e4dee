"""The whole slide in the CLI's path: time and peak memory of the forward and of one fine-tuning
step at 10,000 / 50,000 / 148,569 patches (TCGA-NSCLC's largest slide), gimp_jax and PyTorch.

  python -m experiments.bench.whole_slide --json experiments/results/whole_slide_cpu_<model>.json

Each (patches, workload, framework) runs in its own process under `/usr/bin/time -v`, so its peak
resident set size (max RSS) is that of one workload alone; the slide is written once per size as
a CLAM `.h5` file by the parent and read by the child through `pipeline.bag_batches` (the CLI's
bucketing, `data.bucket_sizes` of configs/nsclc.py). gimp_jax runs `steps.make_eval_step` (what
`predict` runs) and `steps.make_train_step` with the config's fine-tuning loss and freezing (what
`loop.fit` runs), on the batch placed by `loop.to_device`; PyTorch (`torch_reference`, the same
initial weights) runs the bag at its own length. A child times the first call (compilation
included for gimp_jax) and `--repeats` more calls.

gimp_jax's memory is also given from XLA's buffer assignment (compiled, not run:
`measure.xla_costs`), for every size; a run whose peak, extrapolated linearly from the smaller
sizes of the same (workload, framework), would not fit in the host's available memory with a
margin is not started (the table says so): a shared host must not be pushed into the OOM killer.
The linear fit (bytes per patch, R^2) is over the sizes that ran.
"""

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.bench import measure
from experiments.bench import torch_reference as tr
from experiments.bench import workloads as wl
from gimp_jax import methods
from gimp_jax.data import pipeline
from gimp_jax.train import optim, steps
from gimp_jax.train.state import create_state

_PATCHES = flags.DEFINE_list("patches", ["10000", "50000", "148569"], "Slide sizes.")
_WORKLOADS = flags.DEFINE_list("workloads", ["slide_forward", "finetune"], "What to time.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["gimp_jax", "torch_eager"], "Implementations.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed calls after the first.")
_GENES = flags.DEFINE_integer("genes", 60480, "Genes of the expression vector (paper: 60,480).")
_MARGIN = flags.DEFINE_float("margin_gib", 3.0, "Memory left free: a run whose extrapolated peak "
                             "exceeds MemAvailable minus this is skipped.")
_JSON = flags.DEFINE_string("json", "", "Results JSON (and the table beside it, .md).")
_REUSE = flags.DEFINE_bool("reuse", False, "Keep the measured points of an existing --json and "
                           "run only the others (its load is kept beside this run's).")
# Child mode (one measurement): the slide's directory.
_CHILD = flags.DEFINE_string("child_dir", "", "Internal: measure one workload on this slide.")
_CHILD_WORKLOAD = flags.DEFINE_string("child_workload", "", "Internal.")
_CHILD_FRAMEWORK = flags.DEFINE_string("child_framework", "", "Internal.")
_CHILD_PATCHES = flags.DEFINE_integer("child_patches", 0, "Internal.")


def _slide_cohort(directory: str, patches: int, genes: int):
  """The one-slide cohort in `directory` (the parent writes it with `write`)."""
  return wl.write_cohort(directory, [patches], genes, write=False)


def _child() -> None:
  """Builds, runs and times one (workload, framework) on the slide; prints one JSON line."""
  n, name, framework = _CHILD_PATCHES.value, _CHILD_WORKLOAD.value, _CHILD_FRAMEWORK.value
  jax.config.update("jax_default_matmul_precision", "highest")
  cfg = wl.model_config("float32")
  cohort = _slide_cohort(_CHILD.value, n, _GENES.value)
  start = time.perf_counter()
  buckets = cfg.data.bucket_sizes if framework == "gimp_jax" else (n,)
  batch = wl.bag_batch(cohort, buckets)
  read_s = time.perf_counter() - start
  model, flat = wl.model_and_params(cfg, _GENES.value)
  if framework == "gimp_jax":
    if name == "slide_forward":
      runner = wl.jax_eval_runner(model, batch)
    else:
      runner = wl.jax_step_runner("gimp_jax", cfg, model,
                                  methods.finetune_loss(cfg),
                                  cfg.finetune.frozen, batch)
  else:
    del model
    if name == "slide_forward":
      tmodel = wl.torch_model(cfg, _GENES.value, flat)
      tb = tr.to_torch(batch)
      runner = wl._torch_runner(  # pylint: disable=protected-access
          framework, "default", lambda mode: tr.make_forward(tmodel, dtype="float32",
                                                                 compile_mode=mode),
          lambda f: f(tb["patches"], tb["genes"]))
    else:
      runner, = wl._torch_step_runners(  # pylint: disable=protected-access
          [framework], "default", cfg, _GENES.value, flat, tr.finetune_loss, batch)
  times = [measure.timed(runner.run)[0] for _ in range(_REPEATS.value)]
  info = {k: v for k, v in runner.info.items() if isinstance(v, (int, float))}
  print("RESULT " + json.dumps({"patches": n, "bucket": int(batch["patches"].shape[1]),
                                "read_s": read_s, "wall_s": times, **info}), flush=True)


def _max_rss_bytes(stderr: str) -> int | None:
  m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
  return int(m.group(1)) * 1024 if m else None


def _available_bytes() -> int:
  with open("/proc/meminfo", encoding="ascii") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def _extrapolate(points: list[dict], xla: dict[int, int], n: int) -> float | None:
  """Peak RSS at `n` patches from the runs so far: the largest smaller run's, plus the growth of
  gimp_jax's XLA buffer assignment for the same workload between the two sizes (both frameworks
  hold the same activations; PyTorch's RSS grew a little less in every run so far)."""
  done = [(p["patches"], p["max_rss_bytes"]) for p in points
          if p.get("max_rss_bytes") and p["patches"] < n]
  if not done or n not in xla:
    return None
  m, rss = max(done)
  return rss + xla[n] - xla[m]


def _xla_memory(name: str, n: int) -> int:
  """gimp_jax's XLA buffer assignment (bytes) for the workload at `n` patches, compiled only."""
  cfg = wl.model_config("float32")
  bucket = pipeline.bucket_size(n, cfg.data.bucket_sizes)
  model, _ = wl.model_and_params(cfg, _GENES.value)
  batch = {"patches": jax.ShapeDtypeStruct((1, bucket, wl.FEATURE_DIM), jnp.float32),
           "patch_mask": jax.ShapeDtypeStruct((1, bucket), jnp.bool_),
           "coords": jax.ShapeDtypeStruct((1, bucket, 2), jnp.int32),
           "num_patches": jax.ShapeDtypeStruct((1,), jnp.int32),
           "genes": jax.ShapeDtypeStruct((1, _GENES.value), jnp.float32),
           "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
  key = jax.random.key(0)
  if name == "slide_forward":
    state = create_state(model)
    step = steps.make_eval_step()
  else:
    params = nnx.state(model, nnx.Param)
    tx = optim.make_optimizer(cfg.optim, params, total_steps=1000, steps_per_epoch=100,
                                 frozen_regex=cfg.finetune.frozen)
    state = create_state(model, tx)
    step = steps.make_train_step(methods.finetune_loss(cfg),
                                    cfg.finetune.frozen)
  return measure.xla_costs(step.lower(state, batch, key).compile())["xla_memory_bytes"]


def _fit(points: list[dict], field: str) -> dict | None:
  pts = [(p["patches"], p[field]) for p in points if p.get(field)]
  if len(pts) < 2:
    return None
  x, y = np.array(pts, np.float64).T
  slope, intercept = np.polyfit(x, y, 1)
  resid = y - (slope * x + intercept)
  total = float(((y - y.mean()) ** 2).sum())
  return {"bytes_per_patch": slope, "intercept_bytes": intercept, "points": len(pts),
          "r2": 1.0 - float(resid @ resid) / total if total else 1.0}


def _table(results: dict) -> str:
  env = results["environment"]
  lines = [
      "# The whole slide: forward and one fine-tuning step, gimp_jax and PyTorch eager (CPU)", "",
      f"CPU: {env['cpu_model']} ({env['cpu_count']} cores, {env['memory_gib']:.0f} GiB); "
      f"jax {env['jax']}, torch {env['torch']}; float32, matmul precision highest; paper model "
      f"(d = 512, 60,480 genes). Shared host: load before `{env['uptime_start']}`, after "
      f"`{env['uptime_end']}`"
      + "".join(f"; an earlier run (torch {r.get('torch', '?')}; its points kept: "
                f"{r.get('points', '?')}): before `{r['uptime_start']}`, after "
                f"`{r['uptime_end']}`" for r in env.get("earlier_runs", []))
      + ": times are not a speed comparison, memory is.", "",
      f"Command: `{results['command']}` ({results['wall_s'] / 60:.0f} min)", "",
      "Max RSS = peak resident set size of the process running that one workload (model, slide "
      "batch, libraries included); XLA = gimp_jax's buffer assignment (arguments + outputs + "
      "temporaries - donated) from compiling the same step, no run needed.", "",
      "| workload | patches | bucket | impl | first call s | wall s | max RSS GiB | XLA GiB |",
      "|---|---|---|---|---|---|---|---|"]
  gib = lambda b: f"{b / 2 ** 30:.2f}" if b else "-"  # noqa: E731
  for p in results["points"]:
    wall = ", ".join(f"{t:.2f}" for t in p.get("wall_s", [])) or "-"
    first = f"{p['first_call_s']:.2f}" if "first_call_s" in p else "-"
    rss = gib(p.get("max_rss_bytes")) if "skipped" not in p else f"not run: {p['skipped']}"
    lines.append(f"| {p['workload']} | {p['patches']:,} | {p.get('bucket', '-')} | "
                 f"{p['framework']} | {first} | {wall} | {rss} | {gib(p.get('xla_bytes'))} |")
  lines += ["", "Linear fits (bytes = slope x patches + intercept) over the sizes measured:", "",
            "| workload | impl | memory | MiB per 1,000 patches | intercept GiB | R^2 | points |",
            "|---|---|---|---|---|---|---|"]
  for f in results["fits"]:
    lines.append(f"| {f['workload']} | {f['framework']} | {f['memory']} | "
                 f"{f['bytes_per_patch'] * 1000 / 2 ** 20:.1f} | "
                 f"{f['intercept_bytes'] / 2 ** 30:.2f} | {f['r2']:.5f} | {f['points']} |")
  return "\n".join(lines) + "\n"


def write_table(json_path: str) -> None:
  """The Markdown table beside a results JSON (.md), from the JSON."""
  with open(json_path, encoding="utf-8") as f:
    results = json.load(f)
  with open(os.path.splitext(json_path)[0] + ".md", "w", encoding="utf-8") as f:
    f.write(_table(results))


def _parent() -> None:
  start = time.perf_counter()
  results = {"command": " ".join(["python -m experiments.bench.whole_slide", *sys.argv[1:]]),
             "environment": {
                 "cpu_model": measure.cpu_model(),
                 "cpu_count": os.cpu_count(), "jax": jax.__version__,
                 "torch": torch.__version__, "python": platform.python_version(),
                 "memory_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30,
                 "uptime_start": subprocess.run(["uptime"], capture_output=True,
                                                text=True).stdout.strip()},
             "points": []}
  sizes = sorted(int(n) for n in _PATCHES.value)
  previous, xla = [], {}
  if _REUSE.value and _JSON.value and os.path.exists(_JSON.value):
    with open(_JSON.value, encoding="utf-8") as f:
      old = json.load(f)
    previous = old["points"]
    xla = {(p["workload"], p["patches"]): p["xla_bytes"] for p in previous if "xla_bytes" in p}
    results["environment"]["earlier_runs"] = old["environment"].get("earlier_runs", []) + [
        {k: old["environment"][k] for k in ("uptime_start", "uptime_end", "torch")}]
  with tempfile.TemporaryDirectory(prefix="gimp_whole_slide_") as tmp:
    for n in sizes:
      directory = os.path.join(tmp, str(n))
      os.makedirs(directory)
      measured = {(p["workload"], p["framework"]) for p in previous
                  if p["patches"] == n and "skipped" not in p}
      if len(measured) < len(_WORKLOADS.value) * len(_FRAMEWORKS.value):
        wl.write_cohort(directory, [n], _GENES.value)
      for name in _WORKLOADS.value:
        for framework in _FRAMEWORKS.value:
          point = {"workload": name, "framework": framework, "patches": n}
          kept = [p for p in previous if (p["workload"], p["framework"], p["patches"]) ==
                  (name, framework, n) and "skipped" not in p]
          if kept:  # measured by an earlier run (--reuse)
            results["points"].append(kept[0])
            continue
          if (name, n) not in xla:
            xla[name, n] = _xla_memory(name, n)
          if framework == "gimp_jax":
            point["xla_bytes"] = xla[name, n]
          same = [p for p in results["points"]
                  if (p["workload"], p["framework"]) == (name, framework)]
          need = _extrapolate(same, {m: b for (w, m), b in xla.items() if w == name}, n)
          need = need or xla[name, n]
          free = _available_bytes() - _MARGIN.value * 2 ** 30
          if need > free:
            point["skipped"] = (f"needs ~{need / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB free "
                                f"(MemAvailable - {_MARGIN.value:g} GiB)")
          else:
            proc = subprocess.run(
                ["/usr/bin/time", "-v", sys.executable, "-m", "experiments.bench.whole_slide",
                 f"--child_dir={directory}", f"--child_workload={name}",
                 f"--child_framework={framework}", f"--child_patches={n}",
                 f"--repeats={_REPEATS.value}", f"--genes={_GENES.value}"],
                capture_output=True, text=True, check=False)
            out = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not out:
              error = proc.stderr.split("\tCommand being timed")[0].strip().splitlines()
              point["skipped"] = f"failed (exit {proc.returncode}): {(error or [''])[-1][:300]}"
            else:
              point.update(json.loads(out[-1][len("RESULT "):]))
              point["max_rss_bytes"] = _max_rss_bytes(proc.stderr)
          print(json.dumps(point), flush=True)
          results["points"].append(point)
  results["fits"] = []
  for name in _WORKLOADS.value:
    for framework in _FRAMEWORKS.value:
      same = [p for p in results["points"]
              if (p["workload"], p["framework"]) == (name, framework)]
      for field, label in (("max_rss_bytes", "max RSS"), ("xla_bytes", "XLA")):
        fit = _fit(same, field)
        if fit:
          results["fits"].append({"workload": name, "framework": framework, "memory": label,
                                  **fit})
  results["environment"]["uptime_end"] = subprocess.run(["uptime"], capture_output=True,
                                                        text=True).stdout.strip()
  results["wall_s"] = time.perf_counter() - start
  print(_table(results))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1, default=float)
    write_table(_JSON.value)


def main(argv):
  del argv
  if _CHILD.value:
    _child()
  else:
    _parent()


if __name__ == "__main__":
  app.run(main)
