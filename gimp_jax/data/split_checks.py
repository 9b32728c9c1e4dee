"""Every fold's split checked before anything trains, as `gimp_jax.main` will draw it.

`gimp_jax.main` with `data.fold = -1` runs every fold of `data.num_folds` or of the split files
in `data.splits_dir`; the cohort loader only draws one of them. So the folds are checked here, all
up front, from the labels CSV alone (no feature file is read):
- `splits_dir`: the files are numbered splits_0.csv ... splits_<k-1>.csv without a gap; every
  case they name is in the labels CSV, in one column; the columns the stages need are not empty
  (named after the file and its column, not the labels CSV);
- survival: every split of every fold holds an event, and the validation split a comparable pair
  (an event before another case's time), else the C-index that selects the epoch is NaN;
- classification: a validation split holding every class when the epoch is selected on its AUC,
  and a training split holding every class for the `probe` stage (it fits a classifier per draw
  of k training patients per class).
"""

import csv

import ml_collections
import numpy as np

from gimp_jax.data import labels as labels_lib
from gimp_jax.data import splits as splits_lib
from gimp_jax.data import survival as survival_lib
from gimp_jax.errors import DataError

# The stages that need each split: train to train on, val to select the epoch and report, test to
# report (as `gimp_jax.validate.split_problems`).
NEED = {"train": ("gene_pretrain", "pretrain", "finetune", "probe"),
        "val": ("gene_pretrain", "finetune", "test"), "test": ("test",)}


def _file_columns(path: str) -> list[str]:
  """The split columns (train, val, test) of a split file's header."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    header = next(csv.reader(f), [])
  return [c for c in splits_lib.SPLITS if c in header]


def _comparable(times: np.ndarray, censorship: np.ndarray) -> bool:
  """Whether some event time is before another case's time (Harrell's comparable pair)."""
  events = times[censorship == 0]
  return events.size > 0 and bool((events.min() < times).any())


def _folds(data: ml_collections.ConfigDict, seed: int, ids: list[str], strata: np.ndarray,
           split_col: list[str | None]) -> tuple[list[tuple[str, str, bool, dict]], list[str]]:
  """([(where, split file or '', whether the cohort loader draws it too, split)] of the folds the
  run of `data` (the `data` config block) and `seed` draws, problems)."""
  fold = int(data.get("fold", -1))
  labels = data.labels
  if split_col[0] is not None:
    return [(labels, "", True, splits_lib.from_column(split_col))], []
  if data.get("splits_dir", ""):
    try:
      k = splits_lib.count_split_files(data.splits_dir) if fold < 0 else None
    except DataError as e:
      return [], str(e).split("\n")
    out, problems = [], []
    for i in range(k) if fold < 0 else [fold]:
      path = splits_lib.split_file(data.splits_dir, i)
      try:
        out.append((path, path, i == max(fold, 0), splits_lib.read_split_file(
            path, ids, strata, data.split_fractions, seed)))
      except DataError as e:
        problems += str(e).split("\n")
    return out, problems
  k = int(data.get("num_folds", 0))
  if k:
    return [(f"{labels}: fold {i} of data.num_folds={k}", "", i == max(fold, 0),
             splits_lib.kfold_split(strata, k, i, seed))
            for i in (range(k) if fold < 0 else [fold])], []
  return [(labels, "", True, splits_lib.stratified_split(strata, data.split_fractions, seed))], []


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every problem of every fold's split (module docstring), one line each; [] when the labels CSV
  itself does not read (the cohort check reports that)."""
  task = config.get("task", "classification")
  try:
    rows = labels_lib.read_labels(config.data.labels, task,
                                  config.data.get("allow_missing", False))
  except DataError:
    return []
  first: dict[str, labels_lib.LabelRow] = {}
  for r in rows:
    first.setdefault(r.patient_id, r)
  surv = task == "survival"
  names = tuple(config.data.get("class_names", ()) or sorted({r.label for r in rows} - {""}))
  if not surv and any(r.label not in names for r in first.values() if r.label):
    return []  # unknown labels: the cohort check reports them
  ids = [p for p, r in first.items() if surv or r.label]  # the unlabelled ones only train
  strata = np.asarray([first[p].censorship if surv else names.index(first[p].label) for p in ids],
                      np.int64)
  try:
    folds, out = _folds(config.data, config.seed, ids, strata, [first[p].split for p in ids])
  except DataError as e:
    return str(e).split("\n")
  stages = tuple(config.stages)
  for where, path, loaded, split in folds:
    if config.data.get("splits_dir", ""):
      columns = _file_columns(path) if path else list(splits_lib.SPLITS)
      column = {s: s if "test" in columns else {"test": "val"}.get(s, "train") for s in split}
      for name, idx in split.items():
        users = [s for s in stages if s in NEED[name]]
        if users and not idx.size:
          out.append(f"{where}: {column[name]}: no cases in this column, but stage(s) "
                     f"{', '.join(users)} need {name} patients: fill the column")
    if surv:
      times = np.asarray([first[p].time for p in ids], np.float64)
      if not loaded:  # the loader reports the split it draws itself
        out += survival_lib.split_problems(split, strata, where)
      val = split["val"]
      if (val.size and any(s in stages for s in NEED["val"]) and np.any(strata[val] == 0)
          and not _comparable(times[val], strata[val])):
        out.append(f"{where}: split val: no comparable pair among its {val.size} cases (no event "
                   "before another case's time): its C-index, which selects the epoch, is "
                   "undefined (NaN); change the split (data.seed, data.num_folds or the split file)")
      continue
    present = lambda idx: set(strata[idx].tolist())  # noqa: E731
    missing = sorted(set(range(len(names))) - present(split["val"]))
    if (split["val"].size and missing and "finetune" in stages
        and config.get("finetune", {}).get("select_metric") == "val_auc"):
      out.append(f"{where}: split val: no patient of class(es) {', '.join(names[c] for c in missing)}"
                 f" among its {split['val'].size}: its AUC, which selects the epoch "
                 "(finetune.select_metric=val_auc), is undefined (NaN)")
    missing = sorted(set(range(len(names))) - present(split["train"]))
    if "probe" in stages and missing:
      out.append(f"{where}: split train: no patient of class(es) "
                 f"{', '.join(names[c] for c in missing)}: the probe stage fits its classifier on "
                 "training patients of every class")
  return out
