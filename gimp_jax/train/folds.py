"""Every fold of a cross-validation in one command, and the summary over folds (CLAM's `--k` and
`summary.csv`).

With `data.fold = -1` (the default) and either `data.num_folds = k` or `data.splits_dir` (k =
the number of `splits_<i>.csv` files there), fold i runs in `<workdir>/fold_<i>` exactly as a
single run (`run.train_split` with `data.fold = i`, resumable), then `<workdir>/summary.csv`
(one row per fold, then the mean and the standard deviation over folds, ddof = 1), `summary.json`
and `summary.md` are written (`every_fold`, which `run.train_and_evaluate` calls when
`num_folds` says so).
"""

import csv
import json
import os
import re
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from gimp_jax import provenance
from gimp_jax.data import split_checks
from gimp_jax.data import splits as splits_lib
from gimp_jax.errors import DataError

SUMMARY_KEY = re.compile(
    r'^((gene_only_|reference_|vs_reference_|stack_)?(val|test)_[a-z_0-9]+|stack_weight)$')


def num_folds(data_cfg: ml_collections.ConfigDict) -> int:
  """k when the `data` config block asks for every fold in one command, else 0."""
  if data_cfg.get('fold', -1) >= 0:
    return 0
  if data_cfg.get('splits_dir', ''):
    return splits_lib.count_split_files(data_cfg.splits_dir)
  return int(data_cfg.get('num_folds', 0))


def summarize(per_fold: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
  """(metric names, [k, M] values) of the scalar `val_*`, `test_*` and `gene_only_*` results
  present in every fold."""
  names = [k for k in per_fold[0] if SUMMARY_KEY.match(k)
           and all(isinstance(r.get(k), (int, float)) for r in per_fold)]
  return names, np.asarray([[float(r[k]) for k in names] for r in per_fold], np.float64)


def write_summary(workdir: str, names: list[str], values: np.ndarray) -> dict[str, Any]:
  """summary.csv / .json / .md of [k, M] fold values (by process 0 of a job of several processes);
  returns {metric: mean, metric_std: std}."""
  mean = np.nanmean(values, 0)
  std = np.nanstd(values, 0, ddof=1) if values.shape[0] > 1 else np.zeros(len(names))
  out = {k: float(m) for k, m in zip(names, mean)}
  out.update({f'{k}_std': float(s) for k, s in zip(names, std)})
  if jax.process_index() != 0:  # of a job of several processes, process 0 writes
    return out
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['fold'] + names)
    for i, row in enumerate(values):
      writer.writerow([i] + [f'{v:.6g}' for v in row])
    writer.writerow(['mean'] + [f'{v:.6g}' for v in mean])
    writer.writerow(['std'] + [f'{v:.6g}' for v in std])
  lines = ['| fold | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
  lines += [f'| {i} | ' + ' | '.join(f'{v:.4f}' for v in row) + ' |' for i, row in enumerate(values)]
  lines.append('| mean ± std | ' + ' | '.join(f'{m:.4f} ± {s:.4f}' for m, s in zip(mean, std))
               + ' |')
  with open(os.path.join(workdir, 'summary.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  provenance.write_json_atomic(os.path.join(workdir, 'summary.json'), {
      'folds': values.shape[0], 'mean': {k: float(m) for k, m in zip(names, mean)},
      'std': {k: float(s) for k, s in zip(names, std)},
      'per_fold': [dict(zip(names, map(float, row))) for row in values]})
  return out


def every_fold(config: ml_collections.ConfigDict, workdir: str,
               train_split: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
               ) -> dict[str, Any]:
  """Every fold (module docstring), each by `train_split(config with data.fold = i, fold
  workdir)`; returns the summary over folds."""
  k = num_folds(config.data)
  problems = split_checks.problems(config)  # every fold, before any trains
  if problems:
    raise DataError('\n'.join(problems))
  per_fold = []
  for fold in range(k):
    cfg = config.copy_and_resolve_references()
    cfg.data.fold = fold
    logging.info('Fold %d of %d', fold + 1, k)
    per_fold.append(train_split(cfg, os.path.join(workdir, f'fold_{fold}')))
  names, values = summarize(per_fold)
  summary = write_summary(workdir, names, values)
  logging.info('Summary over %d folds (%s):\n%s', k, os.path.join(workdir, 'summary.csv'),
               json.dumps(summary, indent=1))
  return summary
