"""The validation pass: every bad input of the issue reported as one line naming file, patient and
field; all of them at once; exit code 2 without a traceback, from `gimp_jax.validate` and before
training from `gimp_jax.main`."""

import os
import shutil

from flax import nnx
import h5py
import jax
from jax import numpy as jnp
import numpy as np
import pytest

from conftest import run_module, tiny_flags
from gimp_jax.configs import nsclc
from gimp_jax import methods
from gimp_jax import preflight
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError
from gimp_jax.train import run as run_lib

D = 32
P0, P1, P2 = "TCGA-SY-0000", "TCGA-SY-0001", "TCGA-SY-0002"  # P1 and P2 have two slides each


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  out = tmp_path_factory.mktemp("base")
  synthetic.make_cohort(str(out), patients=10, genes=40, min_patches=6, max_patches=12,
                        feature_dim=D, seed=1)
  return out


@pytest.fixture
def cohort(base, tmp_path):
  """A fresh copy of the clean cohort: (folder, config)."""
  root = tmp_path / "in"
  shutil.copytree(base, root)
  c = nsclc.get_config("tiny")
  c.data.features_dir = str(root / "features")
  c.data.expression = str(root / "expression.tsv")
  c.data.labels = str(root / "labels.csv")
  c.data.num_genes = 0
  return root, c


def h5(root, pid, k=1):
  return str(root / "features" / f"{pid}-01Z-00-DX{k}.h5")


def where(root, pid, k=1):
  """The prefix of every problem line about one slide."""
  return f"{h5(root, pid, k)}: patient {pid}, slide {pid}-01Z-00-DX{k}: "


def write_h5(path, features=None, coords=None):
  with h5py.File(path, "w") as f:
    if features is not None:
      f.create_dataset("features", data=features)
    if coords is not None:
      f.create_dataset("coords", data=coords)


def feats(n=8, d=D):
  return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def coords(n=8):
  return np.stack([np.arange(n), np.zeros(n)], 1).astype(np.int32) * 256


def edit_expression(root, sample, gene_row, value):
  """Sets one value of the expression matrix (gene_row 1-based below the header)."""
  path = root / "expression.tsv"
  lines = path.read_text().splitlines()
  col = lines[0].split("\t").index(sample)
  parts = lines[gene_row].split("\t")
  parts[col] = value
  lines[gene_row] = "\t".join(parts)
  path.write_text("\n".join(lines) + "\n")
  return parts[0]


def problems_of(c, workdir=None):
  cohort, problems = preflight.check(c, workdir)
  assert (cohort is None) == bool(problems)
  return problems


def only(problems, expected):
  assert problems == [expected], problems


# ----------------------------------------------------------------------------- each bad input


def test_clean_cohort_has_no_problems(cohort, tmp_path):
  _, c = cohort
  result, problems = preflight.check(c, str(tmp_path / "run"))
  assert problems == [] and len(result.patients) == 10
  assert not (tmp_path / "run").exists()  # checking creates nothing


def test_unreadable_h5(cohort):
  root, c = cohort
  with open(h5(root, P0), "wb") as f:
    f.write(b"not an hdf5 file at all" * 10)
  (problem,) = problems_of(c)
  assert problem.startswith(where(root, P0) + "not a readable HDF5 file (")


def test_truncated_h5(cohort):
  root, c = cohort
  data = open(h5(root, P0), "rb").read()
  with open(h5(root, P0), "wb") as f:
    f.write(data[:len(data) // 2])
  (problem,) = problems_of(c)
  assert problem.startswith(where(root, P0)), problem
  assert "not a readable HDF5 file" in problem or "cannot read" in problem


@pytest.mark.parametrize("missing", ["features", "coords"])
def test_missing_dataset(cohort, missing):
  root, c = cohort
  write_h5(h5(root, P0), None if missing == "features" else feats(),
           None if missing == "coords" else coords())
  only(problems_of(c), where(root, P0) + f"{missing}: dataset missing")


def test_wrong_feature_width(cohort):
  root, c = cohort
  write_h5(h5(root, P0), feats(d=16), coords())
  only(problems_of(c), where(root, P0) + "features: width 16, expected 32 (config feature_dim)")


def test_zero_patches(cohort):
  root, c = cohort
  write_h5(h5(root, P0), np.zeros((0, D), np.float32), np.zeros((0, 2), np.int32))
  only(problems_of(c), where(root, P0) + "features: zero patches")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_features(cohort, value):
  root, c = cohort
  x = feats()
  x[3, 5] = x[6, 0] = value
  write_h5(h5(root, P2, 2), x, coords())
  only(problems_of(c), where(root, P2, 2) + "features: 2 rows contain NaN/Inf (first row 3)")


@pytest.mark.parametrize("value", ["nan", "inf", "-Inf"])
def test_nan_inf_in_expression(cohort, value):
  root, c = cohort
  gene = edit_expression(root, f"{P1}-01A", 7, value)
  only(problems_of(c), f"{c.data.expression}: patient {P1}: values: column {P1}-01A has 1 NaN/Inf "
       f"values (first gene {genes_lib.strip_version(gene)})")


def test_duplicated_slide_id(cohort):
  root, c = cohort
  with open(c.data.labels, "a") as f:
    f.write(f"{P0},{P1}-01Z-00-DX1,class_0\n")
  only(problems_of(c), f"{c.data.labels}: line 14: patient {P0}: slide_id {P1}-01Z-00-DX1 "
       "duplicated (first on line 3)")


def test_duplicated_patient_id_with_another_label(cohort):
  root, c = cohort
  shutil.copy(h5(root, P0), root / "features" / "extra.h5")
  with open(c.data.labels, "a") as f:
    f.write(f"{P0},extra,class_1\n")
  only(problems_of(c), f"{c.data.labels}: lines 2, 14: patient {P0}: label: conflicting labels "
       "(class_0, class_1)")


def test_duplicated_expression_sample(cohort):
  root, c = cohort
  path = root / "expression.tsv"
  lines = path.read_text().splitlines()
  header = lines[0].split("\t")
  # Ensembl_ID, gene_name, then samples: the 2nd sample renamed as the 1st
  lines[0] = "\t".join(header[:3] + [header[2]] + header[4:])
  path.write_text("\n".join(lines) + "\n")
  only(problems_of(c), f"{path}: header (sample IDs): 1 duplicated IDs (first: {header[2]})")


def test_slide_without_label_row(cohort):
  root, c = cohort
  shutil.copy(h5(root, P0), root / "features" / "orphan.h5")
  only(problems_of(c), f"{c.data.features_dir}: 1 slide file(s) have no row in {c.data.labels} "
       "(first: orphan)")


def test_patient_without_slides(cohort):
  root, c = cohort
  os.remove(h5(root, P0))
  only(problems_of(c), where(root, P0) + "feature file missing (no image modality)")


def test_patient_without_expression(cohort):
  root, c = cohort
  path = root / "expression.tsv"
  path.write_text(path.read_text().replace(f"{P0}-01A", "TCGA-ZZ-9999-01A"))
  only(problems_of(c), f"{path}: patient {P0}: column: no expression column (no expression "
       "modality)")


def test_unknown_label_value(cohort):
  _, c = cohort
  c.data.class_names = ("class_0", "LUAD")
  only(problems_of(c), f"{c.data.labels}: label: unknown value(s) class_1 (classes: class_0, LUAD)")


def test_split_file_with_a_patient_in_two_splits(cohort):
  _, c = cohort
  lines = open(c.data.labels).read().splitlines()
  splits = ["split"] + ["train", "train", "val"] + ["train"] * (len(lines) - 4)
  with open(c.data.labels, "w") as f:
    f.write("\n".join(f"{a},{s}" for a, s in zip(lines, splits)) + "\n")
  only(problems_of(c), f"{c.data.labels}: lines 3, 4: patient {P1}: split: two splits "
       "(train, val)")


def _stored_gene_list(c, workdir, extra):
  """A normaliser like a trained run's, whose gene list has genes the table lacks."""
  cohort, _ = preflight.check(c)
  n = cohort.normalizer
  stored = genes_lib.GeneNormalizer(n.genes[:-2] + tuple(extra), n.mean, n.std)
  os.makedirs(workdir, exist_ok=True)
  stored.save(os.path.join(workdir, "normalizer.npz"))
  return os.path.join(workdir, "normalizer.npz")


def test_genes_missing_from_the_stored_gene_list_on_resume(cohort, tmp_path):
  _, c = cohort
  path = _stored_gene_list(c, str(tmp_path / "run"), ["ENSG99999999991", "ENSG99999999992"])
  only(problems_of(c, str(tmp_path / "run")),
       f"{c.data.expression}: genes: 2 of 40 genes of the gene list are missing (first: "
       f"ENSG99999999991, ENSG99999999992) (the gene list stored in {path})")


def test_genes_missing_from_the_gene_list_of_init_from(cohort, tmp_path):
  _, c = cohort
  path = _stored_gene_list(c, str(tmp_path / "pretrained"), ["ENSG99999999993", "ENSG00010000017"])
  c.init_from = str(tmp_path / "pretrained")
  only(problems_of(c, str(tmp_path / "run")),
       f"{c.data.expression}: genes: 1 of 40 genes of the gene list are missing (first: "
       f"ENSG99999999993) (the gene list stored in {path})")


def test_workdir_under_a_file(cohort, tmp_path):
  _, c = cohort
  (tmp_path / "file").write_text("x")
  only(problems_of(c, str(tmp_path / "file" / "run")),
       f"{tmp_path / 'file' / 'run'}: workdir: cannot be created, {tmp_path / 'file'} is a file")


def test_workdir_not_writable(cohort):
  _, c = cohort  # /proc refuses new files even to root (chmod would not stop root)
  (problem,) = problems_of(c, "/proc/run")
  assert problem.startswith("/proc/run: workdir: cannot be created in /proc ("), problem


def test_no_disk_room_for_the_checkpoints_and_the_report(cohort, tmp_path, monkeypatch):
  _, c = cohort
  real = preflight.shutil.disk_usage
  monkeypatch.setattr(preflight.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=1 << 20))
  (problem,) = problems_of(c, str(tmp_path / "run"))
  # Independent count: the model built for real; 2 classes, 40 genes.
  model = methods.build(c, [f"G{i}" for i in range(40)], 2, 0)
  n = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
  need = n * 3 * 4 * (2 * 3 + 1)  # 3 training stages x 2 kept + the best fine-tuned one
  # The report: ROC + confusion of val and test, curves, 1 heatmap, t-SNE, diagnostics = 8
  # figures at 4 MiB, 2.5 times; 10 patients' CSV rows (64 B x (2 classes + 4)); 1 KiB per step
  # of 2 epochs of each stage over 6 training patients (batches 16, 4, 2).
  report = int(2.5 * 8 * (4 << 20)) + 64 * 6 * 10 + 1024 * 2 * (1 + 2 + 3)
  assert problem == (f"{tmp_path / 'run'}: disk: 1.0 MiB free but the run needs about "
                     f"{(need + report) / 2**20:.1f} MiB: checkpoints {need / 2**20:.1f} MiB "
                     f"({n:,} parameters x 3 (weights and two Adam moments) x 4 bytes x 7 "
                     "checkpoints kept), report and metrics "
                     f"{report / 2**20:.1f} MiB (8 figures)")
  # Room for the checkpoints alone is not enough: the report would fail after training.
  monkeypatch.setattr(preflight.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=need + 1))
  assert len(problems_of(c, str(tmp_path / "run"))) == 1
  monkeypatch.setattr(preflight.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=need + report + 1))
  assert problems_of(c, str(tmp_path / "run")) == []


# ----------------------------------------------------------------------------- all at once


def _break_many(root, c):
  """Five problems in five places; returns the expected line prefixes."""
  x = feats()
  x[2] = np.nan
  write_h5(h5(root, P0), x, coords())
  write_h5(h5(root, P2, 2), feats(d=16), coords())
  os.remove(h5(root, "TCGA-SY-0005"))
  gene = edit_expression(root, "TCGA-SY-0003-01A", 4, "inf")
  shutil.copy(h5(root, P1), root / "features" / "orphan.h5")
  return [
      where(root, P0) + "features: 1 rows contain NaN/Inf (first row 2)",
      where(root, P2, 2) + "features: width 16, expected 32 (config feature_dim)",
      where(root, "TCGA-SY-0005") + "feature file missing (no image modality)",
      f"{c.data.expression}: patient TCGA-SY-0003: values: column TCGA-SY-0003-01A has 1 NaN/Inf "
      f"values (first gene {genes_lib.strip_version(gene)})",
      f"{c.data.features_dir}: 1 slide file(s) have no row in {c.data.labels} (first: orphan)"]


def test_every_problem_at_once(cohort):
  root, c = cohort
  expected = _break_many(root, c)
  assert sorted(problems_of(c)) == sorted(expected)


def test_drop_incomplete_drops_the_broken_patients(cohort, tmp_path):
  root, c = cohort
  _break_many(root, c)
  os.remove(root / "features" / "orphan.h5")  # a global problem, never dropped
  c.data.drop_incomplete = True
  c.stages = ("pretrain",)  # both validation patients are dropped: only pre-training can run
  result = preflight.preflight(c, str(tmp_path / "run"))
  kept = {p.patient_id for p in result.patients}
  assert kept == {f"TCGA-SY-{i:04d}" for i in range(10)} - {P0, P2, "TCGA-SY-0003",
                                                           "TCGA-SY-0005"}
  # The patient whose NaN rows only a full read finds is out of the cohort that trains.
  assert all(np.isfinite(result.bag(i).features()).all() for i in range(len(result.patients)))


def _flags(c, workdir):
  return tiny_flags(c.data, workdir, "--config.data.num_genes=0")


def test_validate_command_line(cohort, tmp_path):
  root, c = cohort
  ok = run_module("gimp_jax.validate", *_flags(c, tmp_path / "run"))
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert ok.stdout.splitlines() == [
      "gimp_jax.validate: 10 patients (train 6, val 2, test 2), 12 slides, 2 classes, 40 genes, "
      "feature width 32: no problems found"]
  expected = _break_many(root, c)
  bad = run_module("gimp_jax.validate", *_flags(c, tmp_path / "run"))
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  lines = [x for x in bad.stderr.splitlines() if x.startswith(str(root))]
  assert sorted(lines) == sorted(expected)
  assert bad.stderr.splitlines()[-1] == "gimp_jax.validate: 5 problem(s)"


def test_training_refuses_bad_inputs_before_any_stage(cohort, tmp_path):
  root, c = cohort
  expected = _break_many(root, c)
  proc = run_module("gimp_jax.main", *_flags(c, tmp_path / "run"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [x.removeprefix("gimp_jax: error: ") for x in proc.stderr.splitlines()]
  assert sorted(x for x in lines if x.startswith(str(root))) == sorted(expected)
  assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- first answers


def with_splits(c, split_of):
  """Adds a split column: split_of(patient_id) for every row."""
  lines = open(c.data.labels).read().splitlines()
  rows = [lines[0] + ",split"] + [f"{x},{split_of(x.split(',')[0])}" for x in lines[1:]]
  with open(c.data.labels, "w") as f:
    f.write("\n".join(rows) + "\n")


def test_no_validation_or_test_patients_is_refused_before_training(cohort, tmp_path):
  _, c = cohort
  original = open(c.data.labels).read()
  with_splits(c, lambda pid: "test" if pid in (P0, P1) else "train")
  only(problems_of(c), f"{c.data.labels}: split: no val patients (10 patients: train 8, val 0, "
       "test 2), but stage(s) gene_pretrain, finetune, test need them: add patients, change "
       "data.split_fractions, or give a split column")
  with pytest.raises(DataError, match="split: no val patients"):
    run_lib.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()
  c.stages = ("pretrain",)  # pre-training needs training patients only
  assert problems_of(c) == []
  with open(c.data.labels, "w") as f:
    f.write(original)
  with_splits(c, lambda pid: "val" if pid in (P0, P1) else "train")
  c.stages = ("pretrain", "finetune", "test")
  assert any("split: no test patients" in p and "stage(s) test need them" in p
             for p in problems_of(c))


def test_the_automatic_split_of_a_tiny_cohort_is_refused(tmp_path):
  paths = synthetic.make_cohort(str(tmp_path / "in"), patients=4, genes=40, min_patches=6,
                                max_patches=12, feature_dim=D, seed=1)
  c = nsclc.get_config("tiny")
  c.data.update(num_genes=0, **paths)
  # floor(0.6 x 4) = 2 train, floor(0.2 x 4) = 0 val, the other 2 test.
  only(problems_of(c), f"{paths['labels']}: split: no val patients (4 patients: train 2, val 0, "
       "test 2), but stage(s) gene_pretrain, finetune, test need them: add patients, change "
       "data.split_fractions, or give a split column")


def test_expression_cells_that_are_not_numbers_all_reported_and_droppable(cohort, tmp_path):
  root, c = cohort
  g1 = edit_expression(root, f"{P1}-01A", 7, "abc")
  g2 = edit_expression(root, f"{P1}-01A", 9, "x?")
  g3 = edit_expression(root, "TCGA-SY-0003-01A", 2, "NA")
  g4 = edit_expression(root, "TCGA-SY-0004-01A", 3, "")
  assert sorted(problems_of(c)) == sorted([
      f"{c.data.expression}: patient {P1}: values: column {P1}-01A: 2 value(s) are not numbers: "
      f"line 8: gene {g1}: value 'abc' is not a number; line 10: gene {g2}: value 'x?' is not a "
      "number",
      f"{c.data.expression}: patient TCGA-SY-0003: values: column TCGA-SY-0003-01A has 1 NaN/Inf "
      f"values (first gene {genes_lib.strip_version(g3)})",
      f"{c.data.expression}: patient TCGA-SY-0004: values: column TCGA-SY-0004-01A has 1 NaN/Inf "
      f"values (first gene {genes_lib.strip_version(g4)})"])
  c.data.drop_incomplete = True
  c.stages = ("pretrain",)
  kept = {p.patient_id for p in preflight.preflight(c, str(tmp_path / "run")).patients}
  assert kept == {f"TCGA-SY-{i:04d}" for i in range(10)} - {P1, "TCGA-SY-0003", "TCGA-SY-0004"}


def test_negative_expression_names_patient_and_gene(cohort):
  root, c = cohort
  gene = edit_expression(root, f"{P1}-01A", 5, "-2.5")
  only(problems_of(c), f"{c.data.expression}: patient {P1}: values: column {P1}-01A has 1 "
       f"negative values (first gene {genes_lib.strip_version(gene)}: -2.5), so log2(x + 1) is "
       "undefined; if the table is already log-transformed set data.log_transform=False")
  c.data.log_transform = False
  assert problems_of(c) == []


def test_a_transposed_matrix_is_one_line_with_the_cause(cohort):
  root, c = cohort
  path = root / "expression.tsv"
  table = [x.split("\t") for x in path.read_text().splitlines()]
  path.write_text("\n".join("\t".join(col) for col in zip(*table)) + "\n")
  only(problems_of(c), f"{path}: the matrix looks transposed: patient IDs are in its first "
       "column; expected one row per gene and one column per sample (first column the gene IDs)")


def test_excel_bom_is_accepted(cohort):
  root, c = cohort
  for path in (c.data.labels, c.data.expression):
    text = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8"
      f.write(text)
    assert open(path, "rb").read(3) == b"\xef\xbb\xbf"
  result, problems = preflight.check(c)
  assert problems == [] and len(result.patients) == 10


@pytest.mark.parametrize("dtype,value,store", [("float32", 1e300, np.float64),
                                               ("bfloat16", 3.4e38, np.float32)])
def test_features_are_finite_after_the_cast_to_the_compute_dtype(cohort, dtype, value, store):
  root, c = cohort
  c.compute_dtype = dtype
  with np.errstate(over="ignore"):  # the independent check: NumPy's (ml_dtypes') cast
    assert np.isfinite(store(value)) and np.isinf(np.asarray(store(value)).astype(jnp.dtype(dtype)))
  x = feats().astype(store)
  x[4, 1] = value
  write_h5(h5(root, P0), x, coords())
  cast = "" if dtype == "float32" and store == np.float32 else (
      f" as {dtype} (the file holds {np.dtype(store).name})")
  only(problems_of(c), where(root, P0) + f"features: 1 rows contain NaN/Inf{cast} (first row 4)")


@pytest.mark.parametrize("slide", ["../escape", "/etc/passwd", "sub/dir", ".."])
def test_slide_ids_that_leave_features_dir_are_refused(cohort, slide):
  _, c = cohort
  with open(c.data.labels, "a") as f:
    f.write(f"TCGA-SY-0100,{slide},class_0\n")
  only(problems_of(c), f"{c.data.labels}: line 14: patient TCGA-SY-0100: slide_id {slide!r} is "
       "not a file name inside features_dir (no folders, no \"..\", not an absolute path)")


def test_slide_ids_ending_in_h5_are_one_line_with_the_cause(cohort):
  _, c = cohort
  text = open(c.data.labels).read().splitlines()
  rows = [text[0]] + [x.replace("-01Z-00-DX1", "-01Z-00-DX1.h5").replace("-DX2", "-DX2.h5")
                      for x in text[1:]]
  with open(c.data.labels, "w") as f:
    f.write("\n".join(rows) + "\n")
  only(problems_of(c), f"{c.data.labels}: slide_id: 12 slide ID(s) end in .h5 (first: "
       f"{P0}-01Z-00-DX1.h5, {P1}-01Z-00-DX1.h5, {P1}-01Z-00-DX2.h5, {P2}-01Z-00-DX1.h5, "
       f"{P2}-01Z-00-DX2.h5); write them without the extension")


def test_drop_incomplete_keeps_everyone_else_in_their_split(cohort):
  root, c = cohort
  before, _ = preflight.check(c)
  split_of = {before.patients[i].patient_id: k for k, idx in before.splits.items() for i in idx}
  os.remove(h5(root, "TCGA-SY-0005"))
  c.data.drop_incomplete = True
  after, problems = preflight.check(c)
  assert problems == [] and len(after.patients) == 9
  assert {after.patients[i].patient_id: k for k, idx in after.splits.items() for i in idx} == {
      pid: k for pid, k in split_of.items() if pid != "TCGA-SY-0005"}


def test_config_and_data_problems_are_reported_together(cohort):
  root, c = cohort
  c.pretrain.window = 1  # round(0.5 x 1) = 0 or 1 patch masked: no visible or no masked patch
  c.finetune.label_smoothing = 1.0
  c.optim.learning_rate = 0.0
  c.model.heads = 5  # does not divide dim 32
  c.finetune.select_metric = "val_loss"
  c.finetune.epochs = -1
  os.remove(h5(root, P0))  # a data problem: reported beside the config's
  assert problems_of(c) == [
      "config: optim.learning_rate: 0.0, expected a number > 0",
      "config: finetune.epochs: -1, expected an integer >= 1",
      "config: finetune.label_smoothing: 1.0, expected a number >= 0 and < 1",
      "config: finetune.select_metric: 'val_loss', expected one of val_accuracy, val_auc, val_f1",
      "config: model.heads: 5 does not divide model.dim 32",
      "config: pretrain.mask_ratio: 0.5 of a window of 1 patches masks 0: L_rec needs at least "
      "one masked and one visible patch",
      f"{where(root, P0)}feature file missing (no image modality)"]
  with pytest.raises(DataError) as e:  # the same lines from training, before anything is written
    run_lib.train_and_evaluate(c, str(root / "run"))
  assert str(e.value).split("\n") == problems_of(c) and not (root / "run").exists()
  c.data.feature_dim = 0  # the inputs cannot be read as configured: config problems alone
  problems = problems_of(c)
  assert "config: data.feature_dim: 0, expected an integer >= 1" in problems
  assert all(p.startswith("config: ") for p in problems), problems
