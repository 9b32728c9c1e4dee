"""The benchmarked computations, each built for gimp_jax and for the PyTorch reference.

Every builder returns `bench_measure.Runner`s that share one model initialisation (the PyTorch
model receives gimp_jax's initial parameters), one batch and one precision, already warmed up
(compiled); the first call's time is `info["compile_s"]`.

- `pretrain`: one GiMP pre-training step (MPM + triplet, frozen GroupMSA, AdamW).
- `slide_forward`: the aggregator over a whole slide in evaluation mode.
- `finetune`: one fine-tuning step on a whole slide (cross-entropy, frozen GroupMSA); gimp_jax
  also runs it padded to the pipeline's bucket with a key-padding mask, as `bag_batches` feeds it.
"""

import dataclasses
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import nsclc
from experiments import bench_cost
from experiments import torch_reference as tr
from experiments.bench_measure import Runner
from gimp_jax.data import pipeline
from gimp_jax.models import build
from gimp_jax.train import optim, steps
from gimp_jax.train.state import create_state

NUM_CLASSES = 2


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Shapes of the workloads (see bench.SIZES)."""
  pretrain_batch: int
  window: int
  genes: int
  slide_patches: int
  finetune_patches: int
  scaling_patches: tuple[int, ...]
  scaling_run_max: int
  loading_patients: int
  loading_patches: int
  repeats: int


def model_config(dtype: str) -> ml_collections.ConfigDict:
  """The paper's model (configs/nsclc.py) with `compute_dtype = dtype`."""
  cfg = nsclc.get_config()
  cfg.compute_dtype = dtype
  return cfg


def model_and_params(cfg, num_genes: int, seed: int = 0):
  """A gimp_jax GiMP and its parameters as {path: array}."""
  model = build.build_gimp(cfg, num_genes, NUM_CLASSES, seed=seed)
  flat = {k: np.asarray(v) for k, v in optim.flat_paths(nnx.state(model, nnx.Param)).items()}
  return model, flat


def torch_model(cfg, num_genes: int, flat: dict):
  """The PyTorch reference on the device, carrying the parameters `flat`."""
  model = tr.GiMP(cfg, num_genes, NUM_CLASSES).to(tr.device())
  tr.load_gimp_params(model, flat)
  return model


def pretrain_batch(sizes: Sizes, seed: int = 0) -> dict[str, np.ndarray]:
  """{'patches' [B, L, 1024], 'mpm_mask' [B, L] (half masked), 'genes' [B, G], 'label' [B]}."""
  rng = np.random.default_rng(seed)
  b, l = sizes.pretrain_batch, sizes.window
  mask = np.argsort(rng.random((b, l)), axis=1) < l // 2
  return {"patches": rng.standard_normal((b, l, 1024), np.float32), "mpm_mask": mask,
          "genes": rng.standard_normal((b, sizes.genes), np.float32),
          "label": (np.arange(b) % NUM_CLASSES).astype(np.int32)}


def slide_batch(num_patches: int, num_genes: int, seed: int = 1) -> dict[str, np.ndarray]:
  """One whole slide: {'patches' [1, N, 1024], 'genes' [1, G], 'label' [1]}."""
  rng = np.random.default_rng(seed)
  return {"patches": rng.standard_normal((1, num_patches, 1024), np.float32),
          "genes": rng.standard_normal((1, num_genes), np.float32),
          "label": np.zeros((1,), np.int32)}


def _first_call(fn) -> tuple[object, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _jax_step_runner(name: str, cfg, model, step_fn, batch: dict, frozen: str) -> Runner:
  """A donating train step: the state lives in a box and is replaced by every call."""
  params = nnx.state(model, nnx.Param)
  tx = optim.make_optimizer(cfg.optim, params, total_steps=1000, steps_per_epoch=100,
                            frozen_regex=frozen)
  state = create_state(model, tx)
  batch = jax.device_put(batch)
  key = jax.random.key(0)
  start = time.perf_counter()
  lowered = step_fn.lower(state, batch, key)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  info = bench_cost.xla_costs(compiled)
  info["model_flops"] = bench_cost.model_flops(step_fn, state, batch, key)
  info["compile_s"] = compile_s
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], batch, key)
    jax.block_until_ready((box[0], metrics))
    return metrics
  metrics, first = _first_call(run)
  info["first_call_s"] = first
  info["startup_s"] = compile_s + first
  info["first_loss"] = float(metrics["loss"])
  return Runner(name, run, info, "jax")


def _torch_runner(name: str, compile_mode: str, build_fn, call) -> Runner:
  """A PyTorch runner: `build_fn(mode)` makes the callable (mode None = eager), `call(fn)` runs
  it once; the first call (compilation for torch.compile) is timed as `compile_s`."""
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


def pretrain(sizes: Sizes, dtype: str, frameworks: list[str], compile_mode: str
             ) -> tuple[list[Runner], dict]:
  """Runners of one pre-training step, and the shapes."""
  cfg = model_config(dtype)
  cfg.pretrain.window = sizes.window
  batch = pretrain_batch(sizes)
  model, flat = model_and_params(cfg, sizes.genes)
  runners = []
  if "gimp_jax" in frameworks:
    runners.append(_jax_step_runner("gimp_jax", cfg, model, steps.make_pretrain_step(cfg.pretrain),
                                    batch, cfg.pretrain.frozen))
  p = cfg.pretrain
  loss_fn = lambda m, b: tr.pretrain_loss(m, b, p.margin, p.mining)  # noqa: E731
  runners += _torch_step_runners(frameworks, compile_mode, cfg, sizes.genes, flat, loss_fn, batch)
  return runners, {"B": sizes.pretrain_batch, "L": sizes.window, "genes": sizes.genes}


def slide_forward(sizes: Sizes, dtype: str, frameworks: list[str], compile_mode: str
                  ) -> tuple[list[Runner], dict]:
  """Runners of the aggregator forward over one whole slide (evaluation mode)."""
  cfg = model_config(dtype)
  patches = slide_batch(sizes.slide_patches, 1)["patches"]
  model, flat = model_and_params(cfg, 8)
  runners = []
  if "gimp_jax" in frameworks:
    runners.append(jax_slide_forward_runner(model, patches))
  for name in [f for f in frameworks if f.startswith("torch")]:
    tmodel = torch_model(cfg, 8, flat)
    tp = tr.to_torch({"patches": patches})["patches"]
    build_fn = lambda mode, m=tmodel: tr.make_forward(  # noqa: E731
        m, dtype=dtype, compile_mode=mode)
    runners.append(_torch_runner(name, compile_mode, build_fn, lambda f, tp=tp: f(tp)))
  return runners, {"patches": sizes.slide_patches}


def jax_slide_forward_runner(model, patches: np.ndarray) -> Runner:
  """gimp_jax's whole-slide forward: (cls [1, d], tokens [1, N, d]) in evaluation mode."""
  state = create_state(model)
  fwd = jax.jit(lambda s, x: s.model(train=False).aggregator(x))
  x = jax.device_put(patches)
  start = time.perf_counter()
  compiled = fwd.lower(state, x).compile()
  info = bench_cost.xla_costs(compiled)
  info["compile_s"] = time.perf_counter() - start
  info["model_flops"] = bench_cost.model_flops(fwd, state, x)

  def run():
    return jax.block_until_ready(compiled(state, x))
  _, info["first_call_s"] = _first_call(run)
  info["startup_s"] = info["compile_s"] + info["first_call_s"]
  return Runner("gimp_jax", run, info, "jax")


def finetune(sizes: Sizes, dtype: str, frameworks: list[str], compile_mode: str
             ) -> tuple[list[Runner], dict]:
  """Runners of one fine-tuning step on a whole slide: exact length, and (gimp_jax) padded to
  the pipeline's bucket with a key-padding mask."""
  cfg = model_config(dtype)
  n = sizes.finetune_patches
  batch = slide_batch(n, sizes.genes)
  bucket = pipeline.bucket_size(n, cfg.data.bucket_sizes)
  model, flat = model_and_params(cfg, sizes.genes)
  runners = []
  if "gimp_jax" in frameworks:
    make_step = lambda: steps.make_finetune_step(  # noqa: E731
        cfg.finetune.label_smoothing, cfg.finetune.frozen)
    runners.append(_jax_step_runner("gimp_jax", cfg, model, make_step(), batch,
                                    cfg.finetune.frozen))
    padded = dict(batch, patches=np.zeros((1, bucket, 1024), np.float32),
                  patch_mask=np.arange(bucket)[None] < n)
    padded["patches"][:, :n] = batch["patches"]
    model_b, _ = model_and_params(cfg, sizes.genes)
    runners.append(_jax_step_runner("gimp_jax_bucketed", cfg, model_b, make_step(), padded,
                                    cfg.finetune.frozen))
  runners += _torch_step_runners(frameworks, compile_mode, cfg, sizes.genes, flat,
                                 tr.finetune_loss, batch)
  return runners, {"patches": n, "bucket": bucket, "genes": sizes.genes}


def forward_memory(num_patches: int, dtype: str) -> dict:
  """XLA's buffer assignment for the whole-slide forward at `num_patches` (compiled, not run)."""
  cfg = model_config(dtype)
  model, _ = model_and_params(cfg, 8)
  state = create_state(model)
  fwd = jax.jit(lambda s, x: s.model(train=False).aggregator(x))
  x = jax.ShapeDtypeStruct((1, num_patches, 1024), jnp.float32)
  start = time.perf_counter()
  compiled = fwd.lower(state, x).compile()
  out = bench_cost.xla_costs(compiled)
  out["compile_s"] = time.perf_counter() - start
  return out
