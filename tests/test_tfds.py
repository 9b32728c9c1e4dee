"""TFDS path: build a synthetic cohort into ArrayRecord shards, read it back without TensorFlow, and
get the same cohort and the same batches as the direct `.h5` path."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gimp_jax.data import cohort as ch
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import pipeline as pl
from gimp_jax.data import synthetic
from gimp_jax.data import tfds_builder
from gimp_jax.data import tfds_source
from gimp_jax.errors import DataError

D = 8
CHUNK = 16  # bags of 10-80 rows span 1-5 chunks; windows of 32 cross chunk boundaries
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  out = tmp_path_factory.mktemp('cohort')
  paths = synthetic.make_cohort(str(out), seed=0, patients=22, genes=20, min_patches=10,
                                max_patches=40, feature_dim=D, two_slide_fraction=0.3)
  return str(out), ch.CohortSpec(paths['labels'], paths['features_dir'], paths['expression'],
                                 feature_dim=D, seed=3)


@pytest.fixture(scope='module')
def built(inputs, tmp_path_factory):
  """(h5 cohort, TFDS cohort, data_dir): shards of ~600 bytes, so several per split."""
  _, spec = inputs
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds_builder.build(spec, data_dir, chunk_size=CHUNK, shard_bytes=600)
  return ch.load_cohort(spec), tfds_source.load_cohort_from_tfds(data_dir, spec), data_dir


def assert_batches_equal(a, b):
  a, b = list(a), list(b)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype, k
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def whole_bag(patient):
  """A patient's bag read directly with h5py: (features [N, D], coords [N, 2])."""
  feats, coords = [], []
  for path in patient.slide_paths:
    with h5py.File(path) as f:
      feats.append(f['features'][:])
      coords.append(f['coords'][:])
  return np.concatenate(feats), np.concatenate(coords)


def test_no_tensorflow_anywhere(built):
  assert importlib.util.find_spec('tensorflow') is None
  assert 'tensorflow' not in sys.modules


def test_cohort_identical_to_h5(built):
  h5, tf, _ = built
  assert type(tf) is ch.Cohort and isinstance(tf.bags, tfds_source.RecordSource)
  assert tf.class_names == h5.class_names and tf.feature_dim == h5.feature_dim == D
  for p, q in zip(h5.patients, tf.patients, strict=True):
    assert (p.patient_id, p.label, p.slide_ids, p.slide_patches, p.expression_id) == (
        q.patient_id, q.label, q.slide_ids, q.slide_patches, q.expression_id)
  for s in ('train', 'val', 'test', 'all'):
    np.testing.assert_array_equal(tf.split(s), h5.split(s))
  assert tf.genes.dtype == np.float32
  np.testing.assert_array_equal(tf.genes, h5.genes)
  assert tf.normalizer.genes == h5.normalizer.genes
  np.testing.assert_array_equal(tf.normalizer.mean, h5.normalizer.mean)
  np.testing.assert_array_equal(tf.normalizer.std, h5.normalizer.std)


@pytest.mark.parametrize('epoch', [0, 1])
def test_pretrain_batches_identical(built, epoch):
  h5, tf, _ = built
  kw = dict(batch_size=4, window=32, ratio=0.5, seed=3, epoch=epoch, drop_remainder=False)
  assert_batches_equal(pl.pretrain_batches(h5, 'train', **kw),
                       pl.pretrain_batches(tf, 'train', **kw))


def test_bag_and_gene_batches_identical(built):
  h5, tf, _ = built
  kw = dict(batch_size=3, seed=3, epoch=2, shuffle=True)
  assert_batches_equal(pl.bag_batches(h5, 'train', **kw), pl.bag_batches(tf, 'train', **kw))
  assert_batches_equal(pl.bag_batches(h5, 'test', batch_size=2, bucket_sizes=(16, 64)),
                       pl.bag_batches(tf, 'test', batch_size=2, bucket_sizes=(16, 64)))
  assert_batches_equal(pl.gene_batches(h5, 'train', batch_size=5, seed=3, epoch=1),
                       pl.gene_batches(tf, 'train', batch_size=5, seed=3, epoch=1))


def test_resumed_and_inline_batches_match_the_h5_source(built):
  h5, tf, _ = built
  kw = dict(batch_size=4, window=32, ratio=0.5, seed=3, epoch=1)
  assert_batches_equal(pl.pretrain_batches(tf, 'train', **kw, prefetch=0),
                       pl.pretrain_batches(h5, 'train', **kw))
  assert_batches_equal(pl.pretrain_batches(tf, 'train', **kw, start_batch=1),
                       list(pl.pretrain_batches(h5, 'train', **kw))[1:])


def test_records_hold_the_h5_rows(built):
  """Raw records via tfds.data_source (no gimp_jax reader), against h5py reads of the slides."""
  h5, _, data_dir = built
  patients = tfds.data_source(f'{tfds_source.NAME}/patients', data_dir=data_dir, download=False)
  chunks = tfds.data_source(f'{tfds_source.NAME}/patches', data_dir=data_dir, download=False)
  assert sorted(patients) == sorted(chunks) == ['test', 'train', 'val']
  shards = glob.glob(os.path.join(data_dir, tfds_source.NAME, 'patches', '*', '*.array_record-*'))
  assert len(shards) > 6  # shard_bytes forced several shards per split
  for split in patients:
    records = [patients[split][i] for i in range(len(patients[split]))]
    assert [r['index'] for r in records] == list(h5.split(split))
    for r in records:
      p = h5.patients[r['index']]
      feats, coords = whole_bag(p)
      got = [chunks[split][r['chunk_start'] + k] for k in range(r['num_chunks'])]
      assert r['num_chunks'] == -(-feats.shape[0] // CHUNK) and r['num_patches'] == len(feats)
      assert [c['chunk'] for c in got] == list(range(r['num_chunks']))
      assert {c['patient_index'] for c in got} == {r['index']}
      np.testing.assert_array_equal(np.concatenate([c['features'] for c in got]), feats)
      np.testing.assert_array_equal(np.concatenate([c['coords'] for c in got]), coords)
      assert r['label'] == p.label and r['split'].decode() == split
      np.testing.assert_array_equal(r['genes'], h5.genes[r['index']])
      np.testing.assert_array_equal(h5.normalizer.transform(r['genes_raw'][None])[0], r['genes'])


def test_bag_reads_any_rows(built):
  h5, tf, _ = built
  rng = np.random.default_rng(0)
  for i in rng.choice(len(h5.patients), 5, replace=False):
    feats, coords = whole_bag(h5.patients[i])
    rows = rng.integers(0, len(feats), 50)  # any order, repeats, across chunks
    bag = tf.bag(i)
    assert bag.num_patches == len(feats)
    np.testing.assert_array_equal(bag.features(rows), feats[rows])
    np.testing.assert_array_equal(bag.coords(rows), coords[rows])
    np.testing.assert_array_equal(bag.features(), feats)
    assert bag.features(np.array([], np.int64)).shape == (0, D)
    with pytest.raises(DataError, match='out of range'):
      bag.features(np.array([len(feats)]))


def test_spec_mismatch_is_a_data_error(built, inputs):
  _, spec = inputs
  data_dir = built[2]
  with pytest.raises(DataError, match=r'seed: built with 3, the config has 4'):
    tfds_source.load_cohort_from_tfds(data_dir, ch.CohortSpec('', '', '', feature_dim=D, seed=4))
  with pytest.raises(DataError, match='feature_dim: the dataset has 8, the config has 16'):
    tfds_source.load_cohort_from_tfds(data_dir, ch.CohortSpec('', '', '', feature_dim=16, seed=3))
  with pytest.raises(DataError, match='num_genes'):
    tfds_source.load_cohort_from_tfds(data_dir, ch.CohortSpec('', '', '', feature_dim=D, seed=3,
                                                              num_genes=10))
  with pytest.raises(DataError, match='no prepared TFDS dataset'):
    tfds_source.load_cohort_from_tfds(os.path.join(data_dir, 'nothing'), spec)


def test_stored_normaliser(built, inputs):
  """Given normalisers: the dataset's own, other statistics (renormalised), another gene list."""
  h5, tf, data_dir = built
  _, spec = inputs
  same = genes_lib.GeneNormalizer.from_dict(h5.normalizer.to_dict())
  np.testing.assert_array_equal(
      tfds_source.load_cohort_from_tfds(data_dir, spec, same).genes, h5.genes)
  n = h5.normalizer
  other = genes_lib.GeneNormalizer(n.genes, n.mean + 0.5, n.std * 2, n.log_transform,
                                   n.strip_versions, n.std_floor)
  got = tfds_source.load_cohort_from_tfds(data_dir, spec, other)
  np.testing.assert_array_equal(got.genes, ch.load_cohort(spec, other).genes)
  assert got.normalizer is other
  fewer = genes_lib.GeneNormalizer(n.genes[:5], n.mean[:5], n.std[:5])
  with pytest.raises(DataError, match='gene list'):
    tfds_source.load_cohort_from_tfds(data_dir, spec, fewer)


def test_float16_manual_dir_and_stale_reuse(inputs, tmp_path):
  """Inputs found in the manual folder; float16 features; a reused patches config of another
  chunking is caught, and --overwrite rebuilds it."""
  folder, spec = inputs
  bare = ch.CohortSpec('', '', '', feature_dim=D, seed=3)
  data_dir = str(tmp_path / 'tfds')
  h5 = ch.load_cohort(spec)
  tf = tfds_builder.build(bare, data_dir, manual_dir=folder, chunk_size=CHUNK,
                          features_dtype='float16')
  meta = json.load(open(glob.glob(os.path.join(data_dir, tfds_source.NAME, 'patients', '*',
                                               'metadata.json'))[0]))
  assert meta['patches_config'] == 'patches_float16' and meta['features_dtype'] == 'float16'
  for i in (0, 7):
    feats, _ = whole_bag(h5.patients[i])
    np.testing.assert_array_equal(tf.bag(i).features(), feats.astype(np.float16).astype(np.float32))
  np.testing.assert_array_equal(tf.genes, h5.genes)
  with pytest.raises(DataError, match='fingerprint'):
    tfds_builder.build(bare, data_dir, manual_dir=folder, chunk_size=CHUNK // 2,
                       features_dtype='float16')
  tf = tfds_builder.build(bare, data_dir, manual_dir=folder, chunk_size=CHUNK // 2,
                          features_dtype='float16', overwrite=True)
  assert tf.bags.chunks.chunk_size == CHUNK // 2
  assert os.path.isfile(os.path.join(folder, 'labels.csv'))  # the inputs are left alone


def test_resolve_inputs(tmp_path):
  (tmp_path / 'expression').mkdir()
  spec = tfds_builder.resolve_inputs(ch.CohortSpec('my.csv', '/abs/features', ''), str(tmp_path))
  assert (spec.labels, spec.features_dir, spec.expression) == (
      str(tmp_path / 'my.csv'), '/abs/features', str(tmp_path / 'expression'))
  with pytest.raises(DataError, match='data.labels'):
    tfds_builder.resolve_inputs(ch.CohortSpec('', '/a', '/b'), None)
  shutil.rmtree(tmp_path / 'expression')
  with pytest.raises(DataError, match='expression: none of'):
    tfds_builder.resolve_inputs(ch.CohortSpec('/a', '/b', ''), str(tmp_path))


def test_command_line(tmp_path):
  folder = tmp_path / 'manual'
  synthetic.make_cohort(str(folder), seed=1, patients=10, genes=100, min_patches=5, max_patches=20,
                        feature_dim=32)
  out = tmp_path / 'tfds'
  cmd = [sys.executable, '-m', 'gimp_jax.data.tfds_builder',
         f'--config={REPO}/configs/nsclc.py:tiny', f'--out={out}', f'--manual_dir={folder}',
         '--chunk_size=8']
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '10 patients' in done.stdout and '--config.data.source=tfds' in done.stdout
  c = tfds_source.load_cohort_from_tfds(str(out))
  assert c.feature_dim == 32 and c.num_genes == 96 and len(c.patients) == 10
  bad = subprocess.run(cmd[:-2] + [f'--manual_dir={tmp_path / "absent"}'], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and 'gimp_jax: error: ' in bad.stderr


def test_check_spec_ignores_split_settings_when_the_csv_fixed_the_splits():
  spec = ch.CohortSpec('', '', '', feature_dim=D, seed=3, class_names=('a', 'b'))
  meta = {'spec': tfds_source.spec_record(spec), 'split_source': 'column',
          'class_names': ['a', 'b'], 'feature_dim': D}
  moved = ch.CohortSpec('', '', '', feature_dim=None, seed=9, split_fractions=(0.5, 0.25, 0.25))
  tfds_source.check_spec(meta, moved, 'ds')  # seed and fractions do not matter, D not asked
  with pytest.raises(DataError, match="ds: metadata.json: spec field class_names"):
    tfds_source.check_spec(meta, ch.CohortSpec('', '', '', D, seed=3, class_names=('b', 'a')),
                           'ds')
  with pytest.raises(DataError, match=r'(?s)seed: built with 3.*split_fractions'):
    tfds_source.check_spec(dict(meta, split_source='seed'), moved, 'ds')
