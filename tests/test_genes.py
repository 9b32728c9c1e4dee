"""Gene list, alignment and normalisation, against NumPy computations written here."""

import json

from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st
import numpy as np
import pytest

from gimp_jax.data import genes as genes_lib
from gimp_jax.errors import DataError


@pytest.mark.parametrize('gene,key', [
    ('ENSG00000000003.13', 'ENSG00000000003'),
    ('ENSG00000228572.7_PAR_Y', 'ENSG00000228572_PAR_Y'),
    ('ENSMUSG00000000001.4', 'ENSMUSG00000000001'),
    ('ENSG00000000003', 'ENSG00000000003'),
    ('RP11-34P13.7', 'RP11-34P13.7'),  # a clone-based symbol: the dot is not a version
    ('TP53', 'TP53'),
])
def test_strip_version(gene, key):
  assert genes_lib.strip_version(gene) == key


def test_align_reorders_strips_and_reports_missing():
  table = ['ENSG00000000005.5', 'ENSG00000000003.13', 'ENSG00000000419.11']
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  out = genes_lib.align_genes(table, values, ['ENSG00000000003', 'ENSG00000000005'], True, 'm.tsv')
  np.testing.assert_array_equal(out, values[:, [1, 0]])
  wanted = [f'ENSG0000000{i:04d}' for i in range(20)]
  with pytest.raises(DataError) as e:
    genes_lib.align_genes(table, values, wanted, True, 'm.tsv')
  msg = str(e.value)
  assert msg == ('m.tsv: genes: 18 of 20 genes of the gene list are missing (first: '
                 'ENSG00000000000, ENSG00000000001, ENSG00000000002, ENSG00000000004, '
                 'ENSG00000000006)')
  with pytest.raises(DataError, match='ENSG00000000003 appears twice once versions are stripped'):
    genes_lib.align_genes(['ENSG00000000003.1', 'ENSG00000000003.2'], values[:, :2],
                          ['ENSG00000000003'], True)
  # Without stripping, versioned IDs must match exactly.
  with pytest.raises(DataError, match='1 of 1 genes'):
    genes_lib.align_genes(table, values, ['ENSG00000000003'], False)


def test_select_genes_trims_by_score_in_table_order_and_pads():
  genes = ['a', 'b', 'c', 'd', 'e']
  assert genes_lib.select_genes(genes, 0) == tuple(genes)
  assert genes_lib.select_genes(genes, 3, np.array([0.1, 5, 0.2, 3, 4])) == ('b', 'd', 'e')
  padded = genes_lib.select_genes(genes, 7)
  assert padded == ('a', 'b', 'c', 'd', 'e', '<pad_0>', '<pad_1>')
  out = genes_lib.align_genes(genes, np.ones((2, 5), np.float32), padded, False)
  np.testing.assert_array_equal(out, np.concatenate([np.ones((2, 5)), np.zeros((2, 2))], 1))


def test_normalizer_matches_numpy_and_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.gamma(1.5, 10.0, (30, 6)).astype(np.float32)
  train[:, 4] = 7.0  # constant on the training split
  genes = [f'g{i}' for i in range(6)]
  norm = genes_lib.GeneNormalizer.fit(train, genes)
  logged = np.log2(train.astype(np.float64) + 1)
  np.testing.assert_allclose(norm.mean, logged.mean(0), rtol=1e-6)
  expected_std = logged.std(0)
  expected_std[4] = 1.0  # below the floor: centred only
  np.testing.assert_allclose(norm.std, expected_std, rtol=1e-6)
  test = rng.gamma(1.5, 10.0, (4, 6)).astype(np.float32)
  np.testing.assert_allclose(norm.transform(test),
                             (np.log2(test.astype(np.float64) + 1) - logged.mean(0)) / expected_std,
                             rtol=1e-5, atol=1e-5)
  assert np.isfinite(norm.transform(test)).all()
  for name in ('n.npz', 'n.json'):
    norm.save(str(tmp_path / name))
    back = genes_lib.GeneNormalizer.load(str(tmp_path / name))
    assert back.genes == norm.genes and back.log_transform and back.strip_versions
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
  raw = genes_lib.GeneNormalizer.fit(np.log2(train + 1), genes, log_transform=False)
  np.testing.assert_allclose(raw.mean, norm.mean, rtol=1e-5)


def test_normalizer_errors(tmp_path):
  with pytest.raises(DataError, match='x.tsv: values: negative expression values'):
    genes_lib.GeneNormalizer.fit(np.array([[-2.0, 1.0]]), ['a', 'b'], source='x.tsv')
  pickled = tmp_path / 'obj.npz'
  np.savez(pickled, genes=np.array([{'a': 1}], dtype=object), mean=np.zeros(1), std=np.ones(1))
  with pytest.raises(DataError, match='cannot read gene normaliser'):
    genes_lib.GeneNormalizer.load(str(pickled))  # object arrays need pickle: refused
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps({'genes': ['a', 'b'], 'mean': [0.0], 'std': [1.0],
                             'log_transform': True, 'strip_versions': True, 'std_floor': 1e-6}))
  with pytest.raises(DataError, match='inconsistent gene normaliser'):
    genes_lib.GeneNormalizer.load(str(bad))
  with pytest.raises(DataError, match='cannot read gene normaliser'):
    genes_lib.GeneNormalizer.load(str(tmp_path / 'missing.npz'))
  norm = genes_lib.GeneNormalizer.fit(np.ones((3, 2)), ['a', 'b'])
  with pytest.raises(DataError, match=r'expected \[S, 2\]'):
    norm.transform(np.ones((3, 3)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), offset=st.integers(0, 2000), suffix=st.sampled_from(
    ['.npz', '.json']))
def test_fuzz_normaliser_files_raise_only_data_error(tmp_path, data, offset, suffix):
  path = str(tmp_path / f'n{suffix}')
  genes_lib.GeneNormalizer.fit(np.arange(6.0).reshape(2, 3), ['a', 'b', 'c']).save(path)
  blob = bytearray(open(path, 'rb').read())
  offset %= len(blob)
  blob[offset:offset + len(data)] = data
  with open(path, 'wb') as f:
    f.write(bytes(blob))
  try:
    norm = genes_lib.GeneNormalizer.load(path)
    assert norm.num_genes == norm.mean.size == norm.std.size
  except DataError:
    pass
