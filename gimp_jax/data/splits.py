"""Patient-level splits: stratified train/val/test from a seed, k stratified folds, or the split
files of the mahmoodlab repositories (`splits_<fold>.csv`, columns train, val[, test] of case IDs).

Both come from one seeded stratified order of the patients, so each split holds every class in
proportion, and a patient is in exactly one split by construction. The single split takes
floor(f_train P) / floor(f_val P) / the rest (946 -> 567/189/190, as the paper). k folds are
contiguous blocks of the order: fold i = test, fold (i + 1) mod k = val, the others = train.
"""

from collections.abc import Sequence
import csv
import glob
import math
import os
import re

from absl import logging

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


def split_file(splits_dir: str, fold: int) -> str:
  """The split file of a fold: `<splits_dir>/splits_<fold>.csv`."""
  return os.path.join(splits_dir, f'splits_{fold}.csv')


def count_split_files(splits_dir: str) -> int:
  """k when `splits_dir` holds splits_0.csv ... splits_{k-1}.csv (DataError if none, or a gap)."""
  found = sorted(int(m[1]) for f in glob.glob(os.path.join(splits_dir, 'splits_*.csv'))
                 if (m := re.fullmatch(r'splits_(\d+)\.csv', os.path.basename(f))))
  if not found or found != list(range(len(found))):
    raise DataError(f'{splits_dir}: splits_dir: expected splits_0.csv ... splits_<k-1>.csv, found '
                    f'{[f"splits_{i}.csv" for i in found] or "none"}')
  return len(found)


def read_split_file(path: str, patient_ids: Sequence[str], strata: np.ndarray,
                    fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """A fold's split from a `splits_<k>.csv` (MCAT/PORPOISE/CLAM: an index column, then `train`,
  `val` and optionally `test` columns of case IDs, blank where a column is shorter).

  Without a `test` column the file's `val` cases are the held-out fold and are used as **test**
  (what those repositories report), and the validation split that selects the epoch is carved out
  of the file's train cases: a seeded stratified share f_val / (f_train + f_val) of them (0.25
  with the default fractions), so no choice is made on the reported cases. Cases of the cohort
  that the file does not name are left out of this fold.

  Args:
    path: the split file.
    patient_ids: [P] the cohort's case IDs (index = patient index).
    strata: [P] ints to stratify the carved-out validation split on (classes, or censorship).
    fractions: the config's split_fractions (only their train:val ratio is used).
    seed: its seed.

  Returns:
    'train'/'val'/'test' -> sorted int64 patient indices.

  Raises:
    DataError: unreadable file, missing column, an unknown case or a case in two columns (every
      problem, one line each, naming the file, the case and the column).
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: split file not found')
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      table = list(csv.DictReader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise DataError(f'{path}: not a readable CSV ({e})') from e
  columns = [c for c in SPLITS if table and c in table[0]]
  if 'train' not in columns or 'val' not in columns:
    raise DataError(f'{path}: header: need train and val columns (got '
                    f'{list(table[0]) if table else "an empty file"})')
  index = {pid: i for i, pid in enumerate(patient_ids)}
  found: dict[str, list[int]] = {c: [] for c in columns}
  seen: dict[str, str] = {}
  problems = []
  for line, row in enumerate(table, start=2):
    for c in columns:
      case = (row[c] or '').strip()
      if not case:
        continue
      if case not in index:
        problems.append(f'{path}: line {line}: case {case}: {c}: not in the cohort')
      elif case in seen:
        problems.append(f'{path}: line {line}: case {case}: {c}: also in {seen[case]}')
      else:
        seen[case] = c
        found[c].append(index[case])
  if problems:
    raise DataError('\n'.join(problems))
  out = {c: np.sort(np.asarray(v, np.int64)) for c, v in found.items()}
  left = len(patient_ids) - len(seen)
  if left:
    logging.info('%s: %d case(s) of the cohort are in none of its columns: not used in this fold',
                 path, left)
  if 'test' not in out:
    train = out['train']
    share = fractions[1] / max(fractions[0] + fractions[1], 1e-12)
    inner = stratified_split(np.asarray(strata)[train], (1 - share, share, 0.0), seed)
    rest = np.sort(np.concatenate([inner['train'], inner['test']]))  # rounding leftovers: train
    out = {'train': train[rest], 'val': train[inner['val']], 'test': out['val']}
  return out


def from_column(split_col: Sequence[str]) -> dict[str, np.ndarray]:
  """'train'/'val'/'test' -> sorted int64 indices of the patients whose split is that name."""
  return {s: np.asarray([i for i, x in enumerate(split_col) if x == s], np.int64) for s in SPLITS}


def patient_splits(spec, split_col: list[str | None], labels: np.ndarray,
                   patient_ids: Sequence[str]) -> dict[str, np.ndarray]:
  """A cohort's splits (`spec`: its `cohort.CohortSpec`): the split column when given, else the
  fold's split file, k folds or the stratified split from the seed (`labels`: [P] the classes, or
  the censorship, to stratify on; the unlabelled patients, label -1, go to train)."""
  if split_col[0] is not None:
    return from_column(split_col)
  if (labels < 0).any():  # unlabelled patients (label -1): the labelled ones are split, they train
    known = np.flatnonzero(labels >= 0)
    out = {k: known[v] for k, v in patient_splits(spec, [None] * known.size, labels[known],
                                           [patient_ids[j] for j in known]).items()}
    out['train'] = np.sort(np.concatenate([out['train'], np.flatnonzero(labels < 0)]))
    return out
  fold = max(spec.fold, 0)
  if spec.splits_dir:
    return read_split_file(split_file(spec.splits_dir, fold), patient_ids,
                                      labels, spec.split_fractions, spec.seed)
  if spec.num_folds:
    return kfold_split(labels, spec.num_folds, fold, spec.seed)
  return stratified_split(labels, spec.split_fractions, spec.seed)
