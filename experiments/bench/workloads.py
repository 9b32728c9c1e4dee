"""What the benchmark times: gimp_jax as the CLI runs it, the PyTorch reference, the data loader.

Measure what runs: a gimp_jax step is `steps.make_train_step(loss_fn, frozen_regex)` with the
loss of the config's method (`methods.pretrain_loss(config)` /
`methods.finetune_loss(config)`) and the stage's `frozen` regex, on a batch of
`pipeline.pretrain_batches` / `pipeline.bag_batches` read from CLAM `.h5` files
(`write_cohort`) and placed by `loop.to_device`, as `gimp_jax.train.loop.fit` does.

Every builder returns `measure.Runner`s that share one model initialisation (the PyTorch model
receives gimp_jax's initial parameters), one batch and one precision, already warmed up
(compiled); the first call's time is `info["first_call_s"]`.

- `pretrain`: one GiMP pre-training step (MPM + triplet, frozen GroupMSA, AdamW) on B windows of
  L patches with the config's `pretrain.pinv_grad` ("gimp_jax"), and with the other one
  ("gimp_jax_<other>_pinv"; the implicit gradient's error: `experiments.bench.profile`,
  `experiments/results/pinv_grad/`).
- `slide_forward`: the evaluation forward over a whole slide (`steps.make_eval_step`, as `predict`
  runs it, on the bag padded to `config.data.bucket_sizes`).
- `finetune`: one fine-tuning step on a whole slide (cross-entropy, frozen GroupMSA), gimp_jax on
  the bag padded to `config.data.bucket_sizes` with a key-padding mask, the batch the CLI trains
  on; PyTorch (no padding needed at batch size 1) on the bag at its own length.
- `loading`: patches/s of the two batch iterators from CLAM files, alone (no read threads) and
  with the pipeline's grain read-ahead, for a consumer as slow as the measured step.
"""

import dataclasses
import os
import tempfile
import time
from typing import Sequence

from flax import nnx
import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gimp_jax.configs import nsclc
from experiments.bench import measure
from experiments.bench import torch_reference as tr
from experiments.bench.measure import Runner
from gimp_jax import methods
from gimp_jax.data import clam, pipeline
from gimp_jax.data.cohort import Cohort, Patient
from gimp_jax.models import build
from gimp_jax.train import loop, optim, steps
from gimp_jax.train.state import create_state, train_state

NUM_CLASSES = 2
FEATURE_DIM = 1024


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Shapes of the workloads (see `SIZES`)."""
  pretrain_batch: int
  window: int
  genes: int
  finetune_patches: int
  scaling_patches: tuple[int, ...]
  scaling_run_max: int
  loading_patients: int
  loading_patches: int
  repeats: int


SIZES = {
    "cpu": Sizes(pretrain_batch=2, window=1000, genes=60480, finetune_patches=20000, scaling_patches=(10000, 50000, 148569),
                 scaling_run_max=50000, loading_patients=8, loading_patches=8000, repeats=5),
    "paper": Sizes(pretrain_batch=8, window=6000, genes=60480, finetune_patches=148569, scaling_patches=(10000, 50000, 148569),
                   scaling_run_max=148569, loading_patients=16, loading_patches=30000,
                   repeats=10),
    "smoke": Sizes(pretrain_batch=2, window=300, genes=6048, finetune_patches=3000, scaling_patches=(1000, 2000, 4000),
                   scaling_run_max=2000, loading_patients=4, loading_patches=1000, repeats=2),
}


# ----------------------------------------------------------------------------- inputs


def model_config(dtype: str) -> ml_collections.ConfigDict:
  """The paper's model (configs/nsclc.py) with `compute_dtype = dtype`."""
  cfg = nsclc.get_config()
  cfg.compute_dtype = dtype
  return cfg


def model_and_params(cfg, num_genes: int, seed: int = 0):
  """A gimp_jax GiMP and its parameters as {path: array}."""
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, num_genes, NUM_CLASSES, seed=seed,
                           dtype=cfg.compute_dtype)
  flat = {k: np.asarray(v) for k, v in optim.flat_paths(nnx.state(model, nnx.Param)).items()}
  return model, flat


def torch_model(cfg, num_genes: int, flat: dict):
  """The PyTorch reference on the device, carrying the parameters `flat`."""
  model = tr.GiMP(cfg, num_genes, NUM_CLASSES).to(tr.device())
  tr.load_gimp_params(model, flat)
  return model


def write_cohort(directory: str, bag_sizes: Sequence[int], num_genes: int = 16,
                 seed: int = 0, write: bool = True) -> Cohort:
  """One one-slide patient per entry of `bag_sizes`, in CLAM files of random features.

  CLAM's layout: `features` float32 [N, 1024] and `coords` int32 [N, 2], chunks of 32 rows.
  Labels alternate 0, 1, ...; the expression matrix [patients, num_genes] is random and not
  normalised (only shapes matter here). With `write=False` the files are those an earlier call
  wrote (another process reads them without holding the features in memory).
  """
  rng = np.random.default_rng(seed)
  patients = []
  for i, n in enumerate(bag_sizes):
    slide_id = f"TCGA-BE-{i:04d}-01Z-00-DX1"
    path = clam.slide_path(directory, slide_id)
    if write:
      with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.random((n, FEATURE_DIM), np.float32),
                         chunks=(32, FEATURE_DIM), maxshape=(None, FEATURE_DIM))
        coords = rng.integers(0, 100_000, (n, 2)).astype(np.int32)
        f.create_dataset("coords", data=coords, chunks=(32, 2), maxshape=(None, 2))
    patients.append(Patient(patient_id=f"TCGA-BE-{i:04d}", label=i % NUM_CLASSES,
                            slide_ids=(slide_id,), slide_paths=(path,), slide_patches=(n,),
                            expression_id=f"TCGA-BE-{i:04d}-01A"))
  genes = rng.standard_normal((len(bag_sizes), num_genes)).astype(np.float32)
  return Cohort(patients=tuple(patients), class_names=("a", "b"),
                splits={"train": np.arange(len(bag_sizes))}, genes=genes, normalizer=None,
                feature_dim=FEATURE_DIM)


def workload_cohort(directory: str, sizes: Sizes) -> Cohort:
  """The slide of the fine-tuning workload first, then window-sized bags up to one pre-training
  batch (`sizes.pretrain_batch` patients in all)."""
  bags = [sizes.finetune_patches] + [sizes.window] * (sizes.pretrain_batch - 1)
  return write_cohort(directory, bags, sizes.genes)


def pretrain_batch(cohort: Cohort, cfg) -> dict[str, np.ndarray]:
  """The first batch of `pipeline.pretrain_batches` over all patients of `cohort` (one window
  each, `cfg.pretrain.window` patches, `cfg.pretrain.mask_ratio` masked)."""
  return next(pipeline.pretrain_batches(
      cohort, "all", batch_size=len(cohort.patients), window=cfg.pretrain.window,
      ratio=cfg.pretrain.mask_ratio, seed=cfg.seed, epoch=0))


def bag_batch(cohort: Cohort, bucket_sizes: Sequence[int]) -> dict[str, np.ndarray]:
  """The first patient's whole bag from `pipeline.bag_batches`, padded to `bucket_sizes`."""
  return next(pipeline.bag_batches(cohort, "all", batch_size=1, bucket_sizes=bucket_sizes))


def random_patches(num_patches: int, seed: int = 1) -> np.ndarray:
  """One whole slide of random features [1, N, 1024] (the forward-only workloads)."""
  return np.random.default_rng(seed).standard_normal((1, num_patches, FEATURE_DIM), np.float32)


# ----------------------------------------------------------------------------- runners


def _first_call(fn) -> tuple[object, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def jax_step_runner(name: str, cfg, model, loss_fn, frozen: str, batch: dict) -> Runner:
  """The CLI's train step, donating its state: the state lives in a box replaced by every call."""
  step_fn = steps.make_train_step(loss_fn, frozen)
  state = train_state(model, cfg.optim, steps_per_epoch=100, epochs=10, frozen=frozen)
  batch = loop.to_device(batch)
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, key).compile()
  info = measure.xla_costs(compiled)
  info["compile_s"] = time.perf_counter() - start
  info["model_flops"] = measure.model_flops(step_fn, state, batch, key)
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], batch, key)
    jax.block_until_ready((box[0], metrics))
    return metrics
  metrics, info["first_call_s"] = _first_call(run)
  info["startup_s"] = info["compile_s"] + info["first_call_s"]
  info["first_loss"] = float(metrics["loss"])
  return Runner(name, run, info, "jax")


def _compiled_forward(model, x) -> tuple[object, object, dict]:
  """gimp_jax's whole-slide forward (cls [1, d], tokens [1, N, d]) in evaluation mode, compiled
  for `x` (an array or a `jax.ShapeDtypeStruct`): (compiled, state, XLA costs + compile_s)."""
  state = create_state(model)
  fwd = jax.jit(lambda s, x: s.model(train=False).aggregator(x))
  start = time.perf_counter()
  compiled = fwd.lower(state, x).compile()
  info = measure.xla_costs(compiled)
  info["compile_s"] = time.perf_counter() - start
  info["model_flops"] = measure.model_flops(fwd, state, x)
  return compiled, state, info


def jax_slide_forward_runner(model, patches: np.ndarray) -> Runner:
  """gimp_jax's whole-slide forward over `patches` [1, N, 1024]."""
  x = jax.device_put(patches)
  compiled, state, info = _compiled_forward(model, x)

  def run():
    return jax.block_until_ready(compiled(state, x))
  _, info["first_call_s"] = _first_call(run)
  info["startup_s"] = info["compile_s"] + info["first_call_s"]
  return Runner("gimp_jax", run, info, "jax")


def jax_eval_runner(model, batch: dict) -> Runner:
  """`steps.make_eval_step` (what `predict` and the report run) on a host bag batch."""
  state = create_state(model)
  step = steps.make_eval_step()
  batch = loop.to_device(batch)
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  info = measure.xla_costs(compiled)
  info["compile_s"] = time.perf_counter() - start
  info["model_flops"] = measure.model_flops(step, state, batch, key)

  def run():
    return jax.block_until_ready(compiled(state, batch, key))
  _, info["first_call_s"] = _first_call(run)
  info["startup_s"] = info["compile_s"] + info["first_call_s"]
  return Runner("gimp_jax", run, info, "jax")


def forward_memory(num_patches: int, dtype: str) -> dict:
  """XLA's buffer assignment for the whole-slide forward at `num_patches` (compiled, not run)."""
  model, _ = model_and_params(model_config(dtype), 8)
  x = jax.ShapeDtypeStruct((1, num_patches, FEATURE_DIM), jnp.float32)
  _, _, info = _compiled_forward(model, x)
  del info["model_flops"]
  return info


def _torch_runner(name: str, compile_mode: str, build_fn, call) -> Runner:
  """A PyTorch runner: `build_fn(mode)` makes the callable (mode None = eager), `call(fn)` runs
  it once; the first call (compilation for torch.compile) is timed as `first_call_s`."""
  fn = build_fn(None if name == "torch_eager" else compile_mode)

  def run():
    out = call(fn)
    tr.synchronize()
    return out
  result, first = _first_call(run)
  info = {"first_call_s": first, "startup_s": first}
  if result is not None and getattr(result, "ndim", 1) == 0:
    info["first_loss"] = float(result)
  return Runner(name, run, info, "torch")


def _torch_step_runners(frameworks: list[str], compile_mode: str, cfg, num_genes: int,
                        flat: dict, loss_fn, batch: dict) -> list[Runner]:
  """One train-step runner per requested PyTorch framework, each with its own model copy."""
  runners = []
  for name in [f for f in frameworks if f.startswith("torch")]:
    model = torch_model(cfg, num_genes, flat)
    tb = tr.to_torch(batch)

    def build_fn(mode, model=model):
      return tr.make_train_step(model, loss_fn, dtype=cfg.compute_dtype, compile_mode=mode,
                                lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay,
                                grad_clip=cfg.optim.grad_clip)
    runners.append(_torch_runner(name, compile_mode, build_fn, lambda step, tb=tb: step(tb)))
  return runners


# ----------------------------------------------------------------------------- workloads


def pretrain(cohort: Cohort, sizes: Sizes, dtype: str, frameworks: list[str],
             compile_mode: str) -> tuple[list[Runner], dict]:
  """Runners of one pre-training step, and the shapes."""
  cfg = model_config(dtype)
  cfg.model = build.pretrain_model_cfg(cfg.model, cfg.pretrain)  # the pre-training stage's model
  cfg.pretrain.window = sizes.window
  batch = pretrain_batch(cohort, cfg)
  model, flat = model_and_params(cfg, sizes.genes)
  runners = []
  if "gimp_jax" in frameworks:
    loss_fn = methods.pretrain_loss(cfg)
    runners.append(jax_step_runner("gimp_jax", cfg, model, loss_fn, cfg.pretrain.frozen, batch))
    # The other pseudo-inverse gradient beside the config's default, so that both are visible.
    other = {"unrolled": "implicit", "implicit": "unrolled"}[cfg.model.pinv_grad]
    option = cfg.copy_and_resolve_references()
    option.model.pinv_grad = other
    runners.append(jax_step_runner(f"gimp_jax_{other}_pinv", option,
                                   model_and_params(option, sizes.genes)[0],
                                   methods.pretrain_loss(option),
                                   cfg.pretrain.frozen, batch))
  p = cfg.pretrain
  loss_fn = lambda m, b: tr.pretrain_loss(m, b, p)  # noqa: E731
  runners += _torch_step_runners(frameworks, compile_mode, cfg, sizes.genes, flat, loss_fn, batch)
  return runners, {"B": sizes.pretrain_batch, "L": sizes.window, "genes": sizes.genes}


def slide_forward(cohort: Cohort, sizes: Sizes, dtype: str, frameworks: list[str],
                  compile_mode: str) -> tuple[list[Runner], dict]:
  """Runners of the whole-slide evaluation forward (logits of one bag), gimp_jax as `predict`
  runs it: `steps.make_eval_step` on the bag from `pipeline.bag_batches`, padded to the config's
  bucket; PyTorch on the bag at its own length, under no_grad."""
  cfg = model_config(dtype)
  batch = bag_batch(cohort, cfg.data.bucket_sizes)
  exact = bag_batch(cohort, (sizes.finetune_patches,))
  model, flat = model_and_params(cfg, sizes.genes)
  runners = []
  if "gimp_jax" in frameworks:
    runners.append(jax_eval_runner(model, batch))
  for name in [f for f in frameworks if f.startswith("torch")]:
    tmodel = torch_model(cfg, sizes.genes, flat)
    tb = tr.to_torch(exact)
    build_fn = lambda mode, m=tmodel: tr.make_forward(  # noqa: E731
        m, dtype=dtype, compile_mode=mode)
    runners.append(_torch_runner(name, compile_mode, build_fn,
                                 lambda f, tb=tb: f(tb["patches"], tb["genes"])))
  return runners, {"patches": sizes.finetune_patches, "bucket": batch["patches"].shape[1]}


def finetune(cohort: Cohort, sizes: Sizes, dtype: str, frameworks: list[str],
             compile_mode: str) -> tuple[list[Runner], dict]:
  """Runners of one fine-tuning step on the cohort's first (whole-slide) bag: gimp_jax as the CLI
  trains, padded to the config's bucket with a key-padding mask; PyTorch at the bag's length."""
  cfg = model_config(dtype)
  n = sizes.finetune_patches
  exact = bag_batch(cohort, (n,))
  bucketed = bag_batch(cohort, cfg.data.bucket_sizes)
  model, flat = model_and_params(cfg, sizes.genes)
  runners = []
  if "gimp_jax" in frameworks:
    loss_fn = methods.finetune_loss(cfg)
    runners.append(jax_step_runner("gimp_jax", cfg, model, loss_fn, cfg.finetune.frozen,
                                    bucketed))
  runners += _torch_step_runners(frameworks, compile_mode, cfg, sizes.genes, flat,
                                 tr.finetune_loss, exact)
  return runners, {"patches": n, "bucket": bucketed["patches"].shape[1], "genes": sizes.genes}


BUILDERS = {"pretrain": pretrain, "slide_forward": slide_forward, "finetune": finetune}


# ----------------------------------------------------------------------------- loading


def _device_put(batch: dict) -> dict:
  return jax.block_until_ready(loop.to_device(batch))


def _patches(batch: dict) -> int:
  if "patch_mask" in batch:
    return int(np.sum(batch["num_patches"]))
  return int(batch["mpm_mask"].size)


def measure_loader(make_batches, num_batches: int, prefetch_size: int, consume_s: float) -> dict:
  """Patches/s of `make_batches(epoch, prefetch)`: alone (prefetch 0, no read threads), then with
  grain's read-ahead for a `consume_s` consumer (a sleep standing in for the device step, which
  frees the GIL as a jitted step does).

  Returns:
    {"sync_patches_per_s", "prefetch_patches_per_s", "consume_s", "wait_s_per_batch",
     "stall_fraction", "batches"}: the consumer's mean wait for a batch and the fraction of its
    wall time spent waiting.
  """
  for batch in make_batches(0, 0):  # warm-up
    _device_put(batch)
    break
  start, patches, count = time.perf_counter(), 0, 0
  for batch in make_batches(1, 0):
    _device_put(batch)
    patches += _patches(batch)
    count += 1
    if count == num_batches:
      break
  sync = patches / (time.perf_counter() - start)
  start, patches, count, waited = time.perf_counter(), 0, 0, 0.0
  it = make_batches(2, prefetch_size)
  while count < num_batches:
    t = time.perf_counter()
    batch = next(it, None)
    if batch is None:
      break
    batch = _device_put(batch)
    waited += time.perf_counter() - t
    patches += _patches(batch)
    count += 1
    time.sleep(consume_s)
  total = time.perf_counter() - start
  return {"sync_patches_per_s": sync, "prefetch_patches_per_s": patches / total,
          "consume_s": consume_s, "wait_s_per_batch": waited / max(count, 1),
          "stall_fraction": waited / total, "batches": count}


def loading(num_patients: int, num_patches: int, batch_size: int, window: int,
            pretrain_step_s: float, finetune_step_s: float, num_batches: int = 6) -> dict:
  """Loader throughput for pre-training windows and whole bags against the steps' consumption.

  The iterators are called as the CLI calls them, with the paper config's mask ratio, buckets
  and prefetch depth.

  The files were just written, so they are read from the page cache: the warm-cache rate of a
  cohort that fits in RAM (the norm for CLAM features: ~4 KiB per patch).

  Args:
    num_patients, num_patches: the temporary cohort (one slide of `num_patches` per patient).
    batch_size, window: pre-training B and L.
    pretrain_step_s, finetune_step_s: measured step times (the consumers); a whole-bag step is
      scaled to `num_patches` linearly from the fine-tuning workload's slide size by the caller.
    num_batches: batches timed per measurement.
  """
  cfg = nsclc.get_config()
  prefetch_size = cfg.data.prefetch
  with tempfile.TemporaryDirectory(prefix="gimp_bench_") as tmp:
    start = time.perf_counter()
    cohort = write_cohort(tmp, [num_patches] * num_patients)
    write_s = time.perf_counter() - start
    size = sum(os.path.getsize(p.slide_paths[0]) for p in cohort.patients)
    windows = lambda e, ahead: pipeline.pretrain_batches(  # noqa: E731
        cohort, "all", batch_size=batch_size, window=window, ratio=cfg.pretrain.mask_ratio,
        seed=cfg.seed, epoch=e, prefetch=ahead)
    bags = lambda e, ahead: pipeline.bag_batches(  # noqa: E731
        cohort, "all", batch_size=1, epoch=e, bucket_sizes=cfg.data.bucket_sizes,
        prefetch=ahead)
    pre = measure_loader(windows, min(num_batches, num_patients // batch_size), prefetch_size,
                         pretrain_step_s)
    whole = measure_loader(bags, min(num_batches, num_patients), prefetch_size, finetune_step_s)
  pre["step_consumes_patches_per_s"] = batch_size * window / pretrain_step_s
  whole["step_consumes_patches_per_s"] = num_patches / finetune_step_s
  return {"patients": num_patients, "patches_per_slide": num_patches, "files_bytes": size,
          "write_s": write_s, "prefetch": prefetch_size, "pretrain_windows": pre,
          "whole_bags": whole}
