"""Patient-level splits: the paper's sizes, stratification, no leakage for any seed or size."""

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from gimp_jax.data import splits
from gimp_jax.errors import DataError


def _check_partition(parts, n):
  all_idx = np.concatenate([parts[s] for s in splits.SPLITS])
  assert np.array_equal(np.sort(all_idx), np.arange(n))  # every patient exactly once


def test_paper_split_sizes_946():
  labels = np.array([0] * 470 + [1] * 476)  # LUAD 470, LUSC 476
  parts = splits.stratified_split(labels, (0.6, 0.2, 0.2), seed=0)
  assert [parts[s].size for s in splits.SPLITS] == [567, 189, 190]
  _check_partition(parts, 946)
  for s, f in zip(splits.SPLITS, (0.6, 0.2, 0.2)):
    for c, n_c in ((0, 470), (1, 476)):
      assert abs(np.sum(labels[parts[s]] == c) - f * n_c) <= 1.0, (s, c)


def test_seeded_and_deterministic():
  labels = np.random.default_rng(0).integers(0, 3, 100)
  a = splits.stratified_split(labels, seed=1)
  b = splits.stratified_split(labels, seed=1)
  c = splits.stratified_split(labels, seed=2)
  assert all(np.array_equal(a[s], b[s]) for s in splits.SPLITS)
  assert not np.array_equal(a['test'], c['test'])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 400), classes=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       f_train=st.integers(1, 8))
def test_no_leakage_any_size_seed(n, classes, seed, f_train):
  labels = np.random.default_rng(seed).integers(0, classes, n)
  fr = (f_train / 10, (9 - f_train) / 10 * 0.5, 0)
  fr = (fr[0], fr[1], 1 - fr[0] - fr[1])
  parts = splits.stratified_split(labels, fr, seed)
  _check_partition(parts, n)
  assert parts['train'].size == int(np.floor(fr[0] * n + 1e-9))
  for c in np.unique(labels):  # stratified to within two patients per class and split
    n_c = np.sum(labels == c)
    for s, f in zip(splits.SPLITS, fr):
      assert abs(np.sum(labels[parts[s]] == c) - f * n_c) < 2


@settings(max_examples=40, deadline=None)
@given(n=st.integers(6, 300), k=st.integers(3, 6), seed=st.integers(0, 1000))
def test_kfold_partitions(n, k, seed):
  labels = np.random.default_rng(seed).integers(0, 2, n)
  tests = []
  for fold in range(k):
    parts = splits.kfold_split(labels, k, fold, seed)
    _check_partition(parts, n)
    nxt = splits.kfold_split(labels, k, (fold + 1) % k, seed)
    assert np.array_equal(parts['val'], nxt['test'])  # val = the next fold
    tests.append(parts['test'])
  assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(n))  # each patient tested once
  sizes = [t.size for t in tests]
  assert max(sizes) - min(sizes) <= 1


def test_bad_arguments():
  with pytest.raises(DataError, match='fractions'):
    splits.stratified_split(np.zeros(10, int), (0.5, 0.5, 0.5))
  with pytest.raises(DataError, match='num_folds'):
    splits.kfold_split(np.zeros(10, int), 5, 5)
