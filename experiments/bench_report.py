"""Markdown tables and derived numbers (ratios, consumer rates) of bench.py's results."""

GIB = 2.0 ** 30
OURS = "gimp_jax"


def ratios(rows: list[dict]) -> dict:
  """{"gimp_jax / <impl>": {"wall": median ratio, "cpu": median ratio}}; < 1 = ours faster."""
  ours = next((r for r in rows if r["impl"] == OURS), None)
  if ours is None:
    return {}
  out = {}
  for r in rows:
    if r["impl"] != OURS:
      out[f"{OURS} / {r['impl']}"] = {
          "wall": ours["wall_s"]["median"] / r["wall_s"]["median"],
          "cpu": ours["cpu_s"]["median"] / r["cpu_s"]["median"]}
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
           "| memory GiB | model TFLOP | TFLOP/s | % peak | ours / this (wall, CPU) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for w in workloads:
    shapes = ", ".join(f"{k}={v}" for k, v in w["shapes"].items())
    for r in w["rows"]:
      wall, cpu = r["wall_s"], r["cpu_s"]
      ratio = w["ratios"].get(f"{OURS} / {r['impl']}")
      ratio_text = f"{ratio['wall']:.2f}, {ratio['cpu']:.2f}" if ratio else ""
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
