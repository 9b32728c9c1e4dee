"""Partial data (`data.allow_missing`): a cohort with slide-only and unlabelled patients trains
through every stage, each stage using the patients it can (checked by counts); `predict` takes
slide-only patients and says which modality each prediction used."""

import csv
import math

import numpy as np
import pytest

from gimp_jax import methods, predict, preflight
from gimp_jax.configs import nsclc
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError
from gimp_jax.train import partial, run

SLIDE_ONLY = {0, 1, 2, 3, 4, 8, 9, 10, 11, 12}  # patients whose expression column is removed
UNLABELLED = {3, 4, 5, 6, 7}      # patients whose label is emptied (3, 4: neither)


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  out = tmp_path_factory.mktemp("mixed")
  paths = synthetic.make_cohort(str(out), patients=24, genes=96, feature_dim=32, min_patches=8,
                                max_patches=30, seed=0)
  pid = lambda i: f"TCGA-SY-{i:04d}"
  with open(paths["expression"], encoding="utf-8") as f:
    table = [line.rstrip("\n").split("\t") for line in f]
  drop = {pid(i) + "-01A" for i in SLIDE_ONLY}
  keep = [j for j, name in enumerate(table[0]) if name not in drop]
  with open(paths["expression"], "w", encoding="utf-8") as f:
    f.writelines("\t".join(row[j] for j in keep) + "\n" for row in table)
  with open(paths["labels"], encoding="utf-8") as f:
    rows = list(csv.reader(f))
  unlabelled = {pid(i) for i in UNLABELLED}
  rows = [rows[0]] + [r[:2] + ["" if r[0] in unlabelled else r[2]] for r in rows[1:]]
  with open(paths["labels"], "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)
  return paths, {pid(i) for i in SLIDE_ONLY}, unlabelled


def _config(paths, **model):
  c = nsclc.get_config("tiny")
  c.data.update(paths)
  c.data.allow_missing = True
  c.data.bucket_sizes = (64,)
  c.model.update(model)
  c.stages = ("gene_pretrain", "pretrain", "finetune", "test", "probe")
  c.gene_pretrain.epochs = c.pretrain.epochs = c.finetune.epochs = 1
  c.pretrain.window = 16
  c.report.tsne, c.report.heatmaps = False, 0
  c.probe.shots, c.probe.draws = (1,), 2
  return c


def test_strict_default_refuses_both_kinds(mixed):
  paths, slide_only, unlabelled = mixed
  c = _config(paths)
  c.data.allow_missing = False
  with pytest.raises(DataError) as e:
    cohort_lib.load_cohort(cohort_lib.CohortSpec.from_mapping(c.data))
  lines = str(e.value).splitlines()
  # The labels CSV is read first: every row of an unlabelled patient is refused.
  assert {line.split("patient ")[1].split(":")[0] for line in lines} == unlabelled
  assert all("empty label" in line for line in lines)
  c.data.labels = paths["labels"] + ".strict.csv"
  with open(paths["labels"], encoding="utf-8") as f, open(c.data.labels, "w") as g:
    g.writelines(line if not line.rstrip("\n").endswith(",") else line.rstrip(",\n") + ",class_0\n"
                 for line in f)
  with pytest.raises(DataError) as e:
    cohort_lib.load_cohort(cohort_lib.CohortSpec.from_mapping(c.data))
  missing = [line for line in str(e.value).splitlines() if "no expression modality" in line]
  assert sorted(line.split("patient ")[1].split(":")[0] for line in missing) == sorted(slide_only)


def test_mixed_cohort_trains_through_every_stage_each_using_what_it_can(mixed, tmp_path):
  paths, slide_only, unlabelled = mixed
  config = _config(paths, modality_dropout=0.5)
  results = run.train_and_evaluate(config, str(tmp_path))
  cohort = preflight.preflight(config, str(tmp_path))
  ids = [p.patient_id for p in cohort.patients]
  assert np.isnan(cohort.genes[[ids.index(p) for p in slide_only]]).all()
  assert (cohort.labels[[ids.index(p) for p in unlabelled]] == -1).all()
  split = {s: {ids[i] for i in cohort.split(s)} for s in ("train", "val", "test")}
  assert unlabelled <= split["train"]  # unlabelled patients can only serve pre-training
  assert slide_only & split["train"] and slide_only & split["test"]  # both kinds are exercised
  labelled = {s: split[s] - unlabelled for s in split}
  pairs = split["train"] - slide_only - unlabelled
  stages = results["stages"]
  assert stages["gene_pretrain"]["steps"] == math.ceil(len(pairs) / 16)
  assert stages["pretrain"]["steps"] == len(split["train"]) // 4  # MPM on every training slide
  assert stages["finetune"]["steps"] == math.ceil(len(labelled["train"]) / 2)
  for s in ("val", "test"):
    assert results[f"{s}_metrics"]["num_examples"] == len(labelled[s])
    assert 0.0 <= results[f"{s}_slide_only_accuracy"] <= 1.0  # the same model, slides alone
    assert 0.0 <= results[f"gene_only_{s}_accuracy"] <= 1.0  # GroupMSA: the patients with genes
  assert results["probe"]["train_patients"] == len(labelled["train"])
  uses = partial.method_uses(methods.get(config.method), preflight.abstract_model(config, cohort))
  table = partial.usage_table(cohort, config.stages, **uses)
  expect = {"patients": [len(split[s]) for s in ("train", "val", "test")],
            "gene_pretrain uses": [len(split[s] - slide_only - unlabelled)
                                   for s in ("train", "val", "test")],
            "pretrain uses": [len(split[s]) for s in ("train", "val", "test")],
            "finetune uses": [len(labelled[s]) for s in ("train", "val", "test")]}
  for name, counts in expect.items():
    assert f"| {name} | " + " | ".join(map(str, counts)) + " |" in table, table

  # predict: slide-only patients from the slide alone, and the CSV says so.
  given = _config(paths)
  result = predict.predict(str(tmp_path), given)
  used = dict(zip(result["patient_id"], result["modality"]))
  assert {p for p, m in used.items() if m == "slide"} == slide_only
  assert np.isfinite(result["probs"]).all() and len(used) == 24
  assert (result["label"][[list(result["patient_id"]).index(p) for p in unlabelled]] == -1).all()
  given.data.expression = ""  # slides only, no table at all: every patient from the slide alone
  alone = predict.predict(str(tmp_path), given)
  assert list(alone["patient_id"]) == list(result["patient_id"])
  assert set(alone["modality"]) == {"slide"}
  rows = [list(result["patient_id"]).index(p) for p in sorted(slide_only)]
  np.testing.assert_array_equal(alone["probs"][rows], result["probs"][rows])  # same input


def test_predict_refuses_slide_only_patients_for_a_model_without_the_token(mixed, tmp_path):
  paths, slide_only, _ = mixed
  config = _config(paths, modality_dropout=0.0)
  config.stages = ("finetune",)  # no missing-genes token: fine-tuned on the patients with genes
  results = run.train_and_evaluate(config, str(tmp_path))
  assert results["stages"]["finetune"]["steps"] > 0
  with pytest.raises(DataError) as e:
    predict.predict(str(tmp_path), _config(paths, modality_dropout=0.0))
  lines = str(e.value).splitlines()
  assert sorted(line.split("patient ")[1].split(":")[0] for line in lines) == sorted(slide_only)
  assert all("cannot predict from the slide alone" in line for line in lines)
  given = _config(paths, modality_dropout=0.0)
  given.data.expression = ""  # no table: every patient would be slide-only
  with pytest.raises(DataError) as e:
    predict.predict(str(tmp_path), given)
  lines = str(e.value).splitlines()
  assert len(lines) == 24 and all(line.startswith("data.expression (none given): patient ")
                                  for line in lines)
