"""Prediction on new patients with a trained run: probabilities equal to an independent forward
pass, labels optional, and a clear refusal of a gene list or feature width that does not match."""

import csv
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from gimp_jax.configs import nsclc
from gimp_jax import methods
from gimp_jax import predict, preflight
from gimp_jax.data import pipeline
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError
from gimp_jax.report import slides
from gimp_jax.train import run as run_lib
from gimp_jax.train.state import create_state, restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(paths):
  c = nsclc.get_config("tiny")
  c.data.update(features_dir=paths["features_dir"], expression=paths["expression"],
                labels=paths["labels"])
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run fine-tuned for one epoch on the cohort shapes of test_e2e (shared compile cache)."""
  base = tmp_path_factory.mktemp("predict")
  paths = synthetic.make_cohort(str(base / "in"), patients=20, genes=96, min_patches=40,
                                max_patches=90, feature_dim=32, seed=0)
  c = _config(paths)
  c.stages = ("finetune",)
  c.finetune.epochs = 1
  workdir = str(base / "run")
  run_lib.train_and_evaluate(c, workdir)
  return workdir, paths


def test_attention_files_are_written_by_process_zero_only(trained, tmp_path, monkeypatch):
  """`--attention` in a job of several processes: every process computes the scores (the model's
  parameters are global arrays there), and the others write nothing."""
  workdir, paths = trained
  c = _config(paths)
  cohort = preflight.preflight(c, workdir)
  model = methods.build(c, cohort.gene_names, cohort.num_classes, c.seed)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert slides.write_attention(str(tmp_path / "attention"), create_state(model).model(
      train=False), cohort, "", method=c.method, bucket_sizes=c.data.bucket_sizes,
      report_cfg=c.report) == []
  assert not (tmp_path / "attention").exists()


def _independent(workdir, paths):
  """softmax(head) per patient: each bag alone, padded to its bucket, the best checkpoint."""
  c = _config(paths)
  cohort = preflight.preflight(c, workdir)
  model = methods.build(c, cohort.gene_names, cohort.num_classes, c.seed)
  params = restore_params(workdir, "finetune_best", model)
  state = create_state(model).replace(params=params)
  forward = jax.jit(lambda state, batch: state.model(train=False)(
      batch["patches"], batch["genes"], batch["patch_mask"]))
  out = {}
  for i, p in enumerate(cohort.patients):
    x = cohort.bag(i).features()
    size = pipeline.bucket_size(len(x), c.data.bucket_sizes)
    patches = np.zeros((1, size, x.shape[1]), np.float32)
    patches[0, :len(x)] = x
    batch = {"patches": patches, "patch_mask": np.arange(size)[None] < len(x),
             "genes": cohort.genes[i:i + 1]}
    logits, _ = forward(state, batch)
    out[p.patient_id] = np.asarray(jax.nn.softmax(logits, -1))[0]
  return out


def test_predictions_equal_an_independent_forward_pass(trained, tmp_path):
  workdir, paths = trained
  result = predict.predict(workdir, _config(paths), attention_dir=str(tmp_path / "attention"))
  expected = _independent(workdir, paths)
  # --attention: each slide's scores are the model's attention over its bag alone, unpadded.
  c = _config(paths)
  cohort = preflight.preflight(c, workdir)
  model = methods.build(c, cohort.gene_names, cohort.num_classes, c.seed)
  model = create_state(model).replace(params=restore_params(
      workdir, "finetune_best", model)).model(train=False)
  for i, p in enumerate(cohort.patients[:4]):  # eager forward passes: a few patients
    bag = cohort.bag(i)
    want = np.asarray(model.attention(jax.numpy.asarray(bag.features()[None]),
                                      jax.numpy.asarray(cohort.genes[i:i + 1]), None))[0]
    rows = []
    for slide_id in p.slide_ids:  # the whole bag's scores, cut per slide in bag order
      with open(tmp_path / "attention" / "slides" / slide_id / "scores.csv") as f:
        rows += list(csv.DictReader(f))
      assert (tmp_path / "attention" / f"heatmap_{slide_id}.png").is_file()
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [tuple(v) for v in bag.coords().tolist()]
    np.testing.assert_allclose([float(r["attention"]) for r in rows], want, rtol=1e-4, atol=1e-7)
  assert list(result["patient_id"]) == sorted(expected)
  for pid, probs in zip(result["patient_id"], result["probs"]):
    np.testing.assert_allclose(probs, expected[pid], rtol=0, atol=2e-6)
  labels = {r.split(",")[0]: r.split(",")[2] for r in open(paths["labels"]).read().split()[1:]}
  names = list(result["class_names"])
  assert [names[y] for y in result["label"]] == [labels[p] for p in result["patient_id"]]


def _copy(paths, tmp_path):
  root = tmp_path / "new"
  shutil.copytree(os.path.dirname(paths["labels"]), root)
  return {k: v.replace(os.path.dirname(paths["labels"]), str(root)) for k, v in paths.items()}


def test_refuses_an_expression_table_without_genes_of_the_stored_list(trained, tmp_path):
  workdir, paths = trained
  new = _copy(paths, tmp_path)
  lines = open(new["expression"]).read().splitlines()
  dropped = [lines[5].split("\t")[0], lines[9].split("\t")[0]]
  open(new["expression"], "w").write("\n".join(lines[:5] + lines[6:9] + lines[10:]) + "\n")
  with pytest.raises(DataError) as e:
    predict.predict(workdir, _config(new))
  stripped = [g.split(".")[0] for g in dropped]
  assert str(e.value) == (f"{new['expression']}: genes: 2 of 96 genes of the gene list are "
                          f"missing (first: {', '.join(stripped)}) (the gene list stored in "
                          f"{workdir}/normalizer.npz)")


def test_refuses_features_of_another_width(trained, tmp_path):
  workdir, _ = trained
  new = synthetic.make_cohort(str(tmp_path / "new"), patients=6, genes=96, min_patches=5,
                              max_patches=9, feature_dim=16, seed=0)
  with pytest.raises(DataError) as e:
    predict.predict(workdir, _config(new))
  lines = str(e.value).split("\n")
  assert len(lines) == 1 + len(os.listdir(new["features_dir"]))
  assert all(x.endswith("features: width 16, expected 32 (config feature_dim)")
             for x in lines[:-1])
  assert lines[-1] == f"{workdir}: the model was trained on features of width 32"
  c = _config(new)
  c.data.feature_dim = 16  # --config does not set the model's width: the run's config rules
  with pytest.raises(DataError) as again:
    predict.predict(workdir, c)
  assert str(again.value) == str(e.value)


def test_a_few_listed_patients_of_a_shared_features_folder(trained, tmp_path, caplog):
  """The labels CSV names 5 of the 20 patients whose slides share one folder: those 5 are
  predicted (as in the whole cohort's prediction) and the other slide files are ignored."""
  workdir, paths = trained
  everyone = predict.predict(workdir, _config(paths))
  lines = open(paths["labels"]).read().split()
  wanted = sorted({r.split(",")[0] for r in lines[1:]})[3:8]
  few = tmp_path / "few.csv"
  few.write_text("\n".join([lines[0]] + [r for r in lines[1:] if r.split(",")[0] in wanted]) + "\n")
  c = _config(paths)
  c.data.labels = str(few)
  with caplog.at_level("INFO"):
    result = predict.predict(workdir, c)
  assert list(result["patient_id"]) == wanted
  rows = [list(everyone["patient_id"]).index(p) for p in wanted]
  np.testing.assert_array_equal(result["probs"], everyone["probs"][rows])
  others = len(os.listdir(paths["features_dir"])) - (len(open(few).read().split()) - 1)
  assert f"{others} slide file(s) have no row in {few} (first: " in caplog.text
  assert "ignored, only the 5 listed patient(s) are used" in caplog.text


def test_refuses_labels_outside_the_run_classes(trained, tmp_path):
  workdir, paths = trained
  new = _copy(paths, tmp_path)
  text = open(new["labels"]).read()
  open(new["labels"], "w").write(text.replace("class_1", "LUSC"))
  with pytest.raises(DataError, match=(rf"^{new['labels']}: label: unknown value\(s\) LUSC "
                                       r"\(classes: class_0, class_1\)$")):
    predict.predict(workdir, _config(new))


def test_command_line(trained, tmp_path):
  workdir, paths = trained
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  new = _copy(paths, tmp_path)
  lines = open(new["expression"]).read().splitlines()
  open(new["expression"], "w").write("\n".join(lines[:-1]) + "\n")  # one gene fewer
  args = [sys.executable, "-m", "gimp_jax.predict", f"--workdir={workdir}",
          f"--config={os.path.join(ROOT, 'configs', 'nsclc.py')}",  # the --help example, :tiny run
          f"--config.data.features_dir={new['features_dir']}",
          f"--config.data.expression={new['expression']}",
          f"--config.data.labels={new['labels']}", f"--out={tmp_path / 'p.csv'}"]
  bad = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.splitlines()[-1].startswith(
      f"gimp_jax.predict: error: {new['expression']}: genes: 1 of 96 genes of the gene list are "
      "missing")
  assert not (tmp_path / "p.csv").exists()
  # New patients without labels: the labels CSV has only patient_id,slide_id.
  unlabelled = tmp_path / "unlabelled.csv"
  unlabelled.write_text("\n".join(",".join(r.split(",")[:2]) for r in
                                  open(paths["labels"]).read().split()) + "\n")
  out = tmp_path / "not" / "yet" / "p.csv"  # a missing folder is created
  args = [a.replace(new["expression"], paths["expression"]).replace(new["labels"], str(unlabelled))
          .replace(str(tmp_path / "p.csv"), str(out)) for a in args]
  ok = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert ok.stdout.splitlines()[-1] == f"gimp_jax.predict: 20 patients -> {out}"
  logged = [x for x in ok.stderr.splitlines() if x[:1] in "IWE"]  # absl's lines
  assert not [x for x in logged if "orbax" in x or "checkpoint" in x.split("]")[0]], logged
  assert "Missing metrics" not in ok.stderr and len(logged) <= 6, logged
  expected = predict.predict(workdir, _config(paths))
  names = list(expected["class_names"])
  rows = list(csv.DictReader(open(out)))
  assert [r["patient_id"] for r in rows] == list(expected["patient_id"])
  for r, p in zip(rows, expected["probs"]):
    assert r["label_name"] == "" and r["predicted_name"] == names[int(np.argmax(p))]
    np.testing.assert_allclose([float(r[f"prob_{n}"]) for n in names], p, rtol=1e-7)


def test_an_output_folder_that_cannot_be_made_is_refused_before_inference(tmp_path):
  (tmp_path / "file").write_text("x")
  given = _config({"features_dir": "", "expression": "", "labels": ""})
  with pytest.raises(DataError, match=f"^{tmp_path}/file/p.csv: --out: cannot create the folder "
                     f"{tmp_path}/file "):
    predict.prepare_out(str(tmp_path / "file" / "p.csv"), str(tmp_path / "run"), given)
  with pytest.raises(DataError, match="--out: is a folder"):
    predict.prepare_out(str(tmp_path), str(tmp_path / "run"), given)


def test_an_output_over_an_input_or_the_trained_run_is_refused(trained, tmp_path):
  workdir, paths = trained
  given = _config(paths)
  slide = sorted(os.listdir(paths["features_dir"]))[0]
  link = tmp_path / "link.csv"
  link.symlink_to(paths["labels"])
  cases = {
      paths["labels"]: f"is the input data.labels ({paths['labels']})",
      paths["expression"]: f"is the input data.expression ({paths['expression']})",
      os.path.join(paths["features_dir"], slide): f"is in the input data.features_dir "
                                                  f"({paths['features_dir']})",
      os.path.join(workdir, "config.json"): f"is in the trained run's workdir ({workdir})",
      os.path.join(workdir, "new", "p.csv"): f"is in the trained run's workdir ({workdir})"}
  before = {p: open(p, "rb").read() for p in cases if os.path.isfile(p)}
  for out, why in cases.items():
    with pytest.raises(DataError) as e:
      predict.prepare_out(out, workdir, given)
    assert str(e.value) == f"{out}: --out: {why}; write the predictions elsewhere"
  with pytest.raises(DataError, match=rf"^--out: {link}: is a symbolic link to {paths['labels']}"):
    predict.prepare_out(str(link), workdir, given)
  assert {p: open(p, "rb").read() for p in before} == before
  predict.prepare_out(str(tmp_path / "p.csv"), workdir, given)  # elsewhere: fine
  for folder, why in ((os.path.join(workdir, "attention"), f"is in the trained run's workdir "
                       f"({workdir})"), (paths["features_dir"], f"is the input data.features_dir "
                                                                f"({paths['features_dir']})")):
    with pytest.raises(DataError) as e:
      predict.refuse_over_inputs(folder, "--attention", workdir, given)
    assert str(e.value) == f"{folder}: --attention: {why}; write the predictions elsewhere"
  predict.refuse_over_inputs(str(tmp_path / "attention"), "--attention", workdir, given)


def test_a_workdir_without_a_fine_tuned_model_is_left_as_it_was(trained, tmp_path):
  workdir, paths = trained
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "checkpoints" / "finetune_best")
  listing = sorted(os.path.relpath(os.path.join(r, n), copy)
                   for r, ds, ns in os.walk(copy) for n in ds + ns)
  with pytest.raises(DataError, match="finetune_best: no fine-tuned checkpoint; run the finetune "
                     "stage first"):
    predict.predict(str(copy), _config(paths))
  assert sorted(os.path.relpath(os.path.join(r, n), copy)
                for r, ds, ns in os.walk(copy) for n in ds + ns) == listing


def test_predict_leaves_the_workdir_it_reads_as_it_was(trained, tmp_path):
  """A save in progress there (orbax's temporary folder) is not removed: predict restores
  read-only, so nothing in the trained run's workdir is created, cleaned or moved."""
  workdir, paths = trained
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  best = copy / "checkpoints" / "finetune_best"
  step = sorted(os.listdir(best))[0]
  shutil.copytree(best / step, best / f"{int(step) + 1}.orbax-checkpoint-tmp-1700000000")
  listing = sorted(os.path.relpath(os.path.join(r, n), copy)
                   for r, ds, ns in os.walk(copy) for n in ds + ns)
  predict.predict(str(copy), _config(paths))
  assert sorted(os.path.relpath(os.path.join(r, n), copy)
                for r, ds, ns in os.walk(copy) for n in ds + ns) == listing
