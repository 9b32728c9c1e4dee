"""Cohort assembly from real-layout files: slides per patient, matching, splits, every problem."""

import h5py
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st
import numpy as np
import pytest

from gimp_jax.data import cohort as ch
from gimp_jax.data import labels as labels_lib
from gimp_jax.data import genes as genes_lib
from gimp_jax.errors import DataError

D = 8
GENE_IDS = [f'ENSG{i:011d}.{i % 3 + 1}' for i in range(12)]


def write_h5(path, n, seed, coord_dtype=np.int64):
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((n, D)).astype(np.float32)
  coords = (rng.integers(0, 50, (n, 2)) * 256).astype(coord_dtype)
  with h5py.File(path, 'w') as f:
    f.create_dataset('features', data=feats, chunks=(min(32, n), D), maxshape=(None, D))
    f.create_dataset('coords', data=coords, chunks=(min(32, n), 2), maxshape=(None, 2))
  return feats


def build(tmp_path, patients=20, two_slides=(0, 3), split_col=None, expr_values=None,
          extra_rows=(), skip_expr=(), skip_h5=()):
  """Writes a cohort: patient i = TCGA-AA-{i:04d}, label LUAD/LUSC alternating."""
  fdir = tmp_path / 'features'
  fdir.mkdir(parents=True, exist_ok=True)
  rows = ['patient_id,slide_id,label' + (',split' if split_col else '')]
  feats = {}
  for i in range(patients):
    pid = f'TCGA-AA-{i:04d}'
    for k in range(2 if i in two_slides else 1):
      sid = f'{pid}-DX{k}'
      if i not in skip_h5:
        feats[sid] = write_h5(fdir / f'{sid}.h5', 5 + 3 * i + k, 100 * i + k,
                              np.int32 if k else np.int64)
      row = f'{pid},{sid},{"LUAD" if i % 2 else "LUSC"}'
      rows.append(row + (f',{split_col(i)}' if split_col else ''))
  rows += list(extra_rows)
  (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
  rng = np.random.default_rng(0)
  if expr_values is None:
    expr_values = rng.gamma(2.0, 5.0, (patients, len(GENE_IDS)))
  samples = [f'TCGA-AA-{i:04d}-01A' for i in range(patients) if i not in skip_expr]
  values = [expr_values[i] for i in range(patients) if i not in skip_expr]
  lines = ['\t'.join(['Ensembl_ID'] + samples[::-1])]
  for j, g in enumerate(GENE_IDS):
    lines.append('\t'.join([g] + [repr(float(v[j])) for v in values[::-1]]))
  (tmp_path / 'expr.tsv').write_text('\n'.join(lines) + '\n')
  spec = ch.CohortSpec(str(tmp_path / 'labels.csv'), str(fdir), str(tmp_path / 'expr.tsv'),
                       feature_dim=D)
  return spec, feats, expr_values


def test_load_basic_cohort(tmp_path):
  spec, feats, values = build(tmp_path)
  c = ch.load_cohort(spec)
  assert len(c.patients) == 20 and c.class_names == ('LUAD', 'LUSC')
  assert c.num_classes == 2 and c.num_genes == 12 and c.feature_dim == D
  assert [c.splits[s].size for s in ch.SPLITS] == [12, 4, 4]
  p3 = c.patients[3]
  assert p3.slide_ids == ('TCGA-AA-0003-DX0', 'TCGA-AA-0003-DX1')
  assert p3.label == 0 and p3.expression_id == 'TCGA-AA-0003-01A'
  assert p3.num_patches == 14 + 15
  bag = c.bag(3)
  np.testing.assert_array_equal(
      bag.features(), np.concatenate([feats['TCGA-AA-0003-DX0'], feats['TCGA-AA-0003-DX1']]))
  assert c.normalizer.genes[0] == 'ENSG00000000000'  # versions stripped
  train = c.splits['train']
  logged = np.log2(values.astype(np.float32).astype(np.float64) + 1)
  mean, std = logged[train].mean(0), logged[train].std(0)
  np.testing.assert_allclose(c.genes, (logged - mean) / std, rtol=1e-4, atol=1e-4)


def test_normalisation_fitted_on_train_only(tmp_path):
  spec, _, values = build(tmp_path / 'a')
  c1 = ch.load_cohort(spec)
  changed = values.copy()
  held_out = np.concatenate([c1.splits['val'], c1.splits['test']])
  changed[held_out] = changed[held_out] * 50 + 1000
  spec2, _, _ = build(tmp_path / 'b', expr_values=changed)
  c2 = ch.load_cohort(spec2)
  assert all(np.array_equal(c1.splits[s], c2.splits[s]) for s in ch.SPLITS)
  np.testing.assert_array_equal(c1.normalizer.mean, c2.normalizer.mean)
  np.testing.assert_array_equal(c1.normalizer.std, c2.normalizer.std)
  np.testing.assert_array_equal(c1.genes[c1.splits['train']], c2.genes[c2.splits['train']])
  changed = values.copy()
  changed[c1.splits['train'][0]] *= 10
  spec3, _, _ = build(tmp_path / 'c', expr_values=changed)
  assert not np.array_equal(ch.load_cohort(spec3).normalizer.mean, c1.normalizer.mean)


def test_split_column(tmp_path):
  spec, _, _ = build(tmp_path, split_col=lambda i: ['train', 'val', 'test', 'Train'][i % 4])
  c = ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'num_folds': 5}))  # the column wins
  ids = lambda s: [c.patients[i].patient_id for i in c.splits[s]]
  assert ids('val') == [f'TCGA-AA-{i:04d}' for i in range(1, 20, 4)]
  assert ids('test') == [f'TCGA-AA-{i:04d}' for i in range(2, 20, 4)]
  assert len(ids('train')) == 10


def test_kfold(tmp_path):
  spec, _, _ = build(tmp_path)
  folds = [ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'num_folds': 5, 'fold': k}))
           for k in range(5)]
  tests = np.concatenate([f.splits['test'] for f in folds])
  assert np.array_equal(np.sort(tests), np.arange(20))  # every patient tested exactly once
  assert np.array_equal(folds[0].splits['val'], folds[1].splits['test'])


def test_patient_in_two_splits_and_other_label_errors(tmp_path):
  spec, _, _ = build(tmp_path, split_col=lambda i: 'train', extra_rows=[
      'TCGA-AA-0001,TCGA-AA-0001-DX9,LUAD,test',  # patient 1 also in test
      'TCGA-AA-0002,TCGA-AA-0002-DX0,LUSC,train',  # duplicated slide
      'TCGA-AA-0004,TCGA-AA-0004-DX8,LUAD,train',  # conflicting label
  ])
  with pytest.raises(DataError) as e:
    ch.load_cohort(spec)
  msg = str(e.value)
  assert 'patient TCGA-AA-0001: split: two splits (test, train)' in msg
  assert 'patient TCGA-AA-0002: slide_id TCGA-AA-0002-DX0 duplicated' in msg
  assert 'patient TCGA-AA-0004: label: conflicting labels (LUAD, LUSC)' in msg
  lines = msg.split('\n')
  assert sum(line.startswith(spec.labels) for line in lines) == 3
  # The added slides have no .h5 either: reported in the same error.
  assert sum('feature file missing' in line for line in lines) == 2 and len(lines) == 5


@pytest.mark.parametrize('body,fragment', [
    ('patient,slide_id,label\n', 'missing column(s) patient_id'),
    ('patient_id,slide_id,label\nA,,LUAD\n', 'line 2: patient A: empty slide_id'),
    ('patient_id,slide_id,label,split\nA,s,LUAD,holdout\n', "split: 'holdout' is not"),
    ('patient_id,slide_id,label\nA,s\n', 'line 2: 2 fields, the header has 3'),
    ('patient_id,slide_id,label\nA,s,"LUAD\nB,t,LUSC\n', 'line 3: a field spans several lines'),
    ('', 'file is empty'),
])
def test_label_file_errors(tmp_path, body, fragment):
  (tmp_path / 'l.csv').write_text(body)
  with pytest.raises(DataError, match='l.csv') as e:
    labels_lib.read_labels(str(tmp_path / 'l.csv'))
  assert fragment in str(e.value)


def test_case_id_alias_and_class_names(tmp_path):
  spec, _, _ = build(tmp_path)
  text = (tmp_path / 'labels.csv').read_text().replace('patient_id', 'case_id', 1)
  (tmp_path / 'labels.csv').write_text(text)
  c = ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'class_names': ('LUSC', 'LUAD')}))
  assert c.patients[0].label == 0 and c.patients[1].label == 1  # patient 0 is LUSC
  with pytest.raises(DataError, match=r'label: unknown value\(s\) LUSC'):
    ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'class_names': ('LUAD', 'OTHER')}))


def test_missing_modality_fails_or_drops(tmp_path):
  spec, _, _ = build(tmp_path, skip_expr=(2,), skip_h5=(5,))
  with pytest.raises(DataError) as e:
    ch.load_cohort(spec)
  lines = str(e.value).split('\n')
  assert len(lines) == 2
  assert any('expr.tsv: patient TCGA-AA-0002: column: no expression column' in x for x in lines)
  assert any('TCGA-AA-0005-DX0.h5: patient TCGA-AA-0005, slide TCGA-AA-0005-DX0: feature file '
             'missing' in x for x in lines)
  c = ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'drop_incomplete': True}))
  kept = [p.patient_id for p in c.patients]
  assert len(kept) == 18 and 'TCGA-AA-0002' not in kept and 'TCGA-AA-0005' not in kept
  assert sum(c.splits[s].size for s in ch.SPLITS) == 18


def test_scan_cohort_reports_everything_at_once(tmp_path):
  spec, _, values = build(tmp_path)
  fdir = tmp_path / 'features'
  with h5py.File(fdir / 'TCGA-AA-0006-DX0.h5', 'r+') as f:  # NaN inside the data
    f['features'][2, 1] = np.nan
  with h5py.File(fdir / 'TCGA-AA-0007-DX0.h5', 'w') as f:  # wrong width
    f.create_dataset('features', data=np.zeros((4, D + 1), np.float32))
    f.create_dataset('coords', data=np.zeros((4, 2), np.int32))
  with h5py.File(fdir / 'TCGA-AA-0008-DX0.h5', 'w') as f:  # no coords
    f.create_dataset('features', data=np.zeros((4, D), np.float32))
  (fdir / 'TCGA-AA-0009-DX0.h5').write_bytes(b'\x89HDF\r\n\x1a\n' + b'\0' * 40)  # truncated
  write_h5(fdir / 'ORPHAN.h5', 3, 0)  # a slide without a label row
  text = (tmp_path / 'expr.tsv').read_text().split('\n')
  text[1] = text[1].replace(text[1].split('\t')[3], 'nan')  # NaN for one patient
  (tmp_path / 'expr.tsv').write_text('\n'.join(text))
  problems = ch.scan_cohort(spec)[1]
  joined = '\n'.join(problems)
  assert len(problems) == 6, joined
  assert 'TCGA-AA-0006-DX0.h5: patient TCGA-AA-0006, slide TCGA-AA-0006-DX0: features: 1 rows ' \
         'contain NaN/Inf (first row 2)' in joined
  assert 'patient TCGA-AA-0007, slide TCGA-AA-0007-DX0: features: width 9, expected 8' in joined
  assert 'patient TCGA-AA-0008, slide TCGA-AA-0008-DX0: coords: dataset missing' in joined
  assert 'patient TCGA-AA-0009, slide TCGA-AA-0009-DX0: not a readable HDF5 file' in joined
  assert '1 slide file(s) have no row' in joined and 'ORPHAN' in joined
  assert 'values: column TCGA-AA-0017-01A has 1 NaN/Inf values (first gene ENSG00000000000)' \
         in joined
  # load_cohort does not scan data, but still refuses the header-level problems.
  with pytest.raises(DataError) as e:
    ch.load_cohort(spec)
  assert 'NaN/Inf (first row 2)' not in str(e.value) and 'width 9' in str(e.value)


def test_stored_gene_list_when_fine_tuning(tmp_path):
  spec, _, _ = build(tmp_path)
  stored = genes_lib.GeneNormalizer.fit(np.ones((2, 3)), ['ENSG00000000004', 'ENSG00000000001',
                                                          'ENSG00000000099'])
  with pytest.raises(DataError, match=r'genes: 1 of 3 genes of the gene list are missing \(first: '
                     r'ENSG00000000099\)'):
    ch.load_cohort(spec, stored)
  stored = genes_lib.GeneNormalizer.fit(np.full((2, 2), 3.0),
                                        ['ENSG00000000004', 'ENSG00000000001'])
  c = ch.load_cohort(spec, stored)
  assert c.normalizer is stored and c.genes.shape == (20, 2)
  with pytest.raises(DataError, match='stored gene list has 2 genes but num_genes is 5'):
    ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'num_genes': 5}), stored)


def test_num_genes_trims_by_training_variance(tmp_path):
  spec, _, _ = build(tmp_path)
  c = ch.load_cohort(ch.CohortSpec(**{**spec.__dict__, 'num_genes': 5}))
  assert c.num_genes == 5
  full = ch.load_cohort(spec)
  train = full.splits['train']
  logged = full.genes * full.normalizer.std + full.normalizer.mean  # undo the standardisation
  top = np.sort(np.argsort(-logged[train].var(0), kind='stable')[:5])
  assert c.normalizer.genes == tuple(full.normalizer.genes[i] for i in top)


def test_from_mapping_ignores_other_keys():
  spec = ch.CohortSpec.from_mapping(
      {'labels': 'l', 'features_dir': 'f', 'expression': 'e', 'source': 'h5',
       'split_fractions': [0.5, 0.25, 0.25], 'bucket_sizes': (1,)}, seed=3)
  assert spec.split_fractions == (0.5, 0.25, 0.25) and spec.seed == 3


_CELLS = ['patient_id', 'slide_id', 'label', 'split', 'case_id', 'A', 's1', 'LUAD', 'train', 'val',
          'holdout', '', '"q,x"', 'expression_id', '\x00']


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(st.sampled_from(_CELLS), min_size=1, max_size=5), max_size=6)
    .map(lambda rows: '\n'.join(','.join(r) for r in rows).encode())))
def test_fuzz_label_files_raise_only_data_error(tmp_path, data):
  path = tmp_path / 'labels.csv'
  path.write_bytes(data)
  try:
    rows = labels_lib.read_labels(str(path))
    assert rows and all(r.patient_id and r.slide_id and r.label for r in rows)
  except DataError:
    pass


def test_scan_cohort_drops_patients_with_broken_data(tmp_path):
  spec, _, _ = build(tmp_path)
  with h5py.File(tmp_path / 'features' / 'TCGA-AA-0006-DX0.h5', 'r+') as f:
    f['features'][2, 1] = np.inf  # only a full read finds it
  assert ch.load_cohort(spec).patients  # headers are fine
  cohort, problems = ch.scan_cohort(spec)
  assert cohort is None and len(problems) == 1 and 'TCGA-AA-0006' in problems[0]
  cohort, problems = ch.scan_cohort(ch.CohortSpec(**{**spec.__dict__, 'drop_incomplete': True}))
  assert problems == [] and 'TCGA-AA-0006' not in [p.patient_id for p in cohort.patients]


def test_missing_inputs_reported_together(tmp_path):
  spec, _, _ = build(tmp_path)
  spec = ch.CohortSpec(spec.labels, str(tmp_path / 'nofeatures'), str(tmp_path / 'noexpr.tsv'))
  problems = ch.scan_cohort(spec)[1]
  assert problems == [f'{tmp_path}/nofeatures: features_dir: no such folder',
                      f'{tmp_path}/noexpr.tsv: expression: no such file or folder']
