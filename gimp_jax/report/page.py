"""The report page: report.md and report.html in the run's report/ folder.

`write_report` draws every figure, writes the prediction CSVs, then lays the page out once as a
list of blocks (headings, paragraphs, tables, images, file links) and renders that list twice:
Markdown with relative links, and a self-contained HTML file with the images inlined as base64 (to
mail or open from a notebook). Every file name is a fixed function of the inputs, and the page
holds no date, so the same run gives the same report.
"""

import base64
from collections.abc import Mapping, Sequence
import csv
import dataclasses
import html
import math
import os
import re
import shutil
from typing import Any

import numpy as np

from gimp_jax import metrics
from gimp_jax.report import deepzoom
from gimp_jax.report import figures
from gimp_jax.report import reference_table
from gimp_jax.report import slides
from gimp_jax.report import survival

SPLIT_ORDER = ('test', 'val', 'train')
SUMMARY_ORDER = ('accuracy', 'auc', 'f1', 'balanced_accuracy', 'num_examples')
TABLE_ROWS = 50  # per-patient rows shown on the page; the CSV holds them all
# Files that write_report owns in report_dir; stale ones from an earlier call are removed first.
OWNED = re.compile(r'^((roc|confusion|tsne|heatmap|km)_.+\.png|(loss_curves|pretrain_diagnostics|'
                   r'risk)\.png|(predictions|risk)_.+\.csv|report\.(md|html))$')
OWNED_DIRS = (slides.SLIDES_DIR, deepzoom.VIEWER_DIR)  # folders write_report owns in report_dir


@dataclasses.dataclass(frozen=True)
class Heading:
  text: str
  level: int


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str


@dataclasses.dataclass(frozen=True)
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Image:
  alt: str
  filename: str


@dataclasses.dataclass(frozen=True)
class FileLink:
  text: str
  filename: str


@dataclasses.dataclass(frozen=True)
class Viewer:
  """A zoomable slide with its attention overlay (report.html only; `deepzoom.viewer_html`)."""
  tiles: dict
  overlay: str


Block = Heading | Paragraph | Table | Image | FileLink | Viewer


def fmt(value: Any) -> str:
  """A table cell: whole numbers as integers, else 4 decimals, 1 from 100 up, 3e below 1e-3."""
  number = figures.as_scalar(value)
  if number is None:
    return str(value)
  if not math.isfinite(number):
    return 'NaN' if math.isnan(number) else str(number)
  if number == int(number) and abs(number) < 1e15:
    return str(int(number))
  if abs(number) >= 100:
    return f'{number:.1f}'
  return f'{number:.4f}' if abs(number) >= 1e-3 else f'{number:.3e}'


def safe_name(text: str) -> str:
  """`text` reduced to [A-Za-z0-9._-] for a file name."""
  return re.sub(r'[^A-Za-z0-9._-]+', '_', str(text)).strip('._') or 'x'


def _ordered_splits(names) -> list[str]:
  names = list(names)
  return [s for s in SPLIT_ORDER if s in names] + sorted(s for s in names if s not in SPLIT_ORDER)


def _flatten(values: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'a.b': scalar}; non-scalar leaves are left out."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    elif figures.as_scalar(value) is not None:
      flat[f'{prefix}{key}'] = value
  return flat


def summary_table(results: Mapping[str, Any]) -> Table | None:
  """Metric x split from the results' scalar `<split>_<metric>` entries (train/val/test)."""
  cells: dict[str, dict[str, Any]] = {}
  for key, value in results.items():
    match = re.fullmatch(r'(gene_only_)?(train|val|test)_(.+)', key)
    if match and figures.as_scalar(value) is not None:  # gene_only_: the genes-only baseline
      cells.setdefault((match[1] or '') + match[3], {})[match[2]] = value
  if not cells:
    return None
  splits = _ordered_splits({s for row in cells.values() for s in row})
  names = [m for m in SUMMARY_ORDER if m in cells] + sorted(set(cells) - set(SUMMARY_ORDER))
  rows = [[name] + [fmt(cells[name][s]) if s in cells[name] else '' for s in splits]
          for name in names]
  return Table(['metric'] + splits, rows)


def facts_blocks(facts: Mapping[str, Any]) -> list[Block]:
  """The run's data and settings (`run_facts`): patients per split and class, the command, the
  config's differences from the defaults."""
  blocks: list[Block] = []
  balance = facts.get('splits') or {}
  if balance:
    columns = list(dict.fromkeys(k for row in balance.values() for k in row))
    blocks += [Heading('Data', 2),
               Table(['split'] + columns,
                     [[split] + [str(row.get(c, 0)) for c in columns]
                      for split, row in balance.items()])]
  if 'command' in facts or 'config_diff' in facts:
    blocks.append(Heading('Run', 2))
  if facts.get('command'):
    blocks.append(Paragraph(f'Command: {facts["command"]}'))
  if 'config_diff' in facts:
    diff = list(facts['config_diff'])
    if not diff:
      blocks.append(Paragraph("Config: the paper's settings (configs/nsclc.py, published)."))
    else:
      blocks += [Paragraph("Config fields that differ from the paper's settings "
                           '(configs/nsclc.py, published; report.* and stages left out):'),
                 Table(['field', 'paper -> this run'],
                       [change.split(': ', 1) if ': ' in change else [change, '']
                        for change in diff])]
  return blocks


def stages_table(stages: Mapping[str, Mapping[str, Any]]) -> Table | None:
  """One row per stage, one column per scalar entry (nested dicts flattened as 'a.b')."""
  flat = {name: _flatten(values) for name, values in stages.items() if isinstance(values, Mapping)}
  columns = list(dict.fromkeys(key for values in flat.values() for key in values))
  if not columns:
    return None
  rows = [[name] + [fmt(values[c]) if c in values else '' for c in columns]
          for name, values in flat.items()]
  return Table(['stage'] + columns, rows)


def _check_predictions(split: str, pred: Mapping[str, Any],
                       num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(patient_id [N] str, label [N] int, probs [N, C]) of one split, checked."""
  ids = np.asarray(pred['patient_id']).astype(str)
  labels, probs = np.asarray(pred['label']), np.asarray(pred['probs'], np.float64)
  if (probs.ndim != 2 or probs.shape[1] != num_classes
      or not ids.shape == labels.shape == (probs.shape[0],)):
    raise ValueError(f'predictions[{split!r}]: need patient_id [N], label [N], probs [N, '
                     f'{num_classes}]; got {ids.shape}, {labels.shape}, {probs.shape}')
  if not np.issubdtype(labels.dtype, np.integer) or (
      labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
    raise ValueError(f'predictions[{split!r}]: labels must be integers in [0, {num_classes})')
  return ids, labels, probs


def write_predictions_csv(path: str, ids: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                          class_names: Sequence[str]) -> str:
  """One row per patient: ID, true and predicted class (index and name), correct, P(class)."""
  pred = np.argmax(probs, axis=1)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['patient_id', 'label', 'label_name', 'predicted', 'predicted_name',
                     'correct'] + [f'prob_{name}' for name in class_names])
    for pid, y, p, row in zip(ids, labels, pred, probs):
      writer.writerow([pid, int(y), class_names[y], int(p), class_names[p], int(y == p)] +
                      [f'{v:.6g}' for v in row])
  return path


def _prediction_rows(ids: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     class_names: Sequence[str]) -> list[list[str]]:
  """The page's first TABLE_ROWS rows: patient, true, predicted, P(predicted), correct."""
  pred = np.argmax(probs, axis=1)
  return [[pid, class_names[y], class_names[p], f'{row[p]:.3f}', 'yes' if y == p else 'no']
          for pid, y, p, row in zip(ids[:TABLE_ROWS], labels, pred, probs)]


def _classification_blocks(report_dir: str, split: str, labels: np.ndarray, probs: np.ndarray,
                           class_names: list[str]) -> list[Block]:
  """ROC curve and confusion matrix of one split: labels [N], probs [N, C]."""
  stem = safe_name(split)
  roc = figures.roc_curve_png(os.path.join(report_dir, f'roc_{stem}.png'), labels, probs,
                              class_names, title=f'ROC, {split}')
  cm = metrics.classification_metrics(labels, probs)['confusion_matrix']
  confusion = figures.confusion_matrix_png(os.path.join(report_dir, f'confusion_{stem}.png'), cm,
                                           class_names, title=f'Confusion matrix, {split}')
  return [Heading(f'Classification: {split}', 2),
          Image(f'ROC curve, {split}', os.path.basename(roc)),
          Image(f'Confusion matrix, {split}', os.path.basename(confusion))]


def _survival_blocks(report_dir: str, predictions: Mapping[str, Mapping[str, Any]],
                     cutoff: float, time_unit: str = '') -> list[Block]:
  """Kaplan-Meier curves at the training median risk with the log-rank p-value (val, test), the
  risk distribution, the per-case risk CSVs and the test cases' risk table."""
  blocks: list[Block] = [
      Heading('Survival', 2),
      Paragraph(f'Cases split at the median predicted risk of the training cases ({cutoff:.4g}): '
                'high risk above it. Kaplan-Meier estimates and log-rank test from '
                'scikit-survival.')]
  files: list[Block] = []
  images: list[Block] = []
  rows = []
  for split in _ordered_splits(predictions):
    pred = predictions[split]
    risk = np.asarray(pred['risk'], np.float64)
    path, p_value = survival.km_png(os.path.join(report_dir, f'km_{safe_name(split)}.png'),
                              pred['time'], pred['censorship'], risk > cutoff,
                              f'Kaplan-Meier, {split}', time_unit)
    images.append(Image(f'Kaplan-Meier curves, {split}', os.path.basename(path)))
    events = np.asarray(pred['censorship']) == 0
    rows.append([split, str(risk.size), str(int(events.sum())), str(int((risk > cutoff).sum())),
                 fmt(p_value)])
    csv_path = survival.write_risk_csv(
        os.path.join(report_dir, f'risk_{safe_name(split)}.csv'), pred['patient_id'],
        pred['time'], pred['censorship'], risk, cutoff)
    files.append(FileLink(f'All {split} risks (CSV)', os.path.basename(csv_path)))
  blocks += [Table(['split', 'cases', 'events', 'high risk', 'log-rank p'], rows)] + images
  path = survival.risk_png(os.path.join(report_dir, 'risk.png'),
                           {s: p['risk'] for s, p in predictions.items()}, cutoff)
  blocks.append(Image('Predicted risk', os.path.basename(path)))
  if 'test' in predictions:
    pred = predictions['test']
    order = np.argsort(-np.asarray(pred['risk']), kind='stable')[:TABLE_ROWS]
    blocks += [Heading('Test risks', 2),
               Paragraph(f'Per-case predicted risk, highest first ({min(order.size, TABLE_ROWS)} '
                         f'of {len(pred["risk"])} test cases).'),
               Table(['patient', 'time', 'censored', 'risk', 'group'],
                     [[str(pred['patient_id'][i]), fmt(float(pred['time'][i])),
                       'yes' if pred['censorship'][i] else 'no', f'{pred["risk"][i]:.4f}',
                       'high' if pred['risk'][i] > cutoff else 'low'] for i in order])]
  return blocks + [Heading('Files', 2)] + files


def _heatmap_blocks(report_dir: str, heatmaps: Sequence[slides.SlideScores],
                    options: Mapping[str, int | str]) -> list[Block]:
  """Per slide (named after the patient; a second slide of a patient gets _2): the heatmap, the
  top patches and the zoomable viewer when the slide is at hand, the scores' CSV and GeoJSON."""
  blocks: list[Block] = [
      Heading('Attention heatmaps', 2),
      Paragraph("Patch attention (the model's attention protocol, `gimp_jax.models.attention`), "
                f"on the {options.get('heatmap_scale', 'mass')!r} scale (report.heatmap_scale: "
                '"mass" = attention x N, log scale; "rank" = percentile). On the slide where its '
                "image is at hand (config.data.slides_dir or the feature file's slide_path), "
                "kept on tissue; else at the patches' level-0 coordinates "
                '(grey = no patch). The GeoJSON opens in QuPath: drag it onto the slide, then '
                'Measure > Show measurement maps > attention x N (or attention percentile).')]
  taken: set[str] = set()
  for item in heatmaps:
    stem = base = safe_name(item.patient_id)
    copy = 1
    while stem in taken:  # two slides of one patient, or IDs equal after safe_name
      copy += 1
      stem = f'{base}_{copy}'
    taken.add(stem)
    files = slides.write_slide(report_dir, stem, item, **options)
    blocks += [Heading(f'{item.patient_id}: slide {item.slide_id}', 3),
               Image(f'Attention heatmap, {item.patient_id}', files.heatmap)]
    if files.top_patches:
      blocks.append(Image(f'Top patches, {item.patient_id}', files.top_patches))
    if files.tiles:
      blocks.append(Viewer(files.tiles, files.overlay))
    blocks += [FileLink(f'Patch scores, {item.slide_id} (CSV)', files.scores_csv),
               FileLink(f'Patch scores, {item.slide_id} (GeoJSON for QuPath)', files.geojson)]
  return blocks


def _has_curves(history: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]],
                val_history: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]]) -> bool:
  """Whether `figures.loss_curves_png` has something to draw: a loss, or a validation metric."""
  return any(figures.as_scalar(value) is not None and (figures.is_loss(name) or validation)
             for curves, validation in ((history, False), (val_history, True))
             for records in curves.values() for _, values in records
             for name, value in values.items())


def _clear(report_dir: str) -> None:
  """Removes an earlier report's files (names matching `OWNED`) from `report_dir`."""
  for name in os.listdir(report_dir):
    if OWNED.match(name) and os.path.isfile(os.path.join(report_dir, name)):
      os.remove(os.path.join(report_dir, name))
    elif name in OWNED_DIRS and os.path.isdir(os.path.join(report_dir, name)):
      shutil.rmtree(os.path.join(report_dir, name))


def write_report(report_dir: str | os.PathLike[str], *, results: Mapping[str, Any],
                 class_names: Sequence[str],
                 predictions: Mapping[str, Mapping[str, Any]],
                 tsne: tuple[np.ndarray, np.ndarray] | None = None,
                 heatmaps: Sequence[slides.SlideScores] = (),
                 history: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]] | None = None,
                 val_history: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]] | None = None,
                 diagnostics: tuple[Sequence[tuple[int, Mapping[str, Any]]], float, float]
                 | None = None,
                 seed: int = 0, survival_cutoff: float | None = None,
                 slide_options: Mapping[str, int | str] | None = None,
                 facts: Mapping[str, Any] | None = None) -> str:
  """Writes report.md, report.html, their PNGs and predictions_<split>.csv into `report_dir`.

  Args:
    report_dir: the folder (created if missing). Everything is written into a temporary sibling
      folder first, then moved in, so a failure (a full disk) leaves the earlier report as it was;
      files of an earlier report there (see `OWNED`) are then removed, so the folder holds exactly
      what the page links.
    results: the run's results: scalar `<split>_<metric>` entries make the summary table;
      `results['stages'][name]` dicts (final losses, wall times, ...) the stage table;
      `results['versions']` (name -> version), when present, a line under the title.
    class_names: C class names, in label order.
    predictions: split -> {'patient_id': [N] str, 'label': [N] int, 'probs': [N, C]}; each split
      gets a ROC curve, a confusion matrix and a CSV; 'test' also a table on the page.
    tsne: (embeddings [N, E], labels [N]) of the training set after pre-training, or None.
    heatmaps: the slides to draw (`slides.SlideScores`).
    history: stage -> [(step, {metric: scalar})] for the training curves (losses per step), or
      None.
    val_history: stage -> [(epoch, {metric: scalar})], the validation metrics after each epoch.
    diagnostics: (pretrain [(step, {metric: scalar})], triplet margin, collapse threshold) for the
      pre-training diagnostics figure (`figures.pretrain_diagnostics_png`), or None.
    seed: the t-SNE random state.
    survival_cutoff: for a survival run, the median training risk: the predictions then hold
      'patient_id', 'time', 'censorship' and 'risk' [N], and the page shows Kaplan-Meier curves,
      the risk distribution and the per-case risks instead of ROC curves and confusion matrices.
    slide_options: `slides.write_slide`'s top_k, thumbnail_size, deepzoom_size and heatmap_scale.
    facts: the run's facts (`run_facts`): 'splits' (split -> {column: count}), 'command',
      'config_diff' (['field: default -> value']), 'chosen_epochs' (stage -> epoch, marked on the
      curves), 'time_unit' (survival times' unit, on the Kaplan-Meier axes).

  Returns:
    The path of report.md.
  """
  final = os.fspath(report_dir)
  report_dir = f'{final.rstrip(os.sep)}.tmp-{os.getpid()}'  # a full disk leaves no half report
  shutil.rmtree(report_dir, ignore_errors=True)
  os.makedirs(report_dir)
  try:
    _compose(report_dir, results, class_names, predictions, tsne, heatmaps, history, val_history,
             diagnostics, seed, survival_cutoff, slide_options or {}, facts or {})
    os.makedirs(final, exist_ok=True)
    _clear(final)
    for name in sorted(os.listdir(report_dir), key=lambda n: (n.startswith('report.'), n)):
      os.replace(os.path.join(report_dir, name), os.path.join(final, name))  # the page last
  finally:
    shutil.rmtree(report_dir, ignore_errors=True)
  return os.path.join(final, 'report.md')


def _compose(report_dir, results, class_names, predictions, tsne, heatmaps, history, val_history,
             diagnostics, seed, survival_cutoff, slide_options, facts) -> None:
  """`write_report`'s files, written into `report_dir`."""
  names = list(class_names)
  checked = {} if survival_cutoff is not None else {
      split: _check_predictions(split, predictions[split], len(names))
      for split in _ordered_splits(predictions)}

  blocks: list[Block] = [Heading('GiMP report', 1)]
  versions = results.get('versions')
  if isinstance(versions, Mapping) and versions:
    blocks.append(Paragraph('Versions: ' + ', '.join(f'{k} {v}' for k, v in versions.items())))
  blocks += [Heading('Summary', 2),
             summary_table(results) or Paragraph('No split metrics in the results.')]
  linear = reference_table.rows(results, fmt)  # the penalised linear reference, if fitted
  blocks += [Heading('Penalised linear reference', 2), Paragraph(reference_table.TEXT),
             Table(*linear)] if linear else []
  blocks += facts_blocks(facts)
  stage_table = stages_table(results.get('stages') or {})
  if stage_table:
    blocks += [Heading('Stages', 2), stage_table]
  for split, (_, labels, probs) in checked.items():
    blocks += _classification_blocks(report_dir, split, labels, probs, names)
  if tsne is not None:
    path = figures.tsne_png(os.path.join(report_dir, 'tsne_train.png'), tsne[0], tsne[1], names,
                            seed)
    blocks += [Heading('t-SNE of CLS_pat (training set, after pre-training)', 2),
               Image('t-SNE of CLS_pat', os.path.basename(path))]
  if survival_cutoff is not None:
    blocks += _survival_blocks(report_dir, predictions, survival_cutoff,
                               facts.get('time_unit', ''))
  if heatmaps:
    blocks += _heatmap_blocks(report_dir, heatmaps, slide_options)
    if any(isinstance(block, Viewer) for block in blocks):
      deepzoom.copy_viewer(report_dir)
  if _has_curves(history or {}, val_history or {}):
    path = figures.loss_curves_png(os.path.join(report_dir, 'loss_curves.png'), history or {},
                                   val_history, facts.get('chosen_epochs'))
    blocks += [Heading('Training curves', 2), Image('Training curves', os.path.basename(path))]
  if diagnostics is not None and diagnostics[0]:
    path = figures.pretrain_diagnostics_png(os.path.join(report_dir, 'pretrain_diagnostics.png'),
                                            *diagnostics)
    blocks += [Heading('Pre-training diagnostics', 2),
               Paragraph('Is each term of L_pre doing work? Active triplet anchors > 0 means L_tri '
                         'sends gradient; a gene gap above the margin means the gene half alone '
                         'separates the classes; a CLS_img spread near 0 means the slide token '
                         'has collapsed.'),
               Image('Pre-training diagnostics', os.path.basename(path))]
  if 'test' in checked:
    ids = checked['test'][0]
    shown = f'the first {TABLE_ROWS} of {ids.size}' if ids.size > TABLE_ROWS else f'all {ids.size}'
    blocks += [Heading('Test predictions', 2),
               Paragraph(f'Per-patient predictions, {shown} test patients.'),
               Table(['patient', 'true', 'predicted', 'P(predicted)', 'correct'],
                     _prediction_rows(*checked['test'], names))]
  if checked:
    blocks.append(Heading('Files', 2))
  for split, arrays in checked.items():
    path = write_predictions_csv(
        os.path.join(report_dir, f'predictions_{safe_name(split)}.csv'), *arrays, names)
    blocks.append(FileLink(f'All {split} predictions (CSV)', os.path.basename(path)))

  with open(os.path.join(report_dir, 'report.html'), 'w') as f:
    f.write(to_html(blocks, report_dir))
  with open(os.path.join(report_dir, 'report.md'), 'w') as f:
    f.write(to_markdown(blocks))


def _md_text(text: str) -> str:
  return re.sub(r'([\\`*_\[\]<>#|])', r'\\\1', str(text)).replace('\n', ' ')


def to_markdown(blocks: Sequence[Block]) -> str:
  """The blocks as Markdown; images and files are relative links."""
  parts = []
  for block in blocks:
    if isinstance(block, Heading):
      parts.append(f'{"#" * block.level} {_md_text(block.text)}')
    elif isinstance(block, Paragraph):
      parts.append(_md_text(block.text))
    elif isinstance(block, Table):
      lines = ['| ' + ' | '.join(_md_text(h) for h in block.header) + ' |',
               '|' + '---|' * len(block.header)]
      lines += ['| ' + ' | '.join(_md_text(c) for c in row) + ' |' for row in block.rows]
      parts.append('\n'.join(lines))
    elif isinstance(block, Image):
      parts.append(f'![{_md_text(block.alt)}]({block.filename})')
    elif isinstance(block, Viewer):
      parts.append('Zoomable slide with the overlay: open report.html.')
    else:
      parts.append(f'- [{_md_text(block.text)}]({block.filename})')
  return '\n\n'.join(parts) + '\n'


_STYLE = ('body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}'
          'table{border-collapse:collapse;margin:1em 0}'
          'td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}'
          'th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}'
          '.viewer{border:1px solid #ccc;background:#fff}.viewer img{margin:0;max-width:none}')


def to_html(blocks: Sequence[Block], report_dir: str) -> str:
  """The blocks as one HTML page; the PNGs in `report_dir` are inlined as base64 data URIs."""
  body = []
  viewers = 0
  for block in blocks:
    if isinstance(block, Heading):
      body.append(f'<h{block.level}>{html.escape(block.text)}</h{block.level}>')
    elif isinstance(block, Paragraph):
      body.append(f'<p>{html.escape(block.text)}</p>')
    elif isinstance(block, Table):
      head = ''.join(f'<th>{html.escape(h)}</th>' for h in block.header)
      rows = ''.join('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in row) + '</tr>'
                     for row in block.rows)
      body.append(f'<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
    elif isinstance(block, Image):
      with open(os.path.join(report_dir, block.filename), 'rb') as f:
        data = base64.b64encode(f.read()).decode('ascii')
      body.append(f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">')
    elif isinstance(block, Viewer):
      body.append(deepzoom.viewer_html(viewers, block.tiles, block.overlay))
      viewers += 1
    else:
      body.append(f'<p><a href="{html.escape(block.filename)}">{html.escape(block.text)}</a></p>')
  script = deepzoom.SCRIPT_TAG if viewers else ''
  return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>GiMP report</title>'
          f'<style>{_STYLE}</style>{script}</head>\n<body>\n' + '\n'.join(body)
          + '\n</body></html>\n')
