"""Per-slide attention outputs of the report: scores from the attention protocol, the heatmap on
the slide (or at the coordinates), the top patches, CSV and GeoJSON, and the Deep Zoom viewer.

`patient_scores` runs `models.attention.scores` on a patient's whole bag (the bag the model
predicts from) and splits the scores per slide. `locate_slide` finds a slide's image: in
`config.data.slides_dir` as `<slide_id><ext>`, else at the `slide_path` attribute of the `.h5`
coords (`gimp_jax.preprocess` writes it). The patch side at level 0 comes from the `.h5` coords
attributes that CLAM, TRIDENT and `gimp_jax.preprocess` write (`patch_size_level0`; CLAM's
`patch_size` x 2^`patch_level`), else from `config.report.patch_size_level0`.
"""

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import openslide
from PIL import Image as PILImage

from gimp_jax.data import pipeline
from gimp_jax.data import trident
from gimp_jax.errors import DataError
from gimp_jax.models import attention
from gimp_jax.preprocess.tiling import SLIDE_EXTENSIONS
from gimp_jax.report import deepzoom
from gimp_jax.report import export
from gimp_jax.report import heatmap

SLIDES_DIR = 'slides'  # report/slides/<stem>/: the per-slide files


@dataclasses.dataclass(frozen=True)
class SlideScores:
  """One slide's patch scores and what is needed to draw them.

  Attributes:
    patient_id: the patient.
    slide_id: the slide.
    coords: [N, 2] int level-0 (x, y) of the patches' top-left corners.
    attention: [N] float32 scores (`models.attention`).
    patch_size_level0: the patches' side at level 0.
    slide_path: the whole-slide image, or '' when it is not at hand.
    caption: the heatmap's title (true and predicted class and probability, or risk and time).
  """
  patient_id: str
  slide_id: str
  coords: np.ndarray
  attention: np.ndarray
  patch_size_level0: int
  slide_path: str = ''
  caption: str = ''


@dataclasses.dataclass(frozen=True)
class SlideFiles:
  """What `write_slide` wrote, relative to the report folder ('' when not written)."""
  heatmap: str
  top_patches: str
  scores_csv: str
  geojson: str
  overlay: str
  tiles: dict | None


def geometry(path: str) -> trident.PatchGeometry | None:
  """The patch geometry a `.h5` feature file records (`data.trident`), None for other sources."""
  if not path.endswith('.h5') or not os.path.isfile(path):
    return None
  return trident.read_geometry(path)


def locate_slide(slides_dir: str, slide_id: str, recorded: str | None) -> str:
  """The slide's image file: `<slides_dir>/<slide_id><ext>` for a known extension, else the
  path the feature file `recorded` when that file exists, else ''."""
  if slides_dir:
    for ext in SLIDE_EXTENSIONS:
      for name in (slide_id + ext, slide_id + ext.upper()):
        path = os.path.join(slides_dir, name)
        if os.path.isfile(path):
          return path
  return recorded if recorded and os.path.isfile(recorded) else ''


def patient_scores(model, cohort, index: int, *, bucket_sizes, slides_dir: str,
                   default_patch_size: int, caption: str = '') -> list[SlideScores]:
  """The attention scores of patient `index`'s whole bag, one `SlideScores` per slide.

  Args:
    model: a model in evaluation mode that `attention.supports`.
    cohort: the loaded cohort (`data.cohort.Cohort`).
    index: the patient's index in it.
    bucket_sizes: the bag is zero-padded to its bucket (one compilation per bucket).
    slides_dir: `config.data.slides_dir` ('' when the slides are not at hand).
    default_patch_size: level-0 patch side when the feature file does not say.
    caption: the title of every slide's heatmap.
  """
  patient = cohort.patients[index]
  bag = cohort.bag(index)
  n = bag.num_patches
  size = pipeline.bucket_size(n, bucket_sizes)
  patches = np.zeros((1, size, cohort.feature_dim), np.float32)
  patches[0, :n] = bag.features()
  mask = np.arange(size)[None] < n
  genes = jnp.asarray(cohort.genes[index][None], jnp.float32)
  scores = np.asarray(attention.scores(model, jnp.asarray(patches), genes, jnp.asarray(mask)))
  coords = bag.coords()
  out = []
  for k, (slide_id, h5_path) in enumerate(zip(patient.slide_ids, patient.slide_paths)):
    lo, hi = int(bag.offsets[k]), int(bag.offsets[k + 1])
    found = geometry(h5_path)
    out.append(SlideScores(
        patient_id=patient.patient_id, slide_id=slide_id, coords=coords[lo:hi],
        attention=scores[0, lo:hi],
        patch_size_level0=found and found.patch_size_level0 or int(default_patch_size),
        slide_path=locate_slide(slides_dir, slide_id, found and found.slide_path), caption=caption))
  return out


def write_slide(report_dir: str, stem: str, item: SlideScores, *, top_k: int = 8,
                thumbnail_size: int = 2048, deepzoom_size: int = 8192,
                heatmap_scale: str = 'mass') -> SlideFiles:
  """Writes one slide's heatmap PNG (`heatmap_<stem>.png`, coloured on `heatmap_scale`:
  `heatmap.normalise`) and, under `slides/<stem>/`, its scores (scores.csv, scores.geojson) and,
  with the slide at hand, the top-k patches (top_<rank>.png, top_patches.csv, top_patches.png), the
  overlay (overlay.png) and the Deep Zoom tiles."""
  folder = os.path.join(SLIDES_DIR, stem)
  os.makedirs(os.path.join(report_dir, folder), exist_ok=True)
  rel = lambda name: os.path.join(folder, name)
  full = lambda name: os.path.join(report_dir, folder, name)
  export.write_scores_csv(full('scores.csv'), item.coords, item.attention, item.patch_size_level0)
  export.write_geojson(full('scores.geojson'), item.coords, item.attention,
                       item.patch_size_level0)
  png = f'heatmap_{stem}.png'
  title = item.caption or f'{item.patient_id} / {item.slide_id}'
  if not item.slide_path or item.coords.shape[0] == 0:
    heatmap.heatmap_png(os.path.join(report_dir, png), item.coords, item.attention,
                        item.patch_size_level0, title=title, method=heatmap_scale)
    return SlideFiles(png, '', rel('scores.csv'), rel('scores.geojson'), '', None)
  slide = openslide.OpenSlide(item.slide_path)
  try:
    thumbnail, scale = heatmap.slide_thumbnail(slide, thumbnail_size)
    rgba, blended = heatmap.overlay(thumbnail, item.coords, item.attention,
                                    item.patch_size_level0, scale, method=heatmap_scale, alpha=1.0)
    PILImage.fromarray(rgba).save(full('overlay.png'))
    a = 0.5  # the figure's blend; the viewer's opacity starts at the same
    shown = np.rint(thumbnail * (1 - a * (rgba[..., 3:] > 0))
                    + blended * (a * (rgba[..., 3:] > 0))).astype(np.uint8)
    heatmap.slide_heatmap_png(os.path.join(report_dir, png), shown, slide.dimensions, title,
                              method=heatmap_scale)
    crops = heatmap.top_patches(slide, item.coords, item.attention, item.patch_size_level0, top_k)
    with open(full('top_patches.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['rank', 'patch', 'x', 'y', 'attention', 'file'])
      for rank, (i, rgb) in enumerate(crops, 1):
        name = f'top_{rank:02d}.png'
        PILImage.fromarray(rgb).save(full(name))
        writer.writerow([rank, i, *(int(v) for v in item.coords[i]), f'{item.attention[i]:.6g}',
                         name])
    heatmap.top_patches_png(full('top_patches.png'), crops, item.attention, item.coords,
                            f'Top {len(crops)} patches, {item.slide_id} (score, level-0 x, y)')
    tiles = deepzoom.write_tiles(slide, os.path.join(report_dir, folder), 'slide', deepzoom_size)
  finally:
    slide.close()
  return SlideFiles(png, rel('top_patches.png'), rel('scores.csv'), rel('scores.geojson'),
                    rel('overlay.png'), dict(tiles, url=rel(tiles['url'])))


def caption(predictions: dict, patient_id: str, class_names, time_unit: str = '') -> str:
  """A heatmap's title from the test predictions (`train.run.predict`'s dict): the patient, the
  true and predicted class and the predicted probability, or for survival the predicted risk,
  the time and whether it is an event; the patient alone when it is not among them."""
  ids = [str(p) for p in predictions.get('patient_id', ())]
  if patient_id not in ids:
    return str(patient_id)
  i = ids.index(patient_id)
  if 'risk' in predictions:
    status = 'censored' if int(predictions['censorship'][i]) else 'event'
    unit = f' {time_unit}' if time_unit else ''
    return (f'{patient_id}: predicted risk {float(predictions["risk"][i]):.3g}; '
            f'{status} at {float(predictions["time"][i]):.4g}{unit}')
  probs = np.asarray(predictions['probs'][i], np.float64)
  label, predicted = int(predictions['label'][i]), int(np.argmax(probs))
  verdict = 'correct' if label == predicted else 'misclassified'
  return (f'{patient_id}: true {class_names[label]}, predicted {class_names[predicted]} '
          f'(p = {probs[predicted]:.2f}, {verdict})')


def write_attention(out_dir: str, model, cohort, slides_dir: str, *, method: str,
                    bucket_sizes: Sequence[int], report_cfg: Mapping) -> list[SlideFiles]:
  """Every patient's slides (`patient_scores`, `write_slide`) into `out_dir`, one stem per slide
  ID; the model answers `attention.supports` (DataError naming the method otherwise). In a job of
  several processes every process computes the scores and process 0 writes (and lists) the files.

  Args:
    out_dir: the folder (created if missing).
    model: the model in evaluation mode.
    cohort: the loaded cohort.
    slides_dir: the folder of the whole-slide images ('' when not at hand).
    method: the run's method (config.method), named when its model has no attention.
    bucket_sizes: the patch-count buckets of the bags (data.bucket_sizes).
    report_cfg: the `report` config block (its patch side, top_k, thumbnail and Deep Zoom
      sizes; {}: the defaults).
  """
  if not attention.supports(model):
    raise DataError(f"config.method {method!r}: its model has no attention over patches")
  report = report_cfg
  options = {k: report[k] for k in ('top_k', 'thumbnail_size', 'deepzoom_size', 'heatmap_scale')
             if k in report}
  written = []
  for index in range(len(cohort.patients)):
    for item in patient_scores(model, cohort, index, bucket_sizes=bucket_sizes,
                               slides_dir=slides_dir,
                               default_patch_size=report.get('patch_size_level0', 256)):
      if jax.process_index() != 0:  # every process computes (a job's model is global); 0 writes
        continue
      written.append(write_slide(out_dir, re.sub(r'[^A-Za-z0-9._-]+', '_', item.slide_id),
                                 item, **options))
  return written
