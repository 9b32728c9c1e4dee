"""The report's figures: ROC curves, confusion matrix, t-SNE of CLS_pat, loss curves.

Drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure`, saved through Agg): no
screen, no pyplot state, and the caller's backend (e.g. a notebook's inline one) is left alone.
Each function writes one PNG at `DPI` and returns its path.
"""

from collections.abc import Mapping, Sequence
import math
import os
from typing import Any

from matplotlib import ticker
from matplotlib.figure import Figure
import numpy as np
from sklearn import manifold
from sklearn import metrics as sk_metrics
import threadpoolctl

from gimp_jax import metrics

DPI = 120


def save_png(fig: Figure, path: str | os.PathLike[str]) -> str:
  """Writes `fig` as a PNG at `DPI` (no software/date metadata, so reruns give equal bytes)."""
  fig.savefig(path, dpi=DPI, format='png', metadata={'Software': None})
  return os.fspath(path)


def roc_curve_png(path: str | os.PathLike[str], labels: np.ndarray, probs: np.ndarray,
                  class_names: Sequence[str], title: str = 'ROC curve') -> str:
  """ROC curve(s) with the AUC in the legend.

  Binary: one curve, class 1 (positive) vs class 0. C > 2: one one-vs-rest curve per class; a
  class with no example (or no counter-example) in `labels` has no curve and says so in the legend.

  Args:
    path: the PNG to write.
    labels: [N] class indices in [0, C).
    probs: [N, C] class probabilities.
    class_names: C names.
    title: the axes title.

  Returns:
    `path`.
  """
  labels, probs = np.asarray(labels), np.asarray(probs)
  _check_names(class_names, probs.shape[-1])
  fig = Figure(figsize=(5, 4.6), layout='constrained')
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], ls='--', lw=1, color='0.6', label='chance')
  classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
  for c in classes:
    positive = labels == c
    name = (f'{class_names[1]} vs {class_names[0]}' if probs.shape[1] == 2
            else f'{class_names[c]} vs rest')
    if positive.all() or not positive.any():
      ax.plot([], [], ' ', label=f'{name}: undefined (one class only)')
      continue
    fpr, tpr, _ = sk_metrics.roc_curve(positive, probs[:, c])
    auc = sk_metrics.roc_auc_score(positive, probs[:, c])
    ax.plot(fpr, tpr, lw=2, label=f'{name} (AUC = {auc:.3f})')
  if probs.shape[1] > 2:
    ax.plot([], [], ' ', label=f'macro AUC = {metrics.roc_auc(labels, probs):.3f}')
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel='false positive rate',
         ylabel='true positive rate', title=f'{title} (n = {labels.size})', aspect='equal')
  ax.legend(loc='lower right', fontsize='small')
  return save_png(fig, path)


def confusion_matrix_png(path: str | os.PathLike[str], cm: np.ndarray | Sequence[Sequence[int]],
                         class_names: Sequence[str], title: str = 'Confusion matrix') -> str:
  """The confusion matrix, each cell annotated with its count and its share of the true class.

  Args:
    path: the PNG to write.
    cm: [C, C] counts, row = true class, column = predicted class.
    class_names: C names.
    title: the axes title.

  Returns:
    `path`.
  """
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'cm must be [C, C], got shape {cm.shape}')
  _check_names(class_names, cm.shape[0])
  size = 2.2 + 0.9 * cm.shape[0]
  fig = Figure(figsize=(size + 1, size), layout='constrained')
  ax = fig.subplots()
  image = ax.imshow(cm, cmap='Blues', vmin=0, vmax=max(int(cm.max()), 1))
  fig.colorbar(image, ax=ax, shrink=0.8, label='patients')
  rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
  for (i, j), count in np.ndenumerate(cm):
    ax.text(j, i, f'{count}\n({100 * count / rows[i, 0]:.0f}%)', ha='center', va='center',
            color='white' if count > cm.max() / 2 else 'black', fontsize='medium')
  ticks = np.arange(cm.shape[0])
  ax.set_xticks(ticks, list(class_names), rotation=30 if cm.shape[0] > 3 else 0)
  ax.set_yticks(ticks, list(class_names))
  ax.set(xlabel='predicted', ylabel='true', title=f'{title} (n = {int(cm.sum())})')
  return save_png(fig, path)


def tsne_embed(embeddings: np.ndarray, seed: int) -> np.ndarray:
  """2-D t-SNE (scikit-learn, PCA init, perplexity min(30, (N - 1) / 3)), deterministic per seed.

  With the PCA initialisation the layout hardly depends on the seed; the seed pins what
  randomness there is (a randomised SVD on large inputs). OpenMP is held to one thread: the
  Barnes-Hut gradient is then summed in a fixed order, and a busy machine does not stall on
  thread barriers (the report's N is a few hundred patients: ~4 s of CPU for 567).

  Args:
    embeddings: [N, E] with N >= 2.
    seed: the t-SNE random state.

  Returns:
    [N, 2] float32 coordinates.
  """
  embeddings = np.asarray(embeddings, np.float32)
  if embeddings.ndim != 2 or embeddings.shape[0] < 2:
    raise ValueError(f't-SNE needs embeddings [N, E] with N >= 2, got shape {embeddings.shape}')
  if not np.all(np.isfinite(embeddings)):
    raise ValueError('t-SNE embeddings contain NaN or inf')
  n = embeddings.shape[0]
  tsne = manifold.TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init='pca',
                       random_state=seed)
  with threadpoolctl.threadpool_limits(limits=1, user_api='openmp'):
    return tsne.fit_transform(embeddings).astype(np.float32)


def tsne_png(path: str | os.PathLike[str], embeddings: np.ndarray, labels: np.ndarray,
             class_names: Sequence[str], seed: int,
             title: str = 't-SNE of CLS_pat, training set after pre-training') -> str:
  """The paper's Fig. 2: `tsne_embed` of the embeddings, one colour per class.

  Args:
    path: the PNG to write.
    embeddings: [N, E], e.g. CLS_pat of the training patients.
    labels: [N] class indices in [0, C).
    class_names: C names.
    seed: the t-SNE random state.
    title: the axes title.

  Returns:
    `path`.
  """
  labels = np.asarray(labels)
  if labels.shape != (np.shape(embeddings)[0],):
    raise ValueError(f'labels must be [N] with N = {np.shape(embeddings)[0]}, got {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
    raise ValueError(f'labels must lie in [0, {len(class_names)})')
  points = tsne_embed(embeddings, seed)
  fig = Figure(figsize=(5.6, 5), layout='constrained')
  ax = fig.subplots()
  for c, name in enumerate(class_names):
    member = labels == c
    ax.scatter(points[member, 0], points[member, 1], s=14, alpha=0.8, color=f'C{c % 10}',
               label=f'{name} ({int(member.sum())})')
  ax.set(xticks=[], yticks=[], xlabel='t-SNE 1', ylabel='t-SNE 2', title=f'{title} (seed {seed})')
  ax.legend(fontsize='small', markerscale=1.5)
  return save_png(fig, path)


def is_loss(name: str) -> bool:
  return 'loss' in name or name.startswith('l_')


def as_scalar(value: Any) -> float | None:
  """A float for a real scalar (Python, NumPy or JAX), None for anything else (bools included)."""
  if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def _series(records: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, tuple[list, list]]:
  """metric name -> (steps, values) over one stage's (step, metrics) records, in record order."""
  series: dict[str, tuple[list, list]] = {}
  for step, values in records:
    for name, value in values.items():
      number = as_scalar(value)
      if number is not None:
        steps, ys = series.setdefault(name, ([], []))
        steps.append(int(step))
        ys.append(number)
  return series


def curve_panels(history: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]],
                 val_history: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]] | None = None
                 ) -> dict[str, tuple[dict[str, tuple[list, list]], dict[str, tuple[list, list]]]]:
  """stage -> ({loss: (steps, values)}, {validation metric: (epochs, values)}): what
  `loss_curves_png` draws; stages with neither are left out."""
  val_history = val_history or {}
  stages = {}
  for name in list(history) + [n for n in val_history if n not in history]:
    losses = {m: v for m, v in _series(history.get(name, ())).items() if is_loss(m)}
    val = _series(val_history.get(name, ()))
    if losses or val:
      stages[name] = (losses, val)
  return stages


Records = Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]]  # stage -> [(step, metrics)]


def loss_curves_png(path: str | os.PathLike[str], history: Records,
                    val_history: Records | None = None,
                    chosen: Mapping[str, int] | None = None) -> str:
  """Training curves: per stage, its losses per step and its validation metrics per epoch, each
  panel drawn only where there is something to draw (two panels a row; a stage without validation,
  such as pre-training, has its loss panel alone).

  A metric is a loss when its name contains 'loss' or starts with 'l_' (l_rec, l_tri); the other
  per-step metrics (gradient norm, diagnostics) are left out. The loss axis turns logarithmic when
  the positive losses span more than two decades. Non-numeric values are left out; NaN shows as a
  gap.

  Args:
    path: the PNG to write.
    history: stage name -> [(step, {metric name: scalar})], e.g. the metrics JSON lines.
    val_history: stage name -> [(epoch, {metric name: scalar})] of the validation after each epoch.
    chosen: stage name -> the epoch whose model was kept (marked on its validation panel).

  Returns:
    `path`.
  """
  stages = curve_panels(history, val_history)
  if not stages:
    raise ValueError('history holds no numeric metrics to plot')
  chosen = chosen or {}
  panels = [(stage, series, x, what) for stage, pair in stages.items()
            for series, x, what in zip(pair, ('step', 'epoch'), ('losses', 'validation'))
            if series]
  ncols = min(2, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig = Figure(figsize=(5.2 * ncols, 2.8 * nrows), layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[len(panels):]:
    ax.remove()
  for ax, (stage, series, x, what) in zip(axes, panels):
    for name, (xs, ys) in series.items():
      ax.plot(xs, ys, lw=1.5, marker='.' if len(ys) < 30 else None, label=name)
    positive = [y for _, ys in series.values() for y in ys if math.isfinite(y) and y > 0]
    if what == 'losses' and positive and max(positive) > 100 * min(positive):
      ax.set_yscale('log')
    if what == 'validation' and stage in chosen:
      ax.axvline(chosen[stage], color='k', ls='--', lw=1, label=f'kept (epoch {chosen[stage]})')
    ax.set(xlabel=x, title=f'{stage}: {what}')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # steps and epochs
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  return save_png(fig, path)


def pretrain_diagnostics_png(path: str | os.PathLike[str],
                             records: Sequence[tuple[int, Mapping[str, Any]]], margin: float,
                             collapse: float) -> str:
  """Whether GiMP's pre-training terms do work, per step: four panels.

  (1) L_tri and L_rec; (2) the fraction of anchors whose triplet hinge is active (0 = no triplet
  gradient at all); (3) the gene gap (nearest negative minus farthest positive squared distance of
  the CLS_ge half) against the margin: above it, the gene half alone satisfies every triplet;
  (4) the relative spread of CLS_img across the batch against the collapse threshold.

  Args:
    path: the PNG to write.
    records: [(step, {metric: scalar})] of the pretrain stage (metrics.jsonl).
    margin: the triplet margin.
    collapse: the spread below which CLS_img counts as collapsed.

  Returns:
    `path`.
  """
  series = _series(records)
  if not series:
    raise ValueError('no pre-training metrics to plot')
  panels = ((('tri_loss', 'img_tri_loss', 'rec_loss'), 'losses', None),
            (('tri_active',), 'active triplet anchors (fraction)', None),
            (('gene_gap',), 'gene gap vs margin', ('margin', margin)),
            (('img_spread',), 'CLS_img spread (collapse detector)', ('collapse', collapse)))
  fig = Figure(figsize=(10.4, 5.6), layout='constrained')
  for ax, (names, title, line) in zip(fig.subplots(2, 2).ravel(), panels):
    shown = [n for n in names if n in series]
    for name in shown:
      ax.plot(*series[name], lw=1.2, label=name)
    if line is not None and shown:
      ax.axhline(line[1], color='k', ls='--', lw=1, label=f'{line[0]} {line[1]:g}')
    if not shown:
      ax.text(0.5, 0.5, 'not computed in this run', ha='center', va='center',
              transform=ax.transAxes)
    ax.set(xlabel='step', title=title)
    ax.grid(alpha=0.3)
    if shown:
      ax.legend(fontsize='small')
  return save_png(fig, path)


def _check_names(class_names: Sequence[str], num_classes: int) -> None:
  if len(class_names) != num_classes:
    raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
  if num_classes < 2:
    raise ValueError(f'need at least 2 classes, got {num_classes}')
