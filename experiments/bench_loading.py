"""Data loading for bench.py: patches per second read from CLAM `.h5` files by the real pipeline.

Writes a temporary cohort of CLAM feature files (random features, CLAM's layout: `features`
float32 [N, 1024] and `coords` int32 [N, 2], chunks of 32 rows), then measures
`gimp_jax.data.pipeline.pretrain_batches` (B windows of L patches at random offsets) and
`bag_batches` (whole bags), each followed by `jax.device_put` as the training loop does:

- synchronous: the loader alone, in the main thread;
- with prefetching (grain threads, `prefetch=prefetch_size`): a consumer that takes `consume_s` per batch (a sleep standing in for
  the device step, which frees the GIL as a jitted step does), reporting the time the consumer
  waited for data.

The files were just written, so they are read from the page cache: this is the warm-cache rate of
a cohort that fits in RAM (the norm for CLAM features: ~4 KiB per patch); a cold read from disk
is bounded by the disk instead.
"""

import os
import tempfile
import time

import h5py
import jax
import numpy as np

from gimp_jax.data import clam, pipeline
from gimp_jax.data.cohort import Cohort, Patient

FEATURE_DIM = 1024


def write_cohort(directory: str, num_patients: int, num_patches: int, num_genes: int = 16,
                 seed: int = 0) -> Cohort:
  """`num_patients` one-slide patients of `num_patches` random patches each, in CLAM files.

  The expression matrix is random and not normalised: only the loader is measured here.
  """
  rng = np.random.default_rng(seed)
  patients = []
  for i in range(num_patients):
    slide_id = f"TCGA-BE-{i:04d}-01Z-00-DX1"
    path = clam.slide_path(directory, slide_id)
    with h5py.File(path, "w") as f:
      f.create_dataset("features", data=rng.random((num_patches, FEATURE_DIM), np.float32),
                       chunks=(32, FEATURE_DIM), maxshape=(None, FEATURE_DIM))
      coords = rng.integers(0, 100_000, (num_patches, 2)).astype(np.int32)
      f.create_dataset("coords", data=coords, chunks=(32, 2), maxshape=(None, 2))
    patients.append(Patient(patient_id=f"TCGA-BE-{i:04d}", label=i % 2, slide_ids=(slide_id,),
                            slide_paths=(path,), slide_patches=(num_patches,),
                            expression_id=f"TCGA-BE-{i:04d}-01A"))
  genes = rng.standard_normal((num_patients, num_genes)).astype(np.float32)
  return Cohort(patients=tuple(patients), class_names=("a", "b"),
                splits={"train": np.arange(num_patients)}, genes=genes, normalizer=None,
                feature_dim=FEATURE_DIM)


def _device_put(batch: dict) -> dict:
  return jax.block_until_ready(jax.device_put(
      {k: v for k, v in batch.items() if k != "patient_id"}))


def _patches(batch: dict) -> int:
  if "patch_mask" in batch:
    return int(np.sum(batch["num_patches"]))
  return int(batch["mpm_mask"].size)


def measure(make_batches, num_batches: int, prefetch_size: int, consume_s: float) -> dict:
  """Patches/s of `make_batches(epoch, prefetch)`: alone (prefetch 0), then prefetched for a
  `consume_s` consumer.

  Returns:
    {"sync_patches_per_s", "prefetch_patches_per_s", "consume_s", "wait_s_per_batch",
     "stall_fraction"}: the last two are the consumer's mean wait for a batch and the fraction of
    its wall time spent waiting.
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
  it.close()
  total = time.perf_counter() - start
  return {"sync_patches_per_s": sync, "prefetch_patches_per_s": patches / total,
          "consume_s": consume_s, "wait_s_per_batch": waited / max(count, 1),
          "stall_fraction": waited / total, "batches": count}


def loading(num_patients: int, num_patches: int, batch_size: int, window: int,
            pretrain_step_s: float, finetune_step_s: float, prefetch_size: int = 2,
            num_batches: int = 6) -> dict:
  """Loader throughput for pre-training windows and whole bags against the steps' consumption.

  Args:
    num_patients, num_patches: the temporary cohort (one slide of `num_patches` per patient).
    batch_size, window: pre-training B and L.
    pretrain_step_s, finetune_step_s: measured step times (the consumers); a whole-bag step is
      scaled to `num_patches` linearly from the fine-tuning workload's slide size by the caller.
    prefetch_size: batches prepared ahead.
    num_batches: batches timed per measurement.
  """
  with tempfile.TemporaryDirectory(prefix="gimp_bench_") as tmp:
    start = time.perf_counter()
    cohort = write_cohort(tmp, num_patients, num_patches)
    write_s = time.perf_counter() - start
    size = sum(os.path.getsize(p.slide_paths[0]) for p in cohort.patients)
    windows = lambda e, ahead: pipeline.pretrain_batches(  # noqa: E731
        cohort, "all", batch_size=batch_size, window=window, ratio=0.5, seed=0, epoch=e,
        prefetch=ahead)
    bags = lambda e, ahead: pipeline.bag_batches(  # noqa: E731
        cohort, "all", batch_size=1, epoch=e, prefetch=ahead)
    pre = measure(windows, min(num_batches, num_patients // batch_size), prefetch_size,
                  pretrain_step_s)
    whole = measure(bags, min(num_batches, num_patients), prefetch_size, finetune_step_s)
  pre["step_consumes_patches_per_s"] = batch_size * window / pretrain_step_s
  whole["step_consumes_patches_per_s"] = num_patches / finetune_step_s
  return {"patients": num_patients, "patches_per_slide": num_patches, "files_bytes": size,
          "write_s": write_s, "prefetch": prefetch_size, "pretrain_windows": pre,
          "whole_bags": whole}
