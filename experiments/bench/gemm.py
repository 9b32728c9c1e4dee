"""The matrix products that dominate the CLI's steps and the patch encoders, alone: XLA's kernel
(a jitted `jnp.dot`, as our models lower them) against PyTorch's (`torch.matmul`, oneDNN / MKL on
CPU), same shapes, same inputs, interleaved in one process.

  python -m experiments.bench.gemm --markdown experiments/results/gemm_cpu_<cpu>.md

When a whole step's ours / PyTorch ratio equals its products' ratio here, the gap is the kernel
library's, not the model code's. Shapes (`SHAPES`): the aggregator's patch embedding and
projections on a fine-tuning bag (bucket 20,352, d = 512) and a pre-training window batch
(2 x 1,000), the Nyström landmark products, GroupMSA's per-fragment projection, and ViT-L's
(UNI, batch 4 x 197 tokens) and ViT-H's (Virchow2, 4 x 261) attention and MLP products.
float32 at matmul precision "highest" (as the bench), and bfloat16 inputs with float32
accumulation (`preferred_element_type`; PyTorch: bfloat16 tensors, its own accumulation).
"""

import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.bench import measure

# name -> (M, K, N): [M, K] @ [K, N]
SHAPES = {
    "aggregator embed, bag 20,352": (20352, 1024, 512),
    "aggregator qkv, bag 20,352": (20352, 512, 1536),
    "Nystrom q @ landmarks^T, bag 20,352 (8 heads)": (8 * 20352, 64, 256),
    "aggregator embed, windows 2 x 1,000": (2000, 1024, 512),
    "GroupMSA projection, 240 fragments x 252 genes -> 512 (shared, 1 patient)": (240, 252, 512),
    "ViT-L qkv, 4 x 197 tokens": (788, 1024, 3072),
    "ViT-L MLP fc1, 4 x 197 tokens": (788, 1024, 4096),
    "ViT-L MLP fc2, 4 x 197 tokens": (788, 4096, 1024),
    "ViT-H MLP fc1, 4 x 261 tokens": (1044, 1280, 5120),
}
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved repeats per implementation.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Input dtypes.")
_JSON = flags.DEFINE_string("json", "", "Write the rows here (default: beside --markdown).")
_MARKDOWN = flags.DEFINE_string("markdown", "experiments/results/gemm_cpu.md", "Markdown table.")


def runners(m: int, k: int, n: int, dtype: str) -> list[measure.Runner]:
  """Our jitted product and PyTorch's on the same [m, k] and [k, n] inputs."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((m, k), np.float32)
  b = rng.standard_normal((k, n), np.float32) / np.sqrt(k)
  jdt = jnp.dtype(dtype)
  ja, jb = jnp.asarray(a, jdt), jnp.asarray(b, jdt)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32,
                                     precision=jax.lax.Precision.HIGHEST))
  dot(ja, jb).block_until_ready()
  tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  ta, tb = torch.from_numpy(a).to(tdt), torch.from_numpy(b).to(tdt)
  with torch.inference_mode():
    torch.matmul(ta, tb)

  def torch_run():
    with torch.inference_mode():
      return torch.matmul(ta, tb)
  return [measure.Runner("gimp_jax (XLA)", lambda: dot(ja, jb).block_until_ready()),
          measure.Runner("torch", torch_run, framework="torch")]


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", "highest")
  load_before = os.getloadavg()
  rows = []
  for dtype in _DTYPES.value:
    for name, (m, k, n) in SHAPES.items():
      times = measure.interleaved(runners(m, k, n, dtype), _REPEATS.value)
      med = {impl: measure.summary(t["wall_s"])["median"] for impl, t in times.items()}
      gflop = 2.0 * m * k * n / 1e9
      rows.append({"product": name, "m": m, "k": k, "n": n, "dtype": dtype, "gflop": gflop,
                   "ours_s": med["gimp_jax (XLA)"], "torch_s": med["torch"],
                   "ours_gflops": gflop / med["gimp_jax (XLA)"],
                   "torch_gflops": gflop / med["torch"],
                   "ratio": med["gimp_jax (XLA)"] / med["torch"]})
      print(rows[-1], flush=True)
  env = {"cpu": measure.cpu_model(), "cores": os.cpu_count(), "jax": jax.__version__,
         "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_before": load_before,
         "load_after": os.getloadavg()}
  lines = [f"# Matrix products alone: XLA (ours) against PyTorch, {env['cpu']}", "",
           f"`python -m experiments.bench.gemm` ({_REPEATS.value} interleaved repeats, median "
           f"wall); {env['cores']} cores, jax {env['jax']}, torch {env['torch']} "
           f"({env['torch_threads']} threads), XLA_FLAGS `{env['xla_flags']}`; load average "
           f"before {load_before[0]:.2f}, after {env['load_after'][0]:.2f}. "
           "bfloat16: bfloat16 inputs, float32 accumulation on our side.", "",
           "| product | [M, K] x [K, N] | dtype | ours ms | torch ms | ours GFLOP/s | "
           "torch GFLOP/s | ours / torch |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['product']} | [{r['m']:,}, {r['k']:,}] x [{r['k']:,}, {r['n']:,}] | "
                 f"{r['dtype']} | {1e3 * r['ours_s']:.2f} | {1e3 * r['torch_s']:.2f} | "
                 f"{r['ours_gflops']:.0f} | {r['torch_gflops']:.0f} | {r['ratio']:.2f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(_MARKDOWN.value) or ".", exist_ok=True)
  with open(_MARKDOWN.value, "w", encoding="utf-8") as f:
    f.write(text)
  with open(_JSON.value or os.path.splitext(_MARKDOWN.value)[0] + ".json", "w",
            encoding="utf-8") as f:
    json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
