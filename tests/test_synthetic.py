"""Synthetic cohort: real layouts, determinism, spatial structure, a fair split of the signal."""

import filecmp
import os

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gimp_jax.data import cohort as ch
from gimp_jax.data import synthetic

SMALL = dict(patients=24, genes=50, min_patches=20, max_patches=60, feature_dim=16)


def _spec(paths, **kw):
  return ch.CohortSpec(paths['labels'], paths['features_dir'], paths['expression'], **kw)


def test_layout_and_loading(tmp_path):
  paths = synthetic.make_cohort(str(tmp_path), seed=1, **SMALL)
  assert sorted(os.listdir(tmp_path)) == ['expression.tsv', 'features', 'labels.csv']
  c = ch.load_cohort(_spec(paths, feature_dim=16))
  assert len(c.patients) == 24 and c.num_genes == 50 and c.class_names == ('class_0', 'class_1')
  assert any(len(p.slide_ids) == 2 for p in c.patients)
  assert all(p.expression_id == p.patient_id + '-01A' for p in c.patients)
  header = open(paths['expression']).readline().rstrip('\n').split('\t')
  assert header[:2] == ['Ensembl_ID', 'gene_name'] and header[2].startswith('TCGA-SY-')
  assert open(paths['expression']).readlines()[1].split('\t')[0].startswith('ENSG')
  path = c.patients[0].slide_paths[0]
  with h5py.File(path) as f:
    assert set(f) == {'features', 'coords'} and not f.attrs
    assert f['features'].dtype == np.float32 and f['features'].chunks == (32, 16)
    assert f['features'].maxshape == (None, 16) and f['coords'].dtype == np.int32
    coords = f['coords'][:]
  assert 20 <= len(coords) <= 60
  assert (coords % synthetic.PATCH_PX == 0).all()
  assert len({tuple(x) for x in coords}) == len(coords)
  order = np.lexsort((coords[:, 1], coords[:, 0]))
  assert np.array_equal(order, np.arange(len(coords)))  # CLAM x-major order
  values = np.loadtxt(paths['expression'], skiprows=1, usecols=range(2, len(header)))
  assert (values >= 0).all()  # FPKM-like: log2(x + 1) applies


def test_deterministic_for_a_seed(tmp_path):
  a = synthetic.make_cohort(str(tmp_path / 'a'), seed=5, **SMALL)
  b = synthetic.make_cohort(str(tmp_path / 'b'), seed=5, **SMALL)
  c = synthetic.make_cohort(str(tmp_path / 'c'), seed=6, **SMALL)
  assert filecmp.cmp(a['expression'], b['expression'], shallow=False)
  assert filecmp.cmp(a['labels'], b['labels'], shallow=False)
  for name in sorted(os.listdir(a['features_dir'])):
    with h5py.File(os.path.join(a['features_dir'], name)) as fa, \
         h5py.File(os.path.join(b['features_dir'], name)) as fb:
      np.testing.assert_array_equal(fa['features'][:], fb['features'][:])
      np.testing.assert_array_equal(fa['coords'][:], fb['coords'][:])
  assert not filecmp.cmp(a['expression'], c['expression'], shallow=False)


def test_neighbouring_patches_are_similar(tmp_path):
  paths = synthetic.make_cohort(str(tmp_path), seed=2, **SMALL)
  c = ch.load_cohort(_spec(paths, feature_dim=16))
  near, far = [], []
  for i in range(len(c.patients)):
    bag = c.bag(i)
    x, xy = bag.features(), bag.coords() // synthetic.PATCH_PX
    x = x - x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.abs(xy[:, None] - xy[None]).max(-1)
    sim = x @ x.T
    near.append(sim[dist == 1].mean())
    far.append(sim[dist >= 4].mean())
  assert np.mean(near) > np.mean(far) + 0.3, (np.mean(near), np.mean(far))


def test_tumour_regions_are_a_contiguous_minority(tmp_path):
  kw = dict(SMALL, feature_dim=64, min_patches=80, max_patches=150)
  paths = synthetic.make_cohort(str(tmp_path), seed=3, **kw)
  c = ch.load_cohort(_spec(paths, feature_dim=64))
  tumour_dir = synthetic._basis(np.random.default_rng(3), synthetic.SyntheticConfig(**kw))['tumour']
  fractions, agreement = [], []
  for i in range(len(c.patients)):
    bag = c.bag(i)
    x, xy = bag.features(), bag.coords() // synthetic.PATCH_PX
    tumour = (x - np.median(x, 0)) @ tumour_dir > synthetic._TUMOUR_AMP / 2
    fractions.append(tumour.mean())
    adjacent = np.abs(xy[:, None] - xy[None]).sum(-1) == 1
    agreement.append((adjacent & tumour[None])[tumour].sum() / adjacent[tumour].sum())
  assert 0.05 < np.mean(fractions) < 0.35, fractions  # a minority of the patches
  assert np.mean(agreement) > 0.6, agreement  # tumour patches border tumour patches: blobs


def test_cli(tmp_path, capsys):
  synthetic.main(['--out', str(tmp_path), '--patients', '6', '--genes', '10', '--min_patches', '5',
                  '--max_patches', '9', '--feature_dim', '4', '--classes', '3', '--seed', '1'])
  assert 'labels: ' in capsys.readouterr().out
  c = ch.load_cohort(_spec({'labels': str(tmp_path / 'labels.csv'),
                            'features_dir': str(tmp_path / 'features'),
                            'expression': str(tmp_path / 'expression.tsv')}, feature_dim=4))
  assert c.num_classes == 3 and c.feature_dim == 4
  with pytest.raises(ValueError):
    synthetic.make_cohort(str(tmp_path / 'x'), patients=1)


def _cv_probs(x, y, seed):
  model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
  return cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                           method='predict_proba')


def test_signal_is_split_between_modalities(tmp_path):
  """Logistic regression on mean-pooled patches, on genes, and on both (5-fold CV)."""
  paths = synthetic.make_cohort(str(tmp_path), seed=0, patients=300, genes=400, min_patches=40,
                                max_patches=120, feature_dim=64)
  c = ch.load_cohort(_spec(paths, feature_dim=64))
  pooled = np.stack([c.bag(i).features().mean(0) for i in range(len(c.patients))])
  y = c.labels
  acc = {}
  probs = {}
  for name, x in (('slide', pooled), ('genes', c.genes),
                  ('both', np.concatenate([pooled, c.genes], 1))):
    probs[name] = _cv_probs(x, y, 0)
    acc[name] = float(np.mean(probs[name].argmax(1) == y))
  acc['late_fusion'] = float(np.mean((probs['slide'] + probs['genes']).argmax(1) == y))
  print('synthetic LR accuracies', acc)
  assert 0.6 < acc['slide'] < 0.9 and 0.6 < acc['genes'] < 0.9, acc  # informative, not perfect
  best_single = max(acc['slide'], acc['genes'])
  assert acc['both'] > best_single + 0.04, acc
  assert acc['late_fusion'] > best_single + 0.04, acc


RARE = dict(preset='rare', genes=20, min_patches=100, max_patches=400, feature_dim=32)


def _rare_truth(path):
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, encoding='utf-8') as f:
    return {r['slide_id']: r for r in csv.DictReader(f)}


def test_rare_instance_oracle_matches_its_bayes_figure(tmp_path):
  """Monte Carlo of the generator: 400 patients, 10% label noise. A detector that recovers the
  rare direction from the truth of half the patients (the mean difference between rare and other
  patches of a slide) and scores the other half with `oracle_statistic` reaches the analytic Bayes
  AUC 1 - eps; a logistic regression on mean-pooled patches does not (the offset swamps the mean)."""
  eps = 0.1
  paths = synthetic.make_cohort(str(tmp_path), seed=3, patients=400, label_noise=eps, **RARE)
  truth = _rare_truth(paths['truth'])
  c = ch.load_cohort(_spec(paths, feature_dim=32))
  first = {p.patient_id for p in c.patients[:200]}
  diffs = []
  for i, p in enumerate(c.patients):
    feats = c.bag(i).features()
    lo = 0
    for s, n in zip(p.slide_ids, np.diff(c.bag(i).offsets)):
      rare = np.array(truth[s]['rare_patches'].split(), int)
      slide = feats[lo:lo + n]
      lo += n
      if p.patient_id in first and rare.size:
        assert 1 <= rare.size <= max(1, round(0.03 * n)) and truth[s]['pattern'] == '1'
        diffs.append(slide[rare].mean(0) - np.delete(slide, rare, 0).mean(0))
  u = np.mean(diffs, 0)
  u /= np.linalg.norm(u)
  second = range(200, 400)
  score = [max(synthetic.oracle_statistic(c.bag(i).features()[a:b], u)
               for a, b in zip(c.bag(i).offsets[:-1], c.bag(i).offsets[1:])) for i in second]
  y = c.labels[200:]
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  auc = roc_auc_score(y == 1, score)
  bayes = synthetic.rare_bayes_auc(eps)
  # 200 patients: the AUC of a binary score with P(flip) = 0.1 has SD ~0.02
  assert abs(auc - bayes) < 0.06, (auc, bayes)
  pooled = np.stack([c.bag(i).features().mean(0) for i in range(len(c.patients))])
  mean_auc = roc_auc_score(c.labels == 1, _cv_probs(pooled, c.labels, 0)[:, 1])
  assert mean_auc < 0.7, mean_auc


def test_rare_instance_mode_leaves_the_genes_and_negatives_without_signal(tmp_path):
  paths = synthetic.make_cohort(str(tmp_path), seed=1, patients=60, **RARE)
  truth = _rare_truth(paths['truth'])
  for r in truth.values():
    assert (r['pattern'] == '1') == (r['label'] == 'class_1')  # no label noise by default
    assert (r['rare_patches'] != '') == (r['pattern'] == '1')
  c = ch.load_cohort(_spec(paths, feature_dim=32))
  genes_auc = _cv_probs(c.genes, c.labels, 0)
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  assert roc_auc_score(c.labels == 1, genes_auc[:, 1]) < 0.75
  with pytest.raises(ValueError):
    synthetic.make_cohort(str(tmp_path / 'x'), preset='rare', survival=True)
  with pytest.raises(ValueError):
    synthetic.make_cohort(str(tmp_path / 'y'), preset='no_such_preset')
