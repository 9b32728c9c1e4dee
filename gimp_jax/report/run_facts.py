"""What the report says about the run itself: the command, the config's differences from the
paper's defaults, the patients per split and class, and the epoch each stage kept."""

import os
import sys

import ml_collections
import numpy as np

from gimp_jax import workdir as workdir_lib
from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.configs import nsclc


def command() -> str:
  """The command line of this process (program name, then its arguments)."""
  return ' '.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])


def config_diff(config: ml_collections.ConfigDict) -> list[str]:
  """'field: paper -> this run' for every field that differs from the paper's settings
  (`configs.nsclc.published`; so GiMP's default recipe shows) (`workdir.config_changes`, which
  leaves out stages, data.prefetch and report.*)."""
  return workdir_lib.config_changes(workdir_lib.as_json(nsclc.published()),
                                    workdir_lib.as_json(config))


def split_balance(cohort) -> dict[str, dict[str, int]]:
  """split -> {'patients': n, then per class (classification) or 'events' and 'censored'
  (survival): count}, splits in train, val, test order."""
  out = {}
  for split in ('train', 'val', 'test'):
    if split not in cohort.splits:
      continue
    index = np.asarray(cohort.splits[split])
    row = {'patients': int(index.size)}
    if cohort.censorship is not None:
      censored = np.asarray(cohort.censorship)[index]
      row.update(events=int((censored == 0).sum()), censored=int((censored == 1).sum()))
    else:
      labels = np.array([cohort.patients[i].label for i in index], np.int64)
      for c, name in enumerate(cohort.class_names):
        row[name] = int((labels == c).sum())
    out[split] = row
  return out


def chosen_epochs(workdir: str, stages) -> dict[str, int]:
  """stage -> the epoch its `<stage>_best` checkpoint holds (stages without one left out)."""
  out = {}
  for stage in stages:
    if not os.path.isdir(os.path.join(workdir, 'checkpoints', f'{stage}_best')):
      continue
    best = StageCheckpoints(workdir, f'{stage}_best', max_to_keep=1)
    try:
      meta = best.meta()
    finally:
      best.close()
    if meta is not None:
      out[stage] = int(meta['epoch'])
  return out
