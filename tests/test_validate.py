"""The validation pass: every bad input of the issue reported as one line naming file, patient and
field; all of them at once; exit code 2 without a traceback, from `gimp_jax.validate` and before
training from `gimp_jax.main`."""

import os
import shutil
import subprocess
import sys

from flax import nnx
import h5py
import jax
import numpy as np
import pytest

from gimp_jax.configs import nsclc
from gimp_jax import methods
from gimp_jax import validate
from gimp_jax.data import genes as genes_lib
from gimp_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  cohort, problems = validate.check(c, workdir)
  assert (cohort is None) == bool(problems)
  return problems


def only(problems, expected):
  assert problems == [expected], problems


# ----------------------------------------------------------------------------- each bad input


def test_clean_cohort_has_no_problems(cohort, tmp_path):
  _, c = cohort
  result, problems = validate.check(c, str(tmp_path / "run"))
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
  lines[0] = "\t".join(header[:2] + [header[1]] + header[3:])  # the 3rd sample renamed as the 2nd
  path.write_text("\n".join(lines) + "\n")
  only(problems_of(c), f"{path}: header (sample IDs): 1 duplicated IDs (first: {header[1]})")


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
  cohort, _ = validate.check(c)
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
  real = validate.shutil.disk_usage
  monkeypatch.setattr(validate.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=1 << 20))
  (problem,) = problems_of(c, str(tmp_path / "run"))
  # Independent count: the model built for real; 2 classes, 40 genes.
  model = methods.get(c.method).build(c, 40, 2, 0)
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
  monkeypatch.setattr(validate.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=need + 1))
  assert len(problems_of(c, str(tmp_path / "run"))) == 1
  monkeypatch.setattr(validate.shutil, "disk_usage",
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
  result = validate.preflight(c, str(tmp_path / "run"))
  kept = {p.patient_id for p in result.patients}
  assert kept == {f"TCGA-SY-{i:04d}" for i in range(10)} - {P0, P2, "TCGA-SY-0003",
                                                           "TCGA-SY-0005"}
  # The patient whose NaN rows only a full read finds is out of the cohort that trains.
  assert all(np.isfinite(result.bag(i).features()).all() for i in range(len(result.patients)))


def _cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _flags(c, workdir):
  return [f"--config={os.path.join(ROOT, 'configs', 'nsclc.py')}:tiny", f"--workdir={workdir}",
          f"--config.data.features_dir={c.data.features_dir}",
          f"--config.data.expression={c.data.expression}",
          f"--config.data.labels={c.data.labels}", "--config.data.num_genes=0"]


def test_validate_command_line(cohort, tmp_path):
  root, c = cohort
  ok = _cli("gimp_jax.validate", *_flags(c, tmp_path / "run"))
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert ok.stdout.splitlines() == [
      "gimp_jax.validate: 10 patients (train 6, val 2, test 2), 12 slides, 2 classes, 40 genes, "
      "feature width 32: no problems found"]
  expected = _break_many(root, c)
  bad = _cli("gimp_jax.validate", *_flags(c, tmp_path / "run"))
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  lines = [x for x in bad.stderr.splitlines() if x.startswith(str(root))]
  assert sorted(lines) == sorted(expected)
  assert bad.stderr.splitlines()[-1] == "gimp_jax.validate: 5 problem(s)"


def test_training_refuses_bad_inputs_before_any_stage(cohort, tmp_path):
  root, c = cohort
  expected = _break_many(root, c)
  proc = _cli("gimp_jax.main", *_flags(c, tmp_path / "run"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [x.removeprefix("gimp_jax: error: ") for x in proc.stderr.splitlines()]
  assert sorted(x for x in lines if x.startswith(str(root))) == sorted(expected)
  assert not (tmp_path / "run" / "checkpoints").exists()
