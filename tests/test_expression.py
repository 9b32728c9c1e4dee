"""Expression readers: Xena matrices, GDC per-sample folders (HTSeq and STAR), sample matching."""

import gzip

from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st
import numpy as np
import pytest

from gimp_jax.data import expression as expr
from gimp_jax.errors import DataError

GENES = ['ENSG00000000003.13', 'ENSG00000000005.5', 'ENSG00000000419.11', 'ENSG00000228572.7_PAR_Y']
SAMPLES = ['TCGA-05-4244-01A', 'TCGA-05-4249-01A', 'TCGA-05-4249-11A']


def write_matrix(path, genes, samples, values, delim='\t', first='Ensembl_ID', quote=False):
  q = (lambda x: f'"{x}"') if quote else (lambda x: x)
  lines = [delim.join([q(first)] + [q(s) for s in samples])]
  for g, row in zip(genes, values.T):
    lines.append(delim.join([q(g)] + [repr(float(v)) for v in row]))
  text = '\n'.join(lines) + '\n'
  if str(path).endswith('.gz'):
    with gzip.open(path, 'wt') as f:
      f.write(text)
  else:
    path.write_text(text)
  return str(path)


@pytest.fixture
def values():
  return np.random.default_rng(0).gamma(2.0, 3.0, (len(SAMPLES), len(GENES))).astype(np.float32)


@pytest.mark.parametrize('name,delim,quote', [('x.tsv', '\t', False), ('x.csv', ',', True),
                                              ('x.tsv.gz', '\t', False)])
def test_matrix_layouts(tmp_path, values, name, delim, quote):
  path = write_matrix(tmp_path / name, GENES, SAMPLES, values, delim, quote=quote)
  src = expr.open_expression(path)
  assert src.sample_ids == tuple(SAMPLES)
  assert src.gene_ids() == tuple(GENES)
  table = src.read(['TCGA-05-4249-11A', 'TCGA-05-4244-01A'])
  assert table.samples == ('TCGA-05-4249-11A', 'TCGA-05-4244-01A')
  np.testing.assert_array_equal(table.values, values[[2, 0]])
  assert expr.read_gene_ids(path, strip_versions=True) == (
      'ENSG00000000003', 'ENSG00000000005', 'ENSG00000000419', 'ENSG00000228572_PAR_Y')


@pytest.mark.parametrize('body,fragment', [
    ('Ensembl_ID\tA\tB\nG1\t1\t2\nG2\t3\n', 'line 3: 2 fields, the header has 3'),
    ('Ensembl_ID\tA\tA\nG1\t1\t2\n', 'duplicated IDs (first: A)'),
    ('Ensembl_ID\tA\tB\nG1\t1\t2\nG1\t3\t4\n', 'gene IDs: 1 duplicated IDs (first: G1)'),
    ('Ensembl_ID\tA\tB\n', 'no gene rows'),
    ('', 'file is empty'),
    ('ENSG00000000003.13\t4.5\nENSG00000000005.5\t0\n', 'header: no sample IDs'),
])
def test_matrix_errors_name_the_file(tmp_path, body, fragment):
  path = tmp_path / 'bad.tsv'
  path.write_text(body)
  with pytest.raises(DataError) as e:
    expr.open_expression(str(path)).read()
  assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_missing_sample_and_path(tmp_path, values):
  path = write_matrix(tmp_path / 'm.tsv', GENES, SAMPLES, values)
  with pytest.raises(DataError, match='samples not found: NOPE'):
    expr.open_expression(path).read(['NOPE'])
  with pytest.raises(DataError, match='no such file or folder'):
    expr.open_expression(str(tmp_path / 'absent.tsv'))


def _htseq(path, genes, vals):
  rows = [f'{g}\t{v}' for g, v in zip(genes, vals)]
  rows += ['__no_feature\t123', '__ambiguous\t4']
  path.write_text('\n'.join(rows) + '\n')


def _star(path, genes, vals):
  header = ('gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\t'
            'tpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded')
  rows = ['# gene-model: GENCODE v36', header,
          'N_unmapped\t\t\t2133467\t2133467\t2133467\t\t\t',
          'N_multimapping\t\t\t1\t1\t1\t\t\t']
  rows += [f'{g}\tSYM{i}\tprotein_coding\t{10 * i}\t{5 * i}\t{5 * i}\t{v * 2}\t{v}\t{v * 3}'
           for i, (g, v) in enumerate(zip(genes, vals))]
  path.write_text('\n'.join(rows) + '\n')


def test_gdc_folder_htseq_and_star(tmp_path, values):
  folder = tmp_path / 'gdc'
  (folder / 'uuid1').mkdir(parents=True)
  (folder / 'uuid2').mkdir()
  (folder / 'logs').mkdir()
  (folder / 'MANIFEST.txt').write_text('id\tfilename\n')
  (folder / 'logs' / 'x.log').write_text('junk')
  _htseq(folder / 'uuid1' / 'TCGA-05-4244-01A.FPKM.txt', GENES, values[0])
  # Same genes in another order: aligned to the first file's order.
  _star(folder / 'uuid2' / 'TCGA-05-4249-01A.rna_seq.tsv', GENES[::-1], values[1][::-1])
  src = expr.open_expression(str(folder))
  assert src.sample_ids == ('TCGA-05-4244-01A', 'TCGA-05-4249-01A')
  table = src.read()
  assert table.genes == tuple(GENES)
  np.testing.assert_allclose(table.values, values[:2], rtol=1e-6)
  genes, vals = expr.read_sample_file(str(folder / 'uuid2' / 'TCGA-05-4249-01A.rna_seq.tsv'),
                                      'tpm_unstranded')
  np.testing.assert_allclose(vals, 2 * values[1][::-1], rtol=1e-6)
  _, vals = expr.read_sample_file(str(folder / 'uuid2' / 'TCGA-05-4249-01A.rna_seq.tsv'), 3)
  np.testing.assert_array_equal(vals, 10 * np.arange(len(GENES)))
  assert genes == tuple(GENES[::-1])


def test_gdc_manifest_maps_file_names(tmp_path, values):
  folder = tmp_path / 'gdc'
  folder.mkdir()
  _htseq(folder / 'a1b2.FPKM.txt', GENES, values[0])
  _htseq(folder / 'c3d4.FPKM.txt', GENES, values[1])
  _htseq(folder / 'unlisted.FPKM.txt', GENES, values[2])
  manifest = tmp_path / 'sheet.tsv'
  manifest.write_text('File ID\tFile Name\tCase ID\tSample ID\n'
                      'x\ta1b2.FPKM.txt\tTCGA-05-4244\tTCGA-05-4244-01A\n'
                      'y\tc3d4.FPKM.txt\tTCGA-05-4249\tTCGA-05-4249-01A\n')
  src = expr.open_expression(str(folder), manifest=str(manifest))
  assert src.sample_ids == ('TCGA-05-4244-01A', 'TCGA-05-4249-01A')
  np.testing.assert_allclose(src.read(['TCGA-05-4249-01A']).values, values[[1]], rtol=1e-6)


@pytest.mark.parametrize('body,col,fragment', [
    ('G1\t1\nG2\tabc\n', None, "line 2: gene G2: value 'abc' is not a number"),
    ('G1\t1\nG1\t2\n', None, 'duplicated IDs'),
    ('gene_id\tx\nG1\t1\n', 'fpkm', "value column 'fpkm' not found"),
    ('# only a comment\n__no_feature\t3\n', None, 'no gene rows'),
    ('G1\t1\nG2\n', None, 'line 2: gene G2: no value column 1'),
])
def test_sample_file_errors(tmp_path, body, col, fragment):
  path = tmp_path / 's.tsv'
  path.write_text(body)
  with pytest.raises(DataError) as e:
    expr.read_sample_file(str(path), col)
  assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_gdc_folder_gene_mismatch(tmp_path, values):
  folder = tmp_path / 'gdc'
  folder.mkdir()
  _htseq(folder / 'S1.txt', GENES, values[0])
  _htseq(folder / 'S2.txt', GENES[:3], values[1][:3])
  with pytest.raises(DataError, match=r'S2.txt: gene IDs differ .*\(1 missing, 0 extra\)'):
    expr.open_expression(str(folder)).read()


def test_match_samples_rules():
  samples = ['TCGA-05-4244-01A', 'TCGA-05-4244-11A', 'TCGA-05-4249-11A', 'TCGA-05-4250-01A',
             'TCGA-05-4250-01B', 'PAT-7', 'TCGA-05-4251-01A']
  patients = ['TCGA-05-4244', 'TCGA-05-4249', 'TCGA-05-4250', 'PAT-7', 'TCGA-05-9999',
              'TCGA-05-4251']
  matched, problems = expr.match_samples(patients, samples,
                                         explicit={'TCGA-05-4251': 'TCGA-05-4244-11A'})
  assert matched == {'TCGA-05-4244': 'TCGA-05-4244-01A', 'PAT-7': 'PAT-7',
                     'TCGA-05-4251': 'TCGA-05-4244-11A'}
  assert 'no expression column of sample type 01' in problems['TCGA-05-4249']
  assert 'ambiguous' in problems['TCGA-05-4250'] and 'TCGA-05-4250-01B' in problems['TCGA-05-4250']
  assert problems['TCGA-05-9999'] == 'no expression column'
  matched, _ = expr.match_samples(['TCGA-05-4249'], samples, preferred_types=None)
  assert matched == {'TCGA-05-4249': 'TCGA-05-4249-11A'}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode('latin-1')),
    st.lists(st.lists(st.sampled_from(['ENSG1.2', 'x', '1.5', '', 'nan', '-3', '"q"', '#c',
                                       '__a', 'N_b', '1e9', 'TCGA-05-4244-01A']),
                      min_size=1, max_size=5), max_size=6)
    .map(lambda rows: '\n'.join('\t'.join(r) for r in rows))))
def test_fuzz_tables_raise_only_data_error(tmp_path, text):
  matrix = tmp_path / 'fuzz.tsv'
  matrix.write_bytes(text.encode('latin-1', errors='replace'))
  try:
    table = expr.open_expression(str(matrix)).read()
    assert table.values.shape == (len(table.samples), len(table.genes))
  except DataError:
    pass
  try:
    genes, vals = expr.read_sample_file(str(matrix))
    assert len(genes) == vals.size
  except DataError:
    pass


def test_matrix_cells_that_are_not_numbers_are_all_found(tmp_path, values):
  """NA and empty cells read as NaN; every other non-number is listed with its line and gene."""
  path = write_matrix(tmp_path / 'm.tsv', GENES, SAMPLES, values)
  lines = open(path).read().splitlines()
  cells = {(1, 1): 'NA', (2, 2): '', (3, 1): 'abc', (4, 3): '1,5'}  # (line index, column)
  for (i, j), text in cells.items():
    parts = lines[i].split('\t')
    parts[j] = text
    lines[i] = '\t'.join(parts)
  open(path, 'w').write('\n'.join(lines) + '\n')
  table = expr.open_expression(path).read()
  want = values.copy()
  want[0, 0] = want[1, 1] = want[0, 2] = want[2, 3] = np.nan
  np.testing.assert_array_equal(table.values, want)
  assert table.bad == {SAMPLES[0]: (path, ((4, GENES[2], 'abc'),)),
                       SAMPLES[2]: (path, ((5, GENES[3], '1,5'),))}
  many = [(n, f'G{n}', 'x') for n in range(1, 8)]
  assert expr.describe_bad_cells(many) == (
      "7 value(s) are not numbers: line 1: gene G1: value 'x' is not a number; line 2: gene G2: "
      "value 'x' is not a number; line 3: gene G3: value 'x' is not a number; line 4: gene G4: "
      "value 'x' is not a number; line 5: gene G5: value 'x' is not a number; and 2 more")


def test_gdc_folder_reports_every_broken_file(tmp_path, values):
  folder = tmp_path / 'gdc'
  folder.mkdir()
  _htseq(folder / f'{SAMPLES[0]}.htseq.counts', GENES, values[0])
  (folder / f'{SAMPLES[1]}.htseq.counts').write_text('G1\t1\nG1\t2\n')  # duplicated gene
  (folder / f'{SAMPLES[2]}.htseq.counts').write_text('# nothing\n')  # no gene rows
  with pytest.raises(DataError) as e:
    expr.open_expression(str(folder)).read()
  assert str(e.value).split('\n') == [
      f'{folder}/{SAMPLES[1]}.htseq.counts: gene IDs: 1 duplicated IDs (first: G1)',
      f'{folder}/{SAMPLES[2]}.htseq.counts: no gene rows']
  # Cells that are not numbers are kept per sample (the cohort drops or refuses the patient).
  (folder / f'{SAMPLES[1]}.htseq.counts').unlink()
  (folder / f'{SAMPLES[2]}.htseq.counts').unlink()
  lines = (folder / f'{SAMPLES[0]}.htseq.counts').read_text().splitlines()
  lines[1] = f'{GENES[1]}\tNA'
  lines[2] = f'{GENES[2]}\tmany'
  (folder / f'{SAMPLES[0]}.htseq.counts').write_text('\n'.join(lines) + '\n')
  table = expr.open_expression(str(folder)).read()
  assert table.bad == {SAMPLES[0]: (str(folder / f'{SAMPLES[0]}.htseq.counts'),
                                    ((3, GENES[2], 'many'),))}
  assert np.isnan(table.values[0, 1]) and np.isnan(table.values[0, 2])
