"""Batches of a cohort split as dicts of NumPy arrays, for the jitted steps.

- `gene_batches`: GroupMSA supervised pre-training, {'genes', 'label'}.
- `pretrain_batches`: GiMP pre-training, B windows of L patches with their MPM masks.
- `bag_batches`: fine-tuning and evaluation on whole bags with bucketed padding.
- `prefetch`: a background thread that prepares a few batches ahead.

Order and windows are pure functions of (seed, epoch, position in the epoch): the patient order is a
NumPy permutation seeded by (seed, epoch), and window p of the epoch uses the key
`fold_in(fold_in(fold_in(key(seed), MPM_STREAM), epoch), p)`. Resuming at batch k (`start_batch=k`)
therefore yields exactly the batches an uninterrupted epoch yields from k on, and reads nothing for
the batches skipped.
"""

from collections.abc import Iterable, Iterator, Sequence
import functools
import queue
import threading
from typing import TypeVar

from absl import logging
import jax
import numpy as np

from gimp_jax import masking
from gimp_jax.data.cohort import Cohort
from gimp_jax.errors import DataError

MPM_STREAM = 0x6D706D  # separates the data's keys from the model's keys drawn from the same seed
_ORDER_STREAM = 0x6F7264
BASE_BUCKET = 128  # default buckets: 128 * 2^k (real bags of 485+ patches start at 512)

T = TypeVar('T')


def epoch_order(indices: np.ndarray, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The patients of an epoch: `indices` permuted by (seed, epoch), or as given."""
  indices = np.asarray(indices, np.int64)
  if not shuffle:
    return indices
  return np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(indices)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
  """Batches per epoch."""
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _batch_slices(order: np.ndarray, batch_size: int, drop_remainder: bool, start_batch: int
                  ) -> Iterator[tuple[int, np.ndarray]]:
  """(batch index, patient indices) from `start_batch` on."""
  if batch_size < 1:
    raise DataError(f'batch_size: {batch_size} must be >= 1')
  for b in range(start_batch, num_batches(order.size, batch_size, drop_remainder)):
    yield b, order[b * batch_size:(b + 1) * batch_size]


@functools.partial(jax.jit, static_argnames=('window', 'ratio'))
def _mpm_windows(seed: jax.Array, epoch: jax.Array, positions: jax.Array, num_patches: jax.Array,
                 *, window: int, ratio: float) -> tuple[jax.Array, jax.Array]:
  """indices [B, L] int32 and mask [B, L] bool of the windows at `positions` [B] of an epoch."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), MPM_STREAM), epoch)
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
  return jax.vmap(lambda k, n: masking.sample_mpm(k, n, window, ratio))(keys, num_patches)


@functools.cache
def _cpu() -> jax.Device:
  """The host CPU device (windows are tiny), or the default device where no CPU backend runs."""
  try:
    return jax.devices('cpu')[0]
  except RuntimeError:
    return jax.devices()[0]


def mpm_windows(seed: int, epoch: int, positions: np.ndarray, num_patches: np.ndarray,
                window: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
  """MPM windows of bags at epoch positions, computed on the CPU.

  Args:
    seed: the run seed.
    epoch: the epoch.
    positions: [B] positions of the bags in the epoch.
    num_patches: [B] bag sizes N (>= 1).
    window: L.
    ratio: masked fraction.

  Returns:
    indices [B, L] int32 bag rows (see `masking.sample_mpm`) and mask [B, L] bool.
  """
  with jax.default_device(_cpu()):
    idx, mask = _mpm_windows(np.uint32(seed), np.uint32(epoch), np.asarray(positions, np.uint32),
                             np.asarray(num_patches, np.int32), window=window, ratio=ratio)
  return np.asarray(idx), np.asarray(mask)


def gene_batches(cohort: Cohort, split: str, *, batch_size: int, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, drop_remainder: bool = False, start_batch: int = 0
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Expression-only batches: {'genes': float32 [B, G] normalised, 'label': int32 [B]}."""
  order = epoch_order(cohort.split(split), seed, epoch, shuffle)
  labels = cohort.labels
  for _, idx in _batch_slices(order, batch_size, drop_remainder, start_batch):
    yield {'genes': cohort.genes[idx], 'label': labels[idx]}


def pretrain_batches(cohort: Cohort, split: str, *, batch_size: int, window: int, ratio: float,
                     seed: int, epoch: int, drop_remainder: bool = True, start_batch: int = 0
                     ) -> Iterator[dict[str, np.ndarray]]:
  """GiMP pre-training batches: one MPM window per patient.

  Args:
    cohort: the cohort.
    split: 'train', 'val', 'test' or 'all'.
    batch_size: B.
    window: L, patches per window (bags shorter than L are tiled).
    ratio: fraction of each window masked.
    seed: run seed.
    epoch: epoch (with `seed`, fixes the order and the windows).
    drop_remainder: skip the last partial batch.
    start_batch: first batch to yield (resume); earlier ones are not read.

  Yields:
    {'patches': float32 [B, L, D], 'mpm_mask': bool [B, L] (True = masked),
     'genes': float32 [B, G], 'label': int32 [B]}.
  """
  order = epoch_order(cohort.split(split), seed, epoch, shuffle=True)
  labels = cohort.labels
  sizes = cohort.bag_sizes
  for b, idx in _batch_slices(order, batch_size, drop_remainder, start_batch):
    positions = b * batch_size + np.arange(idx.size)
    rows, mask = mpm_windows(seed, epoch, positions, sizes[idx], window, ratio)
    patches = np.empty((idx.size, window, cohort.feature_dim), np.float32)
    for j, p in enumerate(idx):
      patches[j] = cohort.bag(p).features(rows[j])
    yield {'patches': patches, 'mpm_mask': mask, 'genes': cohort.genes[idx],
           'label': labels[idx]}


def default_buckets(max_patches: int, base: int = BASE_BUCKET) -> tuple[int, ...]:
  """base * 2^k for k = 0, 1, ... up to the first size >= max_patches."""
  buckets = [base]
  while buckets[-1] < max_patches:
    buckets.append(buckets[-1] * 2)
  return tuple(buckets)


def bucket_size(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; past the largest, the next multiple of the largest."""
  for b in sorted(buckets):
    if b >= n:
      return int(b)
  largest = max(buckets)
  logging.log_first_n(logging.WARNING, 'bag of %d patches exceeds the largest bucket %d', 1, n,
                      largest)
  return int(-(-n // largest) * largest)


def bag_batches(cohort: Cohort, split: str, *, batch_size: int, seed: int = 0, epoch: int = 0,
                shuffle: bool = False, bucket_sizes: Sequence[int] | None = None,
                drop_remainder: bool = False, start_batch: int = 0
                ) -> Iterator[dict[str, np.ndarray]]:
  """Whole-bag batches padded to a bucket, for fine-tuning and evaluation.

  Args:
    cohort: the cohort.
    split: 'train', 'val', 'test' or 'all'.
    batch_size: B (1 for the largest bags).
    seed: run seed (with `epoch`, fixes the order when shuffling).
    epoch: epoch.
    shuffle: permute the patients (training) or keep the split's order (evaluation).
    bucket_sizes: allowed padded lengths; None: 128 * 2^k up to the largest bag.
    drop_remainder: skip the last partial batch (default: keep it, smaller).
    start_batch: first batch to yield (resume).

  Yields:
    {'patches': float32 [B, N_pad, D], 'patch_mask': bool [B, N_pad] (True = real patch; real
     patches first, padding after), 'coords': int32 [B, N_pad, 2] (0 on padding),
     'num_patches': int32 [B], 'genes': float32 [B, G], 'label': int32 [B],
     'patient_id': str array [B] (drop it before passing the batch to jax.jit)}, with N_pad the
    smallest bucket >= the largest bag of the batch.
  """
  order = epoch_order(cohort.split(split), seed, epoch, shuffle)
  labels = cohort.labels
  sizes = cohort.bag_sizes
  if bucket_sizes is None:
    bucket_sizes = default_buckets(int(sizes.max()))
  for _, idx in _batch_slices(order, batch_size, drop_remainder, start_batch):
    n_pad = bucket_size(int(sizes[idx].max()), bucket_sizes)
    patches = np.zeros((idx.size, n_pad, cohort.feature_dim), np.float32)
    coords = np.zeros((idx.size, n_pad, 2), np.int32)
    for j, p in enumerate(idx):
      cohort.bag(p).read_into(patches[j], coords[j])
    yield {'patches': patches, 'patch_mask': np.arange(n_pad)[None] < sizes[idx, None],
           'coords': coords, 'num_patches': sizes[idx].astype(np.int32),
           'genes': cohort.genes[idx], 'label': labels[idx],
           'patient_id': np.asarray([cohort.patients[p].patient_id for p in idx], dtype=np.str_)}


_END = object()


def prefetch(batches: Iterable[T], size: int = 2) -> Iterator[T]:
  """Iterates `batches` in a background thread, at most `size` items ahead.

  An exception raised while producing a batch is re-raised here, at that batch. Closing the
  returned generator (or dropping it) stops the thread after the batch in progress.
  """
  q: queue.Queue = queue.Queue(maxsize=max(1, size))
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def work() -> None:
    try:
      for item in batches:
        if not put((item, None)):
          return
      put((_END, None))
    except BaseException as e:  # pylint: disable=broad-exception-caught; re-raised in the consumer
      put((None, e))

  thread = threading.Thread(target=work, name='gimp_jax-prefetch', daemon=True)
  thread.start()
  try:
    while True:
      item, error = q.get()
      if error is not None:
        raise error
      if item is _END:
        return
      yield item
  finally:
    stop.set()
    thread.join()
