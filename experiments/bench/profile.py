"""Where the CLI's steps spend their time: sub-parts timed side by side, and the options' costs.

  python -m experiments.bench.profile --size cpu [--repeats 3] [--markdown PATH]

On the bench's batches (`workloads`: the CLI's pipeline, the paper model), interleaved repeats of:
- pre-training: the whole step (`steps.make_train_step`, as `loop.fit` builds it) with the
  pseudo-inverse differentiated through its iterations ("unrolled", the package) and with the
  implicit gradient; the loss forward alone; the pseudo-inverse alone (forward; forward and backward
  both ways; per layer, all heads and windows); the frozen gene encoder forward;
- fine-tuning: the whole step on the bag padded to the config's bucket (`data.bucket_sizes`) and
  to the power-of-two bucket the config used first; the evaluation forward;
- pretrain_split (`--part pretrain_split`): the pre-training step cut the same way in XLA and
  PyTorch eager (gene encoder, loss forward, backward, optimizer; `pretrain_split`);
- components (`--part components`): each part of the fine-tuning step alone, forward and forward +
  backward, XLA against PyTorch eager (`experiments.bench.components`), at the lengths `--n`;
- buckets (`--part buckets`): compilations against padding for bucket grids over the paper's
  cohort, from measured compile times and per-patch step costs (`buckets_table`).
It also states the gradient error of `model.pinv_grad = "implicit"` on the pre-training batch at
initialisation: the relative L2 distance to the unrolled gradient, over all trainable parameters.
Times are process CPU seconds (the machine may be shared) and wall seconds, medians.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import components
from experiments.bench import measure
from experiments.bench import torch_reference as tr
from experiments.bench import workloads as wl
from gimp_jax import methods
from gimp_jax.data import pipeline
from gimp_jax.models import build
from gimp_jax.models import nystrom
from gimp_jax.train import loop, optim
from gimp_jax.train.state import create_state

_SIZE = flags.DEFINE_enum("size", "cpu", list(wl.SIZES), "Workload sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved repeats.")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Also write the table here.")
_PARTS = flags.DEFINE_multi_enum("part", ["pretrain", "finetune"],
                                 ["pretrain", "finetune", "pretrain_split", "components",
                                  "buckets"],
                                 "Sections to run.")
_N = flags.DEFINE_multi_integer("n", [23296, 20000], "Bag lengths of the components section.")


def _jitted_runner(name: str, fn, *args) -> measure.Runner:
  compiled = jax.jit(fn).lower(*args).compile()
  run = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
  run()
  return measure.Runner(name, run, {"model_flops": measure.model_flops(fn, *args)})


def pretrain_parts(cohort, sizes) -> list[measure.Runner]:
  cfg = wl.model_config("float32")
  cfg.pretrain.window = sizes.window
  batch = wl.pretrain_batch(cohort, cfg)
  loss_fn = methods.pretrain_loss(cfg)
  runners = []
  for mode in ("unrolled", "implicit"):
    cfg.model.pinv_grad = mode
    model, _ = wl.model_and_params(cfg, sizes.genes)
    runners.append(wl.jax_step_runner(f"pretrain step, pinv_grad={mode}", cfg, model, loss_fn,
                                cfg.pretrain.frozen, batch))
  cfg.model.pinv_grad = "unrolled"
  model, _ = wl.model_and_params(cfg, sizes.genes)
  state = create_state(model)
  dev = loop.to_device(batch)
  runners.append(_jitted_runner(
      "pretrain loss forward (train mode)",
      lambda s, b: loss_fn(s.model(jax.random.key(0), train=True), b)[0], state, dev))
  runners.append(_jitted_runner(
      "gene encoder forward (frozen)",
      lambda s, g: s.model(train=False).gene_encoder(g), state, dev["genes"]))
  m, heads, depth = cfg.model.num_landmarks, cfg.model.heads, cfg.model.depth
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((sizes.pretrain_batch, heads, m, m)).astype(np.float32)
  a = jax.nn.softmax(jnp.asarray(logits) * 0.1, -1)  # near-uniform rows, as at initialisation
  g = jnp.asarray(rng.standard_normal(a.shape).astype(np.float32))
  runners.append(_jitted_runner(
      f"pinv forward x{depth} layers",
      lambda a: [nystrom.iterative_pinv(a + i) for i in range(depth)], a))
  for name, fn in (("unrolled", nystrom.iterative_pinv), ("implicit", nystrom.implicit_pinv)):
    runners.append(_jitted_runner(
        f"pinv forward+backward ({name}) x{depth} layers",
        lambda a, g, fn=fn: [jax.grad(lambda a: jnp.sum(fn(a) * g))(a + i) for i in range(depth)],
        a, g))
  return runners


def pretrain_split(cohort, sizes, repeats: int) -> str:
  """The pre-training step cut where both frameworks can be cut the same way, XLA against PyTorch
  eager on the same weights and batch (`workloads.pretrain`'s): the frozen gene encoder's forward;
  the loss forward (train mode, encoder frozen); forward + backward (the step's `objective` and
  its `jax.grad`, as `steps.make_train_step`; PyTorch `.backward()`); the whole step (+ clipping
  and AdamW). No backward or optimizer row by subtraction: XLA compiles each program as a whole
  (forward + backward is not the forward plus a backward, and a step came out faster than its
  forward + backward), so only the forward difference is shown. The Nystrom layers' own
  operations at a window's length are the components section at `--n 1000`."""
  cfg = wl.model_config("float32")
  cfg.model = build.pretrain_model_cfg(cfg.model, cfg.pretrain)
  cfg.pretrain.window = sizes.window
  batch = wl.pretrain_batch(cohort, cfg)
  model, flat = wl.model_and_params(cfg, sizes.genes)
  loss_fn, frozen = methods.pretrain_loss(cfg), cfg.pretrain.frozen
  state, dev, key = create_state(model), loop.to_device(batch), jax.random.key(0)

  def objective(params, batch):
    mask = optim.frozen_mask(params, frozen)
    params = jax.tree_util.tree_map(lambda f, x: jax.lax.stop_gradient(x) if f else x, mask,
                                    params)
    return loss_fn(state.replace(params=params).model(key, train=True, frozen=frozen), batch)[0]
  jax_runners = [
      _jitted_runner("gene encoder forward (frozen)",
                     lambda s, g: s.model(train=False).gene_encoder(g), state, dev["genes"]),
      _jitted_runner("loss forward (train mode)", objective, state.params, dev),
      _jitted_runner("loss forward + backward", jax.grad(objective), state.params, dev),
      wl.jax_step_runner("whole step (+ clip, AdamW)", cfg,  # its own copy: the step donates it
                         wl.model_and_params(cfg, sizes.genes)[0], loss_fn, frozen, batch)]
  tmodel, tb = wl.torch_model(cfg, sizes.genes, flat), tr.to_torch(batch)
  step = tr.make_train_step(wl.torch_model(cfg, sizes.genes, flat),
                            lambda m, b: tr.pretrain_loss(m, b, cfg.pretrain), dtype="float32",
                            compile_mode=None, lr=cfg.optim.learning_rate,
                            weight_decay=cfg.optim.weight_decay, grad_clip=cfg.optim.grad_clip)
  tmodel.gene_encoder.requires_grad_(False)
  tmodel.train()

  def backward():
    tmodel.zero_grad(set_to_none=True)
    tr.pretrain_loss(tmodel, tb, cfg.pretrain).backward()
  calls = [lambda: tmodel.encode_genes(tb["genes"]),
           lambda: tr.pretrain_loss(tmodel, tb, cfg.pretrain), backward, lambda: step(tb)]
  torch_runners = []
  for r, call in zip(jax_runners, calls):
    call()
    torch_runners.append(measure.Runner(r.name + " | PyTorch",
                                        lambda c=call: (c(), tr.synchronize()), {}, "torch"))
  times = measure.interleaved(jax_runners + torch_runners, repeats)
  cpu = {n: float(np.median(t["cpu_s"])) for n, t in times.items()}
  lines = ["| part | XLA CPU s | PyTorch CPU s | XLA / PyTorch |", "|---|---|---|---|"]
  for r in jax_runners:
    ours, theirs = cpu[r.name], cpu[r.name + " | PyTorch"]
    lines.append(f"| {r.name} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
  names = [r.name for r in jax_runners]
  ours, theirs = (cpu[names[1] + t] - cpu[names[0] + t] for t in ("", " | PyTorch"))
  lines.append(f"| aggregator, decoder, losses (fwd - gene encoder) | {ours:.3f} | {theirs:.3f} "
               f"| {ours / theirs:.2f} |")
  return "\n".join(lines)


def implicit_gradient_error(cohort, sizes) -> float:
  """|g_implicit - g_unrolled| / |g_unrolled| over the trainable parameters (pre-training loss,
  eval mode, initial parameters)."""
  cfg = wl.model_config("float32")
  cfg.pretrain.window = sizes.window
  batch = loop.to_device(wl.pretrain_batch(cohort, cfg))
  loss_fn = methods.pretrain_loss(cfg)
  grads = {}
  for mode in ("unrolled", "implicit"):
    cfg.model.pinv_grad = mode
    model, _ = wl.model_and_params(cfg, sizes.genes)
    state = create_state(model)
    grads[mode] = optim.flat_paths(jax.jit(jax.grad(
        lambda p, s=state: loss_fn(s.replace(params=p).model(train=False), batch)[0]))(
            state.params))
  keys = [k for k in grads["unrolled"] if not k.startswith("gene_encoder/")]
  num = sum(float(jnp.sum((grads["unrolled"][k] - grads["implicit"][k]) ** 2)) for k in keys)
  den = sum(float(jnp.sum(grads["unrolled"][k] ** 2)) for k in keys)
  return (num / den) ** 0.5


def finetune_parts(cohort, sizes) -> list[measure.Runner]:
  cfg = wl.model_config("float32")
  loss_fn = methods.finetune_loss(cfg)
  runners = []
  n = sizes.finetune_patches
  pow2 = tuple(1024 * 2 ** k for k in range(9))
  for label, buckets in (("config's", cfg.data.bucket_sizes), ("power-of-two", pow2)):
    batch = wl.bag_batch(cohort, buckets)
    model, _ = wl.model_and_params(cfg, sizes.genes)
    runners.append(wl.jax_step_runner(
        f"finetune step, N={n} in the {label} bucket {batch['patches'].shape[1]}", cfg, model,
        loss_fn, cfg.finetune.frozen, batch))
  model, _ = wl.model_and_params(cfg, sizes.genes)
  runners.append(wl.jax_eval_runner(model, wl.bag_batch(cohort, cfg.data.bucket_sizes)))
  runners[-1].name = "evaluation forward (predict), the config's bucket"
  return runners


def components_table(n: int, repeats: int) -> str:
  """`components.parts(n)` forward and forward + backward, XLA and PyTorch interleaved."""
  lines = [f"### N = {n}", "",
           "| part | pass | XLA CPU s | PyTorch CPU s | XLA / PyTorch | XLA matmul GFLOP | "
           "XLA GFLOP per CPU s |", "|---|---|---|---|---|---|---|"]
  for part in components.parts(n):
    runners = components.jax_runners(part) + components.torch_runners(part)
    times = measure.interleaved(runners, repeats)
    cpu = {r.name: float(np.median(times[r.name]["cpu_s"])) for r in runners}
    for r in runners[:2]:
      label = r.name.split(" | ")[1]
      theirs = cpu[r.name.replace("| XLA", "| PyTorch")]
      gflop = r.info["model_flops"] / 1e9
      rate = f"{gflop / cpu[r.name]:.1f}" if gflop else ""
      lines.append(f"| {part.name} | {label} | {cpu[r.name]:.4f} | {theirs:.4f} | "
                   f"{cpu[r.name] / theirs:.2f} | {gflop:.2f} | {rate} |")
    print(lines[-2] + "\n" + lines[-1], flush=True)
  return "\n".join(lines)


# The paper's cohort for the bucket trade-off: 946 patients (567 / 189 / 190), one slide each, bag
# sizes log-uniform between the README's extremes (the synthetic generator's law), 70 fine-tuning
# epochs (config), one training step per training bag and one evaluation per validation bag per
# epoch.
COHORT_BAGS, SPLIT, BAG_RANGE, EPOCHS = 946, (567, 189, 190), (485, 150_000), 70
GRIDS = {"powers of two": pipeline.default_buckets(262144, 1024, 1),
         "quarter-octave": pipeline.default_buckets(262144, 1024, 4),
         "eighth-octave": pipeline.default_buckets(262144, 1024, 8),
         "sixteenth-octave": pipeline.default_buckets(262144, 1024, 16),
         "32 per octave": pipeline.default_buckets(262144, 1024, 32),
         "multiples of 1024": tuple(range(1024, 262145, 1024)),
         "multiples of 128 (~exact length)": tuple(range(128, 262145, 128))}


def bucket_costs(cohort, sizes, repeats: int) -> dict:
  """Measured on the bench's bag: compile seconds of the fine-tuning step and of the evaluation
  step (median over two shapes), and CPU seconds per padded patch of each (one shape)."""
  cfg = wl.model_config("float32")
  loss_fn = methods.finetune_loss(cfg)
  n = sizes.finetune_patches
  compile_step, compile_eval, runners = [], [], []
  for size in (pipeline.bucket_size(n, (k * 128 for k in range(1, 4096))),
               pipeline.bucket_size(n, cfg.data.bucket_sizes)):
    batch = wl.bag_batch(cohort, (size,))
    model, _ = wl.model_and_params(cfg, sizes.genes)
    step = wl.jax_step_runner(f"finetune step {size}", cfg, model, loss_fn, cfg.finetune.frozen,
                              batch)
    evaluation = wl.jax_eval_runner(model, batch)
    evaluation.name = f"evaluation {size}"
    compile_step.append(step.info["compile_s"])
    compile_eval.append(evaluation.info["compile_s"])
    runners = [step, evaluation]
  times = measure.interleaved(runners, repeats)
  per_patch = [float(np.median(times[r.name]["cpu_s"])) / size for r in runners]
  return {"compile_step_s": float(np.median(compile_step)),
          "compile_eval_s": float(np.median(compile_eval)),
          "step_cpu_s_per_patch": per_patch[0], "eval_cpu_s_per_patch": per_patch[1]}


def buckets_table(costs: dict) -> str:
  """Compilations, padding and their CPU seconds over `EPOCHS` epochs of the cohort model above,
  for each grid of `GRIDS` (batch size 1: every bag padded to its own bucket)."""
  rng = np.random.default_rng(0)
  bags = np.exp(rng.uniform(*np.log(BAG_RANGE), COHORT_BAGS)).astype(int)
  train, val = bags[:SPLIT[0]], bags[SPLIT[0]:SPLIT[0] + SPLIT[1]]
  lines = ["| grid | buckets in 485..150,000 | train-step compilations | evaluation compilations | "
           "padded / real patches - 1 | largest padding of a bag >= 1024 | compile s (once, "
           f"wall) | padding CPU s per epoch | compile + padding over {EPOCHS} epochs, s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, grid in GRIDS.items():
    pad = lambda b: np.array([pipeline.bucket_size(int(n), grid) for n in b])  # noqa: E731
    padded_train, padded_all = pad(train), pad(bags)
    compiles = (len(set(padded_train)), len(set(padded_all)))
    compile_s = (compiles[0] * costs["compile_step_s"] + compiles[1] * costs["compile_eval_s"])
    waste = ((padded_train - train).sum() * costs["step_cpu_s_per_patch"]
             + (pad(val) - val).sum() * costs["eval_cpu_s_per_patch"])
    big = bags >= 1024  # smaller bags all share the first bucket (1024), whatever the grid
    in_range = sum(1 for b in grid if BAG_RANGE[0] <= b <= pipeline.bucket_size(BAG_RANGE[1], grid))
    lines.append(f"| {name} | {in_range} | {compiles[0]} | {compiles[1]} | "
                 f"{padded_all.sum() / bags.sum() - 1:.1%} | "
                 f"{(padded_all[big] / bags[big] - 1).max():.1%} | {compile_s:,.0f} | "
                 f"{waste:,.0f} | "
                 f"{compile_s + EPOCHS * waste:,.0f} |")
  return "\n".join(lines)


def table(runners, times) -> str:
  lines = ["| part | CPU s (median) | wall s (median) | matmul GFLOP |", "|---|---|---|---|"]
  for r in runners:
    t = times[r.name]
    lines.append(f"| {r.name} | {np.median(t['cpu_s']):.3f} | {np.median(t['wall_s']):.3f} | "
                 f"{r.info.get('model_flops', 0.0) / 1e9:.1f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", "highest")
  sizes = wl.SIZES[_SIZE.value]
  start = time.perf_counter()
  out = [f"# Profile of the CLI's steps ({_SIZE.value} sizes)", "",
         f"`uptime` at start: load {os.getloadavg()}", ""]
  sections = {"pretrain": ("Pre-training", pretrain_parts),
              "finetune": ("Fine-tuning", finetune_parts)}
  with tempfile.TemporaryDirectory(prefix="gimp_profile_") as tmp:
    cohort = wl.workload_cohort(tmp, sizes)
    for part in [p for p in sections if p in _PARTS.value]:
      title, make = sections[part]
      runners = make(cohort, sizes)
      times = measure.interleaved(runners, _REPEATS.value)
      out += [f"## {title}", "", table(runners, times), ""]
      print("\n".join(out[-4:]), flush=True)
      del runners
    if "buckets" in _PARTS.value:
      costs = bucket_costs(cohort, sizes, _REPEATS.value)
      out += ["## Padding: bucket grids over the paper's cohort (fine-tuning, batch size 1)", "",
              f"Measured on the bench bag (N = {sizes.finetune_patches}): {costs}.", "",
              buckets_table(costs), ""]
      print("\n".join(out[-4:]), flush=True)
    if "pretrain_split" in _PARTS.value:
      out += ["## Pre-training step, cut the same way in both frameworks (CPU s, medians)", "",
              pretrain_split(cohort, sizes, _REPEATS.value), ""]
      print("\n".join(out[-3:]), flush=True)
    if "pretrain" in _PARTS.value:
      err = implicit_gradient_error(cohort, sizes)
      out += [f"Implicit pinv gradient against the unrolled one (pre-training loss, initial "
              f"parameters, trainable leaves): relative L2 error {err:.4f}.", ""]
  if "components" in _PARTS.value:
    out += ["## Fine-tuning step by component (B = 1; XLA and PyTorch eager interleaved)", ""]
    out += [components_table(n, _REPEATS.value) + "\n" for n in _N.value]
  out += [f"Load at end {os.getloadavg()}; took {(time.perf_counter() - start) / 60:.1f} min."]
  text = "\n".join(out)
  print(text)
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
