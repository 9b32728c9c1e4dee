"""What `validate` (and `main`, before any fold trains) must catch in a run's splits and stage
settings: every split file and every fold of num_folds, survival folds without an event or
without a comparable validation pair, empty split-file columns named after the file, the probe
stage's needs, and the config combinations that cannot train."""

import csv
import os
import shutil

import numpy as np
import pytest

from gimp_jax import preflight
from gimp_jax.configs import checks
from gimp_jax.configs import nsclc
from gimp_jax.data import labels as labels_lib
from gimp_jax.data import splits as splits_lib
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  out = tmp_path_factory.mktemp("split_checks")
  synthetic.make_cohort(str(out / "surv"), patients=12, genes=40, min_patches=6, max_patches=12,
                        feature_dim=32, seed=1, survival=True)
  synthetic.make_cohort(str(out / "cls"), patients=10, genes=40, min_patches=6, max_patches=12,
                        feature_dim=32, seed=1)
  return out


def _config(root, survival):
  c = nsclc.get_config("tiny")
  c.data.update(features_dir=str(root / "features"), expression=str(root / "expression.tsv"),
                labels=str(root / "labels.csv"), num_genes=0)
  if survival:
    c.task = "survival"
    c.finetune.batch_size = 2
  return c


@pytest.fixture
def surv(base, tmp_path):
  shutil.copytree(base / "surv", tmp_path / "surv")
  return tmp_path / "surv", _config(tmp_path / "surv", True)


@pytest.fixture
def cls(base, tmp_path):
  shutil.copytree(base / "cls", tmp_path / "cls")
  return tmp_path / "cls", _config(tmp_path / "cls", False)


def _cases(c):
  with open(c.data.labels, encoding="utf-8") as f:
    return list(dict.fromkeys(r[0] for r in csv.reader(f)))[1:]


def _set_outcomes(c, outcome):
  """Rewrites each case's (survival_months, censorship) as outcome(case index)."""
  with open(c.data.labels, encoding="utf-8") as f:
    rows = list(csv.reader(f))
  cases = _cases(c)
  for r in rows[1:]:
    r[2], r[3] = (str(x) for x in outcome(cases.index(r[0])))
  with open(c.data.labels, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)


def _split_file(path, columns):
  """An MCAT-style split file: an index column, then the given columns of case IDs."""
  n = max(len(v) for v in columns.values())
  with open(path, "w", encoding="utf-8") as f:
    f.write("," + ",".join(columns) + "\n")
    for i in range(n):
      f.write(f"{i}," + ",".join(v[i] if i < len(v) else "" for v in columns.values()) + "\n")


def _problems(c):
  cohort, problems = preflight.check(c)
  assert (cohort is None) == bool(problems)
  return problems


# ----------------------------------------------------------------------------- item 5


def test_every_split_file_is_checked_not_only_the_first(surv, tmp_path):
  _, c = surv
  cases = _cases(c)
  folder = tmp_path / "splits"
  folder.mkdir()
  for k in range(3):
    _split_file(folder / f"splits_{k}.csv", {"train": cases[:8], "val": cases[8:]})
  _split_file(folder / "splits_2.csv", {"train": cases[:8] + ["TCGA-XX-9999"], "val": cases[8:]})
  c.data.splits_dir = str(folder)
  assert _problems(c) == [f"{folder}/splits_2.csv: line 10: case TCGA-XX-9999: train: not in the "
                          "cohort"]
  os.remove(folder / "splits_1.csv")  # a gap in the numbering
  assert _problems(c) == [f"{folder}: splits_dir: expected splits_0.csv ... splits_<k-1>.csv, "
                          "found ['splits_0.csv', 'splits_2.csv']"]


def test_every_fold_of_num_folds_is_checked_for_an_event(surv):
  _, c = surv
  _set_outcomes(c, lambda i: (10.0 + i, 0 if i in (0, 1) else 1))  # two events in 12 cases
  c.data.num_folds = 3
  censorship = np.asarray([0, 0] + [1] * 10)
  expected = []  # the folds as gimp_jax.main draws them, their splits without an event
  for k in range(1, 3):  # fold 0 is the one the cohort loader draws (reported by it)
    split = splits_lib.kfold_split(censorship, 3, k, c.seed)
    expected += [f"{c.data.labels}: fold {k} of data.num_folds=3: split {name}: no event among "
                 f"its {idx.size} cases (every case censored)"
                 for name, idx in split.items() if not (censorship[idx] == 0).any()]
  assert expected  # two events cannot reach all three test folds
  problems = _problems(c)
  assert [p for p in problems if ": fold " in p] == expected
  assert all(p.startswith(c.data.labels) for p in problems), problems


def test_a_validation_split_without_a_comparable_pair_is_refused(surv, tmp_path):
  """Its C-index is NaN: fine-tuning would select its epoch on NaN."""
  _, c = surv
  # Case i: time 10 + i; the validation cases 0, 1 censored early, 2 the only event, latest.
  _set_outcomes(c, lambda i: (100.0 if i == 2 else 10.0 + i, 0 if i in (2, 5, 6, 7, 8, 9) else 1))
  cases = _cases(c)
  folder = tmp_path / "splits"
  folder.mkdir()
  _split_file(folder / "splits_0.csv", {"train": cases[3:9], "val": cases[:3],
                                         "test": cases[9:]})
  c.data.splits_dir = str(folder)
  assert _problems(c) == [
      f"{folder}/splits_0.csv: split val: no comparable pair among its 3 cases (no event before "
      "another case's time): its C-index, which selects the epoch, is undefined (NaN); change the "
      "split (data.seed, data.num_folds or the split file)"]


# ----------------------------------------------------------------------------- item 8


def test_an_empty_split_file_column_names_the_file_and_the_column(surv, tmp_path):
  _, c = surv
  cases = _cases(c)
  folder = tmp_path / "splits"
  folder.mkdir()
  _split_file(folder / "splits_0.csv", {"train": cases, "val": []})
  c.data.splits_dir = str(folder)
  assert _problems(c) == [f"{folder}/splits_0.csv: val: no cases in this column, but stage(s) "
                          "test need test patients: fill the column"]
  _split_file(folder / "splits_0.csv", {"train": [], "val": cases})
  assert (f"{folder}/splits_0.csv: train: no cases in this column, but stage(s) gene_pretrain, "
          "pretrain, finetune need train patients: fill the column") in _problems(c)


def test_num_folds_with_splits_dir_is_ambiguous(surv, tmp_path):
  _, c = surv
  c.data.num_folds, c.data.splits_dir = 5, str(tmp_path)
  assert checks.problems(c) == [
      f"config: data.num_folds/splits_dir: both set (5 and '{tmp_path}'): the split files define "
      "the folds; set data.num_folds=0, or data.splits_dir='' for 5 seeded folds"]


def test_disagreeing_survival_column_pairs_are_refused(surv):
  _, c = surv
  with open(c.data.labels, encoding="utf-8") as f:
    rows = list(csv.reader(f))
  rows[0] += ["time", "event"]
  for r in rows[1:]:
    r += [r[2], str(1 - int(r[3]))]  # the same outcomes, as time,event
  rows[2][-2] = rows[3][-2] = "99"  # both slide rows of one case: time,event disagree
  with open(c.data.labels, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)
  with pytest.raises(DataError) as e:
    labels_lib.read_labels(c.data.labels, "survival")
  assert str(e.value).split("\n") == [
      f"{c.data.labels}: line {n}: patient {rows[n - 1][0]}: survival_months,censorship and "
      f"time,event both given and they disagree ({rows[n - 1][2]},{rows[n - 1][3]} vs 99,"
      f"{rows[n - 1][-1]}; censorship 1 = censored, event 1 = observed): keep one pair"
      for n in (3, 4)]
  rows[2][-2] = rows[3][-2] = rows[2][2]  # agreeing pairs are fine
  with open(c.data.labels, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)
  assert len(labels_lib.read_labels(c.data.labels, "survival")) == len(rows) - 1


def test_a_nul_character_in_a_label_is_refused(cls):
  _, c = cls
  text = open(c.data.labels, encoding="utf-8").read().split("\n")
  text[2] = text[2].replace("class_", "class\0_")
  open(c.data.labels, "w", encoding="utf-8").write("\n".join(text))
  pid = text[2].split(",")[0]
  label = text[2].split(",")[2]
  assert _problems(c) == [f"{c.data.labels}: line 3: patient {pid}: label: {label!r} contains a "
                          "NUL character (a damaged or binary file?)"]
  assert "\\x00" in repr(label)


# ----------------------------------------------------------------------------- item 4


def test_survival_times_beyond_float32_are_refused_at_load(surv):
  _, c = surv
  _set_outcomes(c, lambda i: (3.4e306 if i == 4 else 10.0 + i, i % 2))
  pid = _cases(c)[4]
  line = next(n for n, r in enumerate(csv.reader(open(c.data.labels)), 1) if r[0] == pid)
  assert _problems(c) == [f"{c.data.labels}: line {line}: patient {pid}: survival_months: "
                          "'3.4e+306' overflows float32 (largest 3.403e+38), the precision times "
                          "are computed in; give times in months or days"]


# ----------------------------------------------------------------------------- items 3 and 6


def test_cox_with_one_case_per_batch_is_a_config_problem(surv):
  _, c = surv
  c.survival.loss, c.finetune.batch_size = "cox", 1
  assert checks.problems(c) == [
      "config: finetune.batch_size: 1 with survival.loss='cox': the Cox partial likelihood ranks "
      "the cases of a batch against each other, so a batch of one case has no gradient (every "
      "loss 0, nothing trained); set finetune.batch_size >= 2 (e.g. 16) or survival.loss='nll'"]
  c.finetune.batch_size = 2
  assert checks.problems(c) == []


@pytest.mark.parametrize("shots", [(0, 5), (-1,), (1.5,)])
def test_probe_shots_must_be_positive_integers(cls, shots):
  _, c = cls
  c.probe.shots = shots
  assert checks.problems(c) == [f"config: probe.shots: {shots!r}, expected positive integers (k "
                                "training patients per class; the fit on all of them is always "
                                "added)"]


@pytest.mark.parametrize("method,model", [("abmil", "ABMIL"), ("mcat", "MCAT")])
def test_probe_on_a_method_without_a_slide_encoder_is_refused(cls, method, model):
  from gimp_jax.configs.methods import abmil, mcat  # pylint: disable=g-import-not-at-top
  _, base_c = cls
  c = {"abmil": abmil, "mcat": mcat}[method].get_config("tiny")
  c.data.update(features_dir=base_c.data.features_dir, expression=base_c.data.expression,
                labels=base_c.data.labels, num_genes=0)
  c.stages = ("finetune", "test", "probe")
  assert _problems(c) == [f"config: stages: 'probe' needs a slide encoder to freeze (a model with "
                          f"embed_slide: gimp, tangle, ...), and method {method!r} ({model}) has "
                          "none; remove 'probe' from stages"]


def test_probe_with_a_class_absent_from_train_is_refused(cls):
  _, c = cls
  with open(c.data.labels, encoding="utf-8") as f:
    rows = list(csv.reader(f))
  rows[0].append("split")
  for r in rows[1:]:  # every class_1 patient in val or test
    r.append("train" if r[2] == "class_0" else ("val" if r[0][-1] in "02468" else "test"))
  with open(c.data.labels, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)
  c.stages = ("pretrain", "probe")
  assert _problems(c) == [f"{c.data.labels}: split train: no patient of class(es) class_1: the "
                          "probe stage fits its classifier on training patients of every class"]
