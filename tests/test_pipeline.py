"""Batches: contents against h5py reads and masking.sample_mpm, determinism, resume, padding."""

import h5py
import numpy as np
import pytest

from gimp_jax import masking
from gimp_jax.data import cohort as ch
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import pipeline as pl
from gimp_jax.data import source
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp('cohort')
  paths = synthetic.make_cohort(str(out), seed=0, patients=22, genes=20, min_patches=10,
                                max_patches=40, feature_dim=8, two_slide_fraction=0.3)
  return ch.load_cohort(ch.CohortSpec(paths['labels'], paths['features_dir'], paths['expression'],
                                      feature_dim=8))


def whole_bag(patient):
  """The patient's bag read directly with h5py: (features [N, D], coords [N, 2])."""
  feats, coords = [], []
  for path in patient.slide_paths:
    with h5py.File(path) as f:
      feats.append(f['features'][:])
      coords.append(f['coords'][:])
  return np.concatenate(feats), np.concatenate(coords)


def batches(cohort, **kw):
  args = dict(batch_size=4, window=32, ratio=0.5, seed=3, epoch=0)
  args.update(kw)
  return list(pl.pretrain_batches(cohort, 'train', **args))


def test_pretrain_batches_match_independent_windows(cohort):
  got = batches(cohort)
  train = cohort.splits['train']
  assert len(got) == train.size // 4
  order = np.random.default_rng([pl._ORDER_STREAM, 3, 0]).permutation(train)
  tiled = 0
  for b, batch in enumerate(got):
    assert batch['patches'].shape == (4, 32, 8) and batch['patches'].dtype == np.float32
    assert batch['mpm_mask'].dtype == bool and batch['label'].dtype == np.int32
    assert (batch['mpm_mask'].sum(1) == masking.num_masked(32, 0.5)).all()
    for j in range(4):
      p = order[b * 4 + j]
      feats, _ = whole_bag(cohort.patients[p])
      rng = np.random.default_rng([masking.MPM_STREAM, 3, 0, b * 4 + j])
      idx, mask = masking.sample_mpm(rng, feats.shape[0], 32, 0.5)
      np.testing.assert_array_equal(batch['patches'][j], feats[idx])
      np.testing.assert_array_equal(batch['mpm_mask'][j], mask)
      np.testing.assert_array_equal(batch['genes'][j], cohort.genes[p])
      assert batch['label'][j] == cohort.patients[p].label
      tiled += feats.shape[0] < 32
  assert tiled > 0  # some bags are shorter than the window and were tiled


def test_pretrain_deterministic_per_seed_epoch(cohort):
  a, b = batches(cohort), batches(cohort)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = batches(cohort, epoch=1)
  assert not all(np.array_equal(x['label'], y['label']) and
                 np.array_equal(x['patches'], y['patches']) for x, y in zip(a, c))


def test_resume_with_start_batch_reads_only_the_rest(cohort, monkeypatch):
  full = batches(cohort, drop_remainder=False)
  calls = []
  original = source.PatientSource.__getitem__
  monkeypatch.setattr(source.PatientSource, '__getitem__',
                      lambda self, i: calls.append(i) or original(self, i))
  rest = batches(cohort, drop_remainder=False, start_batch=2)
  assert len(rest) == len(full) - 2
  for x, y in zip(full[2:], rest):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert len(calls) == sum(len(x['label']) for x in rest)  # skipped batches were not read
  n = cohort.splits['train'].size
  assert len(full) == -(-n // 4) and len(full[-1]['label']) == n - 4 * (len(full) - 1)


def test_bag_batches_cover_the_split_with_bucketed_padding(cohort):
  seen = []
  for batch in pl.bag_batches(cohort, 'all', batch_size=3, bucket_sizes=(16, 32, 64, 128)):
    n_pad = batch['patches'].shape[1]
    sizes = batch['num_patches']
    assert n_pad == min(b for b in (16, 32, 64, 128) if b >= sizes.max())
    assert batch['coords'].dtype == np.int32 and batch['patch_mask'].dtype == bool
    for j, pid in enumerate(batch['patient_id']):
      p = [q.patient_id for q in cohort.patients].index(pid)
      feats, coords = whole_bag(cohort.patients[p])
      n = feats.shape[0]
      assert sizes[j] == n and batch['patch_mask'][j].tolist() == [True] * n + [False] * (n_pad - n)
      np.testing.assert_array_equal(batch['patches'][j, :n], feats)
      np.testing.assert_array_equal(batch['coords'][j, :n], coords)
      assert not batch['patches'][j, n:].any() and not batch['coords'][j, n:].any()
      np.testing.assert_array_equal(batch['genes'][j], cohort.genes[p])
      seen.append(p)
  assert sorted(seen) == list(range(len(cohort.patients)))  # every patient once, none dropped
  order = lambda: [p for b in pl.bag_batches(cohort, 'train', batch_size=1, shuffle=True, seed=1,
                                             epoch=2) for p in b['patient_id']]
  shuffled, again = order(), order()
  assert shuffled == again
  assert sorted(shuffled) == sorted(cohort.patients[i].patient_id for i in cohort.splits['train'])


def test_bucket_sizes():
  assert pl.bucket_size(1, (1024, 2048)) == 1024
  assert pl.bucket_size(1024, (2048, 1024)) == 1024
  assert pl.bucket_size(1025, (1024, 2048)) == 2048
  assert pl.bucket_size(5000, (1024, 2048)) == 6144  # past the largest: its next multiple
  assert pl.default_buckets(100) == (128,)
  for base in (128, 1024):
    buckets = np.asarray(pl.default_buckets(148_569, base))
    assert buckets[0] == base and buckets[-2] < 148_569 <= buckets[-1]
    # Sixteenth octaves base * 2^(k/16), rounded up to multiples of 128, duplicates dropped.
    sizes = np.ceil(base * 2.0 ** (np.arange(320) / 16) / 128) * 128
    np.testing.assert_array_equal(buckets, np.unique(sizes)[:len(buckets)])
    waste = buckets[1:] / (buckets[:-1] + 1)  # largest padding factor of a bag in each bucket
    assert waste[-10:].max() < 2 ** (1 / 16) + 0.01


def test_largest_paper_bag_batch_size_one(tmp_path):
  n, d = 148_569, 2
  feats = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
  coords = np.stack(np.divmod(np.arange(n), 400), 1).astype(np.int64) * 256
  path = str(tmp_path / 'huge.h5')
  with h5py.File(path, 'w') as f:
    f.create_dataset('features', data=feats, chunks=(32, d), maxshape=(None, d))
    f.create_dataset('coords', data=coords, chunks=(32, 2), maxshape=(None, 2))
  norm = genes_lib.GeneNormalizer.fit(np.ones((1, 3)), ['a', 'b', 'c'])
  cohort = ch.Cohort((ch.Patient('P', 0, ('huge',), (path,), (n,), 'P-01A'),), ('x', 'y'),
                     {'train': np.array([0]), 'val': np.zeros(0, int), 'test': np.zeros(0, int)},
                     np.zeros((1, 3), np.float32), norm, d)
  (batch,) = pl.bag_batches(cohort, 'train', batch_size=1)
  assert batch['patches'].shape == (1, pl.bucket_size(n, pl.default_buckets(n)), d)
  assert n <= batch['patches'].shape[1] < 1.2 * n and batch['patch_mask'].sum() == n
  np.testing.assert_array_equal(batch['patches'][0, :n], feats)
  np.testing.assert_array_equal(batch['coords'][0, :n], coords)
  (window,) = pl.pretrain_batches(cohort, 'train', batch_size=1, window=6000, ratio=0.5, seed=0,
                                  epoch=0)
  idx, _ = masking.sample_mpm(masking.window_rng(0, 0, 0), n, 6000, 0.5)
  assert idx[-1] - idx[0] == 5999  # one contiguous window
  np.testing.assert_array_equal(window['patches'][0], feats[idx])


def test_gene_batches(cohort):
  got = list(pl.gene_batches(cohort, 'val', batch_size=2, shuffle=False))
  val = cohort.splits['val']
  np.testing.assert_array_equal(np.concatenate([b['genes'] for b in got]), cohort.genes[val])
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in got]), cohort.labels[val])


def test_prefetch_threads_change_nothing_and_errors_arrive_at_their_batch(cohort, monkeypatch):
  kw = dict(batch_size=3, window=16, ratio=0.25, seed=5, epoch=1, drop_remainder=False)
  ahead = list(pl.pretrain_batches(cohort, 'train', prefetch=4, **kw))
  inline = list(pl.pretrain_batches(cohort, 'train', prefetch=0, **kw))
  assert len(ahead) == len(inline) == pl.num_batches(cohort.splits['train'].size, 3, False)
  for x, y in zip(ahead, inline):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  bad = pl.epoch_order(cohort.split('train'), 5, 1)[7]  # a patient of the third batch
  original = source.Bag.features

  def features(self, indices=None):
    if self.index == bad:
      raise DataError(f'{self.source.where(self.index, "features")}: contains NaN/Inf')
    return original(self, indices)

  monkeypatch.setattr(source.Bag, 'features', features)
  got = []
  with pytest.raises(DataError, match='features: contains NaN/Inf'):
    for batch in pl.pretrain_batches(cohort, 'train', prefetch=4, **kw):
      got.append(batch)
  assert len(got) == 2
