"""Batches of a cohort split as dicts of NumPy arrays, for the jitted steps, through grain.

- `gene_batches`: GroupMSA supervised pre-training, {'genes', 'label'}.
- `pretrain_batches`: GiMP pre-training, B windows of L patches with their MPM masks.
- `bag_batches`: fine-tuning and evaluation on whole bags with bucketed padding.

Each is one grain pipeline: `grain.MapDataset.source(order)` over the epoch's patient order
(`epoch_order`) -> `.map_with_index(make one example)` (an MPM window and its mask, or a whole bag)
-> `.batch(B)` (bags padded to a bucket) -> `[start_batch:]` -> `.to_iter_dataset(...)`, which makes
up to `prefetch` batches ahead in `num_threads` threads and yields them in order.

Order and windows are pure functions of (seed, epoch, position in the epoch): the patient order is a
NumPy permutation seeded by (seed, epoch), and the window of position p is drawn from
`masking.window_rng(seed, epoch, p)`. Resuming at batch k (`start_batch=k`) therefore yields exactly
the batches an uninterrupted epoch yields from k on, and reads nothing for the batches skipped.
"""

from collections.abc import Callable, Iterator, Sequence
import math

from absl import logging
import grain
import numpy as np

from gimp_jax import masking
from gimp_jax.data.cohort import Cohort
from gimp_jax.errors import DataError

_ORDER_STREAM = 0x6F7264
BASE_BUCKET = 128  # default buckets: 128 * 2^(k / 16), multiples of 128 (`default_buckets`)
BUCKETS_PER_OCTAVE = 16  # the trade-off: configs/nsclc.py `data.bucket_sizes`
NUM_THREADS = 2  # grain threads making batches ahead (when prefetch > 0)


def epoch_order(indices: np.ndarray, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The patients of an epoch: `indices` permuted by (seed, epoch), or as given."""
  indices = np.asarray(indices, np.int64)
  if not shuffle:
    return indices
  return np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(indices)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
  """Batches per epoch."""
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _batches(order: np.ndarray, make_example: Callable[[int, int], dict], *, batch_size: int,
             drop_remainder: bool, start_batch: int, batch_fn: Callable | None = None,
             prefetch: int = 2, num_threads: int = NUM_THREADS) -> Iterator[dict[str, np.ndarray]]:
  """The grain pipeline: examples `make_example(position, patient)` of `order`, batched.

  Args:
    order: [n] patient indices of the epoch, in order.
    make_example: (position in the epoch, patient index) -> example dict.
    batch_size: B.
    drop_remainder: skip the last partial batch.
    start_batch: first batch (resume); the batches before it are not made.
    batch_fn: examples -> batch; None stacks each entry along a new first axis.
    prefetch: batches made ahead (0: each batch is made when asked for, in the caller's thread).
    num_threads: threads making them.
  """
  if batch_size < 1:
    raise DataError(f'batch_size: {batch_size} must be >= 1')
  ds = grain.MapDataset.source(order).map_with_index(lambda i, p: make_example(i, int(p)))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)[start_batch:]
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch)))


def outcome(cohort: Cohort, p: int) -> dict[str, np.ndarray]:
  """A survival case's {'time': float32, 'censorship': int32} (batched to [B]); {} otherwise."""
  if cohort.times is None:
    return {}
  return {'time': cohort.times[p], 'censorship': cohort.censorship[p]}


def gene_batches(cohort: Cohort, split: str, *, batch_size: int, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, drop_remainder: bool = False, start_batch: int = 0,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Expression-only batches: {'genes': float32 [B, G] normalised, 'label': int32 [B]} (+ the
  `outcome` entries of a survival cohort)."""
  labels = cohort.labels
  return _batches(epoch_order(cohort.split(split), seed, epoch, shuffle),
                  lambda _, p: {'genes': cohort.genes[p], 'label': labels[p],
                                **outcome(cohort, p)},
                  batch_size=batch_size, drop_remainder=drop_remainder, start_batch=start_batch,
                  prefetch=prefetch)


def pretrain_batches(cohort: Cohort, split: str, *, batch_size: int, window: int, ratio: float,
                     seed: int, epoch: int, drop_remainder: bool = True, start_batch: int = 0,
                     prefetch: int = 2, sampling: str = 'window'
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
    prefetch: batches made ahead by grain threads.
    sampling: 'window' (a contiguous MPM window, `masking.sample_mpm`) or 'uniform' (L patches
      drawn with replacement from the whole bag, `masking.sample_uniform`: TANGLE's augmentation;
      the MPM mask is drawn all the same).

  Returns:
    An iterator of {'patches': float32 [B, L, D], 'mpm_mask': bool [B, L] (True = masked),
    'genes': float32 [B, G], 'label': int32 [B]} (+ the `outcome` entries of a survival cohort).
  """
  labels, sizes = cohort.labels, cohort.bag_sizes

  def make_window(position: int, p: int) -> dict[str, np.ndarray]:
    rng = masking.window_rng(seed, epoch, position)
    rows, mask = masking.sample_mpm(rng, sizes[p], window, ratio)
    if sampling == 'uniform':
      rows = masking.sample_uniform(rng, sizes[p], window)
    return {'patches': cohort.bags[p].features(rows), 'mpm_mask': mask, 'genes': cohort.genes[p],
            'label': labels[p], **outcome(cohort, p)}

  return _batches(epoch_order(cohort.split(split), seed, epoch), make_window,
                  batch_size=batch_size, drop_remainder=drop_remainder, start_batch=start_batch,
                  prefetch=prefetch)


def default_buckets(max_patches: int, base: int = BASE_BUCKET,
                    per_octave: int = BUCKETS_PER_OCTAVE) -> tuple[int, ...]:
  """base * 2^(k / per_octave) rounded up to a multiple of 128, for k = 0, 1, ... up to the first
  size >= max_patches.

  Padding wastes at most 2^(1 / per_octave) - 1 of a bag's compute (4.4% at 16 per octave, 19% at
  4, 100% for powers of two), for `per_octave` times as many shapes, each compiled once per step
  function (`python -m experiments.bench.profile --part buckets` weighs the two).
  """
  buckets, k = [base], 0
  while buckets[-1] < max_patches:
    k += 1
    size = -(-math.ceil(base * 2.0 ** (k / per_octave)) // 128) * 128
    if size > buckets[-1]:
      buckets.append(size)
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


def _pad_bags(examples: Sequence[dict]) -> dict[str, np.ndarray]:
  """Whole-bag examples (each padded to its own bucket) -> one batch padded to the largest."""
  n_pad = max(e['patches'].shape[0] for e in examples)
  num = np.asarray([e['num_patches'] for e in examples], np.int32)
  if len(examples) == 1:  # the largest bags: no copy
    patches, coords = examples[0]['patches'][None], examples[0]['coords'][None]
  else:
    patches = np.zeros((len(examples), n_pad, examples[0]['patches'].shape[1]), np.float32)
    coords = np.zeros((len(examples), n_pad, 2), np.int32)
    for j, e in enumerate(examples):
      n = e['patches'].shape[0]
      patches[j, :n], coords[j, :n] = e['patches'], e['coords']
  batch = {'patches': patches, 'patch_mask': np.arange(n_pad)[None] < num[:, None],
           'coords': coords, 'num_patches': num,
           'genes': np.stack([e['genes'] for e in examples]),
           'label': np.asarray([e['label'] for e in examples], np.int32),
           'patient_id': np.asarray([e['patient_id'] for e in examples], dtype=np.str_)}
  for key in ('time', 'censorship'):
    if key in examples[0]:
      batch[key] = np.asarray([e[key] for e in examples])
  return batch


def bag_batches(cohort: Cohort, split: str, *, batch_size: int, seed: int = 0, epoch: int = 0,
                shuffle: bool = False, bucket_sizes: Sequence[int] | None = None,
                drop_remainder: bool = False, start_batch: int = 0, prefetch: int = 2
                ) -> Iterator[dict[str, np.ndarray]]:
  """Whole-bag batches padded to a bucket, for fine-tuning and evaluation.

  Args:
    cohort: the cohort.
    split: 'train', 'val', 'test' or 'all'.
    batch_size: B (1 for the largest bags).
    seed: run seed (with `epoch`, fixes the order when shuffling).
    epoch: epoch.
    shuffle: permute the patients (training) or keep the split's order (evaluation).
    bucket_sizes: allowed padded lengths; None: `default_buckets` up to the largest bag.
    drop_remainder: skip the last partial batch (default: keep it, smaller).
    start_batch: first batch to yield (resume).
    prefetch: batches made ahead by grain threads.

  Returns:
    An iterator of {'patches': float32 [B, N_pad, D], 'patch_mask': bool [B, N_pad] (True = real
    patch; real patches first, padding after), 'coords': int32 [B, N_pad, 2] (0 on padding),
    'num_patches': int32 [B], 'genes': float32 [B, G], 'label': int32 [B],
    'patient_id': str array [B] (drop it before passing the batch to jax.jit)} (+ the `outcome`
    entries of a survival cohort), with N_pad the smallest bucket >= the largest bag of the batch.
  """
  labels, sizes = cohort.labels, cohort.bag_sizes
  if bucket_sizes is None:
    bucket_sizes = default_buckets(int(sizes.max()))

  def make_bag(_, p: int) -> dict:
    n = bucket_size(int(sizes[p]), bucket_sizes)  # the batch's bucket is the largest of these
    patches = np.zeros((n, cohort.feature_dim), np.float32)
    coords = np.zeros((n, 2), np.int32)
    cohort.bags[p].read_into(patches, coords)
    return {'patches': patches, 'coords': coords, 'num_patches': sizes[p],
            'genes': cohort.genes[p], 'label': labels[p],
            'patient_id': cohort.patients[p].patient_id, **outcome(cohort, p)}

  return _batches(epoch_order(cohort.split(split), seed, epoch, shuffle), make_bag,
                  batch_size=batch_size, drop_remainder=drop_remainder, start_batch=start_batch,
                  batch_fn=_pad_bags, prefetch=prefetch)
