"""Report figures and page: rasterisation exact, hot patch at the right pixel, valid PNGs, links."""

import base64
import csv
import os
import re

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
import h5py
import matplotlib.image
import numpy as np
import pytest

from gimp_jax import report
from gimp_jax.data import synthetic
from gimp_jax.report import heatmap
from gimp_jax.report import figures as figures_lib
from gimp_jax.report import page
from gimp_jax.report import slides
from gimp_jax.report import survival as survival_report

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _assert_png(path, min_bytes=5_000):
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:8] == PNG_SIGNATURE, path
  assert len(data) > min_bytes, (path, len(data))
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and min(image.shape[:2]) > 100, (path, image.shape)
  assert image.reshape(-1, image.shape[-1]).std(axis=0).max() > 0.05  # not a blank canvas


def _predictions(rng, n, c, prefix='P'):
  labels = np.arange(n) % c
  logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return {'patient_id': np.array([f'{prefix}-{i:03d}' for i in range(n)]), 'label': labels,
          'probs': probs}


def test_rasterise_exact():
  ps = 256
  #                  x,    y : level-0; the grid starts at cell (2, 3) -> origin (512, 768)
  coords = np.array([[512, 768], [1024, 768], [512 + 300, 768 + 2 * ps], [1024 + 10, 768 + 5],
                     [512 + 4 * ps, 768 + 3 * ps]], np.int64)
  values = np.array([0.1, 0.2, 0.3, 0.9, 0.4], np.float32)
  grid, origin = report.rasterise(coords, values, ps)
  np.testing.assert_array_equal(origin, [512, 768])
  want = np.full((4, 5), np.nan, np.float32)
  want[0, 0] = 0.1
  want[0, 2] = 0.9  # (1024, 768) and (1034, 773) share a cell: the larger value stays
  want[2, 1] = 0.3  # x = 812 -> cell 3 -> column 1 (not aligned to the grid)
  want[3, 4] = 0.4
  np.testing.assert_array_equal(grid, want)
  grid32, _ = report.rasterise(coords.astype(np.int32), values, ps)
  np.testing.assert_array_equal(grid32, want)


def test_rasterise_matches_dense_loop():
  rng = np.random.default_rng(0)
  cells = rng.choice(30 * 40, size=500, replace=False)
  coords = np.stack([cells % 40, cells // 40], 1) * 224 + 224 * 7
  values = rng.uniform(size=500).astype(np.float32)
  grid, origin = report.rasterise(coords, values, 224)
  for (x, y), v in zip(coords, values):
    assert grid[(y - origin[1]) // 224, (x - origin[0]) // 224] == v
  assert np.isnan(grid).sum() == grid.size - 500


@pytest.mark.parametrize('coords, values, ps, match', [
    (np.zeros((3, 2)), np.zeros(3), 256, 'integers'),
    (np.zeros((3, 2), int), np.zeros(2), 256, 'values must be'),
    (np.zeros((0, 2), int), np.zeros(0), 256, 'N >= 1'),
    (np.array([[0, 0], [200_000, 200_000]]), np.zeros(2), 1, 'check patch_size'),
])
def test_rasterise_bad_inputs(coords, values, ps, match):
  with pytest.raises(ValueError, match=match):
    report.rasterise(coords, values, ps)


def test_normalise():
  values = np.array([3.0, 1.0, 1.0, 10.0, 2.0])
  # ranks with ties averaged: 1.0, 1.0 -> 1.5; then 2.0 -> 3, 3.0 -> 4, 10.0 -> 5
  np.testing.assert_allclose(report.normalise(values, 'rank'), [0.75, 0.125, 0.125, 1.0, 0.5])
  np.testing.assert_allclose(report.normalise(values, 'minmax'), (values - 1) / 9, rtol=1e-6)
  np.testing.assert_array_equal(report.normalise(np.full(4, 7.0), 'rank'), np.full(4, 0.5))
  # mass: log10(v N / sum v) from -1 (a tenth of a uniform share) to log10 N (all on one patch)
  share = values * 5 / values.sum()
  np.testing.assert_allclose(report.normalise(values), np.clip(
      (np.log10(share) + 1) / (np.log10(5) + 1), 0, 1), rtol=1e-6)
  np.testing.assert_allclose(report.normalise(np.full(4, 7.0)), 1 / (np.log10(4) + 1), rtol=1e-6)
  np.testing.assert_allclose(report.normalise(np.array([0.0, 0.0, 2.0])), [0, 0, 1])
  with pytest.raises(ValueError, match='rank'):
    report.normalise(values, 'log')


def test_default_heatmap_shows_the_rare_patches_that_hold_the_attention(tmp_path):
  """A rare-instance slide of the generator (its truth: which patches carry the pattern) with the
  attention ABMIL gives such a slide (8 rare patches holding about half of it, the rest spread
  with noise): on the default scale the 8 brightest cells are the rare patches, and each outshines
  every other cell by a clear margin."""
  paths = synthetic.make_cohort(str(tmp_path), preset='rare', patients=4, genes=10,
                                min_patches=400, max_patches=500, feature_dim=16,
                                rare_min_fraction=0.02, rare_max_fraction=0.02, seed=2)
  with open(paths['truth'], encoding='utf-8') as f:
    row = next(r for r in csv.DictReader(f) if r['pattern'] == '1')
  with h5py.File(os.path.join(paths['features_dir'], row['slide_id'] + '.h5')) as f:
    coords = f['coords'][:]
  rare = np.array(row['rare_patches'].split(), int)
  rng = np.random.default_rng(0)
  attention = rng.lognormal(0, 0.5, len(coords))
  attention *= 0.5 / attention.sum()
  attention[rare] = 0.5 / rare.size
  fig, ax = heatmap.heatmap_figure(coords, attention, 256)
  rgb, to_pixel = _image_pixels(fig, ax)
  centre = lambda i: np.round(to_pixel(*(coords[i] + 128))).astype(int)  # noqa: E731
  cmap = colormaps[heatmap.CMAP]
  levels = np.linspace(0, 1, 256)
  palette = np.array([cmap(v)[:3] for v in levels]) * 255
  shown = np.array([levels[np.abs(palette - rgb[tuple(centre(i))]).sum(1).argmin()]
                    for i in range(len(coords))])
  brightest = np.argsort(-shown, kind='stable')[:rare.size]
  assert set(brightest) == set(rare)
  assert shown[rare].min() > np.delete(shown, rare).max() + 0.15


def _image_pixels(fig, ax):
  """The rendered RGB [rows, cols, 3] uint8 and the axes' data -> (row, col) pixel transform."""
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  rgb = np.asarray(canvas.buffer_rgba())[..., :3]
  def to_pixel(x, y):
    px, py = ax.transData.transform((x, y))
    return rgb.shape[0] - py, px
  return rgb, to_pixel


@pytest.mark.parametrize('method', ['mass', 'rank', 'minmax'])
def test_heatmap_hot_patch_at_its_pixel(method):
  rng = np.random.default_rng(1)
  ps = 256
  cells = [(c, r) for r in range(12) for c in range(20) if (c, r) != (4, 9)]  # one hole at (4, 9)
  coords = (np.array(cells) + [3, 5]) * ps
  attention = rng.uniform(0, 0.01, len(cells))
  hot = cells.index((15, 2))
  attention[hot] = 0.5
  fig, ax = heatmap.heatmap_figure(coords, attention, ps, title='one hot patch', method=method)
  rgb, to_pixel = _image_pixels(fig, ax)
  box = ax.get_window_extent()
  rows, cols = slice(int(rgb.shape[0] - box.y1) + 1, int(rgb.shape[0] - box.y0)), slice(
      int(box.x0) + 1, int(box.x1))
  inside = rgb[rows, cols].astype(int)
  shades = report.normalise(attention, method)
  assert shades[hot] == shades.max()
  top = (np.asarray(colormaps[heatmap.CMAP](shades[hot])[:3]) * 255).round().astype(int)
  match = np.abs(inside - top).max(axis=-1) <= 1
  assert match.sum() > 20  # the hot cell covers a block of pixels
  got_row, got_col = np.argwhere(match).mean(axis=0) + [rows.start, cols.start]
  want_row, want_col = to_pixel(*(coords[hot] + ps / 2))
  assert abs(got_row - want_row) < 1.0 and abs(got_col - want_col) < 1.0
  for i in rng.choice(len(cells), 40, replace=False):  # every patch shows its own colour
    r, c = np.round(to_pixel(*(coords[i] + ps / 2))).astype(int)
    want = (np.asarray(colormaps[heatmap.CMAP](shades[i])[:3]) * 255).round()
    assert np.abs(rgb[r, c] - want).max() <= 1, (i, rgb[r, c], want)
    if i != hot:
      assert np.abs(rgb[r, c].astype(int) - top).max() > 1
  r, c = np.round(to_pixel(*((np.array([4, 9]) + [3, 5]) * ps + ps / 2))).astype(int)
  np.testing.assert_array_equal(rgb[r, c], [0xee, 0xee, 0xee])  # the hole shows the background


def test_heatmap_150k_patches_is_one_image(tmp_path):
  """A 150,000-patch slide is drawn as one 375 x 400 image (one cell per patch), not as 150,000
  artists: the property that keeps big slides cheap, checked without a clock."""
  rng = np.random.default_rng(0)
  xs, ys = np.meshgrid(np.arange(400), np.arange(375))
  coords = np.stack([xs.ravel(), ys.ravel()], 1)[:150_000] * 256
  attention = rng.exponential(size=150_000).astype(np.float32)
  fig, ax = heatmap.heatmap_figure(coords, attention, 256, title='big')
  assert len(ax.images) == 1 and not ax.patches and not ax.collections and not ax.lines
  drawn = ax.images[0].get_array()
  assert drawn.shape == (375, 400) and not np.ma.getmaskarray(drawn).any()
  # patch i = (x, y) = (i % 400, i // 400) sits in row y, column x (rows run down the slide)
  np.testing.assert_array_equal(drawn.ravel(), report.normalise(attention))
  assert f'({150_000:,} patches)' in ax.get_title()
  path = report.heatmap_png(tmp_path / 'big.png', coords, attention, 256, title='big')
  _assert_png(path, min_bytes=50_000)


def test_tsne_deterministic_and_separates_clusters():
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1], 30)
  embeddings = rng.normal(size=(60, 32)) + 6 * labels[:, None] * np.eye(32)[0]
  a = report.tsne_embed(embeddings, seed=3)
  b = report.tsne_embed(embeddings, seed=3)
  c = report.tsne_embed(embeddings, seed=4)
  assert a.shape == (60, 2) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  dist = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.eye(60) * 1e9
  assert np.mean(labels[dist.argmin(1)] == labels) > 0.95  # nearest 2-D neighbour, same class
  assert report.tsne_embed(embeddings[:2], seed=0).shape == (2, 2)
  with pytest.raises(ValueError, match='N >= 2'):
    report.tsne_embed(embeddings[:1], seed=0)


def test_figures_are_valid_reproducible_pngs(tmp_path):
  rng = np.random.default_rng(2)
  two, three = _predictions(rng, 40, 2), _predictions(rng, 45, 3)
  names3 = ['A', 'B', 'C']
  paths = [
      report.roc_curve_png(tmp_path / 'roc2.png', two['label'], two['probs'], ['LUAD', 'LUSC']),
      report.roc_curve_png(tmp_path / 'roc3.png', three['label'], three['probs'], names3),
      report.confusion_matrix_png(tmp_path / 'cm.png', [[5, 1, 0], [2, 7, 1], [0, 0, 9]], names3),
      report.tsne_png(tmp_path / 'tsne.png', rng.normal(size=(30, 8)), np.arange(30) % 3, names3,
                      seed=0),
      report.loss_curves_png(tmp_path / 'loss.png', {
          'pretrain': [(s, {'l_rec': 1 / (s + 1), 'l_tri': 0.3}) for s in range(50)],
          'finetune': [(s, {'loss': np.float32(0.7 - s / 100), 'val_accuracy': s / 20,
                            'tag': 'x'}) for s in range(10)]}),
  ]
  for path in paths:
    assert os.fspath(path).startswith(os.fspath(tmp_path))
    _assert_png(path)
  with open(paths[2], 'rb') as f:
    first = f.read()
  report.confusion_matrix_png(tmp_path / 'cm.png', [[5, 1, 0], [2, 7, 1], [0, 0, 9]], names3)
  with open(paths[2], 'rb') as f:
    assert f.read() == first  # no date or version metadata: same input, same bytes
  with pytest.raises(ValueError, match='no numeric'):
    report.loss_curves_png(tmp_path / 'x.png', {'a': [(0, {'tag': 'x'})]})
  with pytest.raises(ValueError, match='class names'):
    report.roc_curve_png(tmp_path / 'x.png', two['label'], two['probs'], names3)


def test_fmt():
  assert [page.fmt(v) for v in (3, 2.0, 0.86251, 812.46, 4e-5, float('nan'), float('inf'),
                                np.float32(0.5), 'x')] == [
                                    '3', '2', '0.8625', '812.5', '4.000e-05', 'NaN', 'inf',
                                    '0.5000', 'x']


def _links(markdown):
  return re.findall(r'\]\(([^)]+)\)', markdown)


def test_write_report(tmp_path):
  rng = np.random.default_rng(3)
  names = ['LUAD', 'LUSC']
  test, val = _predictions(rng, 120, 2, 'TCGA'), _predictions(rng, 30, 2, 'V')
  results = {'test_accuracy': 0.8625, 'test_auc': 0.9312, 'test_f1': 0.8571, 'val_accuracy': 0.8,
             'test_confusion_matrix': [[50, 10], [7, 53]], 'config': {'seed': 0},
             'stages': {'pretrain': {'final_loss': 0.1234, 'wall_time_s': 812.5},
                        'finetune': {'final_losses': {'l_cls': 0.25}, 'wall_time_s': 40.0}}}
  xs, ys = np.meshgrid(np.arange(30), np.arange(20))
  coords = np.stack([xs.ravel(), ys.ravel()], 1) * 256
  heatmaps = [slides.SlideScores('TCGA-001', 's1', coords, rng.uniform(size=600), 256),
              slides.SlideScores('TCGA-001', 's2', coords[:300], rng.uniform(size=300), 256),
              slides.SlideScores('TCGA 002/x', 's3', coords[100:], rng.uniform(size=500), 256)]
  history = {'finetune': [(s, {'loss': 1 / (s + 1), 'val_accuracy': s / 10}) for s in range(10)]}
  tsne = (rng.normal(size=(40, 16)), np.arange(40) % 2)
  (tmp_path / 'heatmap_stale.png').write_bytes(b'old')  # an earlier report's file
  (tmp_path / 'notes.txt').write_text('mine')  # not the report's: kept
  md_path = report.write_report(tmp_path, results=results, class_names=names,
                                predictions={'val': val, 'test': test}, tsne=tsne,
                                heatmaps=heatmaps, history=history, seed=1)
  assert md_path == os.path.join(tmp_path, 'report.md')
  markdown = open(md_path).read()
  written = {os.path.relpath(os.path.join(root, name), tmp_path)
             for root, _, names in os.walk(tmp_path) for name in names}
  written -= {'report.md', 'report.html', 'notes.txt'}
  links = _links(markdown)
  assert len(links) == len(set(links))
  assert set(links) == written  # exactly the files that exist
  per_slide = {f'slides/{stem}/scores.{ext}' for stem in ('TCGA-001', 'TCGA-001_2', 'TCGA_002_x')
               for ext in ('csv', 'geojson')}
  assert written == {'roc_test.png', 'roc_val.png', 'confusion_test.png', 'confusion_val.png',
                     'tsne_train.png', 'heatmap_TCGA-001.png', 'heatmap_TCGA-001_2.png',
                     'heatmap_TCGA_002_x.png', 'loss_curves.png', 'predictions_test.csv',
                     'predictions_val.csv'} | per_slide
  for name in written:
    if name.endswith('.png'):
      _assert_png(tmp_path / name)
  assert markdown.index('roc_test.png') < markdown.index('roc_val.png')  # test first
  # the summary comes from results, not recomputed
  assert '| accuracy | 0.8625 | 0.8000 |' in markdown and '| auc | 0.9312 |  |' in markdown
  assert '| pretrain | 0.1234 | 812.5 |  |' in markdown and 'final\\_losses.l\\_cls' in markdown
  table = [line for line in markdown.splitlines() if line.startswith('| TCGA-')]
  assert len(table) == page.TABLE_ROWS  # first 50 of 120 on the page
  pred = test['probs'].argmax(1)
  first = f'| TCGA-000 | LUAD | {names[pred[0]]} | {test["probs"][0, pred[0]]:.3f} |'
  assert table[0].startswith(first)
  with open(tmp_path / 'predictions_test.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 120
  assert [r['patient_id'] for r in rows] == list(test['patient_id'])
  assert [int(r['predicted']) for r in rows] == pred.tolist()
  assert [int(r['label']) for r in rows] == test['label'].tolist()
  np.testing.assert_allclose([float(r['prob_LUSC']) for r in rows], test['probs'][:, 1],
                             rtol=1e-5)
  page_html = open(tmp_path / 'report.html').read()
  images = re.findall(r'src="data:image/png;base64,([^"]+)"', page_html)
  assert len(images) == sum(name.endswith('.png') for name in written)
  assert all(base64.b64decode(data)[:8] == PNG_SIGNATURE for data in images)
  assert 'href="predictions_test.csv"' in page_html and '<td>TCGA-049</td>' in page_html
  assert '<td>TCGA-050</td>' not in page_html

  report.write_report(tmp_path, results={}, class_names=names, predictions={'test': test})
  assert set(os.listdir(tmp_path)) == {'report.md', 'report.html', 'notes.txt', 'roc_test.png',
                                       'confusion_test.png', 'predictions_test.csv'}


def test_write_report_three_classes_with_an_absent_class(tmp_path):
  rng = np.random.default_rng(4)
  test = _predictions(rng, 12, 3)
  test['label'] = np.where(test['label'] == 2, 0, test['label'])  # class C absent from test
  md_path = report.write_report(tmp_path, results={'test_auc': float('nan')},
                                class_names=['A', 'B', 'C'], predictions={'test': test})
  markdown = open(md_path).read()
  assert '| auc | NaN |' in markdown and 'all 12 test patients' in markdown
  assert set(_links(markdown)) == {'roc_test.png', 'confusion_test.png', 'predictions_test.csv'}
  _assert_png(tmp_path / 'roc_test.png')
  with pytest.raises(ValueError, match=r"predictions\['test'\]"):
    report.write_report(tmp_path, results={}, class_names=['A', 'B'], predictions={'test': test})


def test_pretrain_diagnostics_figure_in_report(tmp_path):
  records = [(s, {'tri_loss': 0.0 if s < 3 else 0.2, 'rec_loss': 1.0 / s, 'tri_active': 0.0,
                  'gene_gap': 4.0, 'img_spread': 0.5 / s}) for s in range(1, 6)]
  labels = np.array([0, 1, 0, 1])
  probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
  test = {'patient_id': np.array(['a', 'b', 'c', 'd']), 'label': labels, 'probs': probs}
  md_path = report.write_report(tmp_path, results={}, class_names=['A', 'B'],
                                predictions={'test': test}, diagnostics=(records, 0.8, 0.05))
  md = open(md_path).read()
  assert 'Pre-training diagnostics' in md and 'pretrain_diagnostics.png' in md
  _assert_png(tmp_path / 'pretrain_diagnostics.png')
  report.write_report(tmp_path, results={}, class_names=['A', 'B'], predictions={'test': test})
  assert not (tmp_path / 'pretrain_diagnostics.png').exists()  # a report without pre-training


def test_curves_plot_losses_per_step_and_validation_per_epoch():
  """metrics.jsonl records: per-step training metrics and per-epoch validation."""
  history = {'finetune': [(s, {'loss': 1 / s, 'grad_norm': 2.0, 'epoch': s // 3})
                          for s in range(1, 7)]}
  val = {'finetune': [(0, {'accuracy': 0.5, 'auc': 0.6}), (1, {'accuracy': 0.7, 'auc': 0.8})]}
  panels = report.figures.curve_panels(history, val)
  losses, validation = panels['finetune']
  assert losses == {'loss': ([1, 2, 3, 4, 5, 6], [1 / s for s in range(1, 7)])}
  assert validation == {'accuracy': ([0, 1], [0.5, 0.7]), 'auc': ([0, 1], [0.6, 0.8])}
  assert report.figures.curve_panels({'pretrain': [(1, {'grad_norm': 1.0})]}) == {}


def test_a_failed_report_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
  """A full disk half-way through the figures: the earlier report stays as it was, byte for
  byte, and no temporary folder is left."""
  rng = np.random.default_rng(4)
  kwargs = dict(results={'test_accuracy': 0.5}, class_names=['A', 'B'],
                predictions={'test': _predictions(rng, 20, 2)},
                history={'finetune': [(s, {'loss': 1 / (s + 1)}) for s in range(5)]})
  out = tmp_path / 'report'
  report.write_report(out, **kwargs)
  before = {n: (out / n).read_bytes() for n in os.listdir(out)}
  real, calls = report.figures.save_png, []

  def full_disk(fig, path):
    calls.append(path)
    if len(calls) == 2:
      with open(path, 'wb') as f:
        f.write(PNG_SIGNATURE)  # half a file, then the disk is full
      raise OSError(28, 'No space left on device', str(path))
    return real(fig, path)
  monkeypatch.setattr(report.figures, 'save_png', full_disk)
  with pytest.raises(OSError, match='No space left'):
    report.write_report(out, **kwargs)
  assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
  assert os.listdir(tmp_path) == ['report']


def _captured(monkeypatch, module):
  """Figures passed to `module`'s save_png, kept (the PNG still written)."""
  figs = []
  owner = module if module is figures_lib else module.figures
  real = owner.save_png
  def keep(fig, path):
    figs.append(fig)
    return real(fig, path)
  monkeypatch.setattr(owner, 'save_png', keep)
  return figs


def _inside(fig):
  """Whether everything drawn on `fig` (titles, labels, tick labels, legends) lies on the canvas:
  the tight bounding box of the drawn artists, in inches, within the figure's size."""
  fig.canvas = FigureCanvasAgg(fig)
  renderer = fig.canvas.get_renderer()
  box = fig.get_tightbbox(renderer)
  width, height = fig.get_size_inches()
  return box.x0 >= -0.01 and box.y0 >= -0.01 and box.x1 <= width + 0.01 and box.y1 <= height + 0.01


def test_curves_fill_every_panel_and_mark_the_kept_epoch(tmp_path, monkeypatch):
  figs = _captured(monkeypatch, figures_lib)
  history = {'pretrain': [(s, {'l_rec': 1 / (s + 1)}) for s in range(20)],  # no validation
             'finetune': [(s, {'loss': 0.7 - s / 100}) for s in range(10)]}
  val_history = {'finetune': [(e, {'accuracy': e / 5}) for e in range(5)]}
  report.loss_curves_png(tmp_path / 'c.png', history, val_history, chosen={'finetune': 3})
  (fig,) = figs
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ['pretrain: losses', 'finetune: losses', 'finetune: validation']
  assert all(ax.lines and ax.axison for ax in fig.axes)  # no empty panel
  marks = [line for line in fig.axes[2].lines if line.get_label() == 'kept (epoch 3)']
  assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
  assert _inside(fig)


def test_survival_figures_have_time_units_and_unclipped_labels(tmp_path, monkeypatch):
  figs = _captured(monkeypatch, survival_report)
  rng = np.random.default_rng(0)
  times, censorship = rng.uniform(1, 60, 40), rng.integers(0, 2, 40)
  survival_report.km_png(str(tmp_path / 'km.png'), times, censorship, np.arange(40) % 2 == 0,
                         'Kaplan-Meier, test', 'months')
  survival_report.risk_png(str(tmp_path / 'risk.png'), {'test': rng.normal(size=40)}, 0.0)
  km, risk = figs
  assert km.axes[0].get_xlabel() == 'time (months)'
  assert _inside(km) and _inside(risk)


def test_report_shows_data_run_and_gene_only_numbers(tmp_path):
  rng = np.random.default_rng(5)
  test = _predictions(rng, 10, 2)
  facts = {'splits': {'train': {'patients': 30, 'LUAD': 14, 'LUSC': 16},
                      'test': {'patients': 10, 'LUAD': 5, 'LUSC': 5}},
           'command': 'main.py --config=configs/methods/abmil.py:tiny',
           'config_diff': ['finetune.epochs: 100 -> 1', 'seed: 0 -> 3']}
  report.write_report(tmp_path, results={'test_accuracy': 0.8, 'gene_only_test_accuracy': 0.7},
                      class_names=['LUAD', 'LUSC'], predictions={'test': test}, facts=facts)
  markdown = (tmp_path / 'report.md').read_text()
  assert '| train | 30 | 14 | 16 |' in markdown and '| test | 10 | 5 | 5 |' in markdown
  assert 'Command: main.py --config=configs/methods/abmil.py:tiny' in markdown
  assert '| finetune.epochs | 100 -\\> 1 |' in markdown and '| seed | 0 -\\> 3 |' in markdown
  assert '| gene\\_only\\_accuracy | 0.7000 |' in markdown
