"""Patient-level splits: stratified train/val/test from a seed, or k stratified folds.

Both come from one seeded stratified order of the patients, so each split holds every class in
proportion, and a patient is in exactly one split by construction. The single split takes
floor(f_train P) / floor(f_val P) / the rest (946 -> 567/189/190, as the paper). k folds are
contiguous blocks of the order: fold i = test, fold (i + 1) mod k = val, the others = train.
"""

from collections.abc import Sequence
import math

import numpy as np

from gimp_jax.errors import DataError

SPLITS = ('train', 'val', 'test')


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
  """A seeded permutation of patients in which every class is spread evenly.

  Within class c (n_c patients, shuffled) the r-th patient gets the key (r + u_c) / n_c with a
  random phase u_c; sorting all keys interleaves the classes, so any prefix or contiguous block of
  the order holds each class in proportion (to within two patients).

  Args:
    labels: [P] class indices.
    seed: the split seed.

  Returns:
    [P] int64 permutation of range(P).
  """
  rng = np.random.default_rng(seed)
  keys = np.empty(labels.size)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    keys[members] = (np.arange(members.size) + rng.uniform()) / members.size
  return np.lexsort((rng.permutation(labels.size), keys)).astype(np.int64)


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Patient-level stratified split: floor(f0 P) train, floor(f1 P) val, the rest test.

  Args:
    labels: [P] class indices.
    fractions: (train, val, test), non-negative, summing to 1.
    seed: the split seed.

  Returns:
    'train'/'val'/'test' -> sorted int64 patient indices, disjoint, covering range(P).
  """
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise DataError(f'split_fractions: {tuple(fractions)} must be three non-negative numbers '
                    'summing to 1')
  order = stratified_order(np.asarray(labels), seed)
  n = order.size
  n_train = math.floor(fractions[0] * n + 1e-9)
  n_val = math.floor(fractions[1] * n + 1e-9)
  cuts = np.split(order, [n_train, n_train + n_val])
  return {name: np.sort(c) for name, c in zip(SPLITS, cuts)}


def kfold_split(labels: np.ndarray, num_folds: int, fold: int, seed: int = 0
                ) -> dict[str, np.ndarray]:
  """k stratified folds (contiguous blocks of `stratified_order`): fold = test, fold + 1 = val."""
  if num_folds < 3 or not 0 <= fold < num_folds:
    raise DataError(f'num_folds/fold: need num_folds >= 3 and 0 <= fold < num_folds, got '
                    f'{num_folds}/{fold}')
  order = stratified_order(np.asarray(labels), seed)
  fold_of = np.empty(order.size, np.int64)
  fold_of[order] = np.arange(order.size) * num_folds // order.size
  test, val = fold, (fold + 1) % num_folds
  return {'train': np.flatnonzero((fold_of != test) & (fold_of != val)),
          'val': np.flatnonzero(fold_of == val), 'test': np.flatnonzero(fold_of == test)}
