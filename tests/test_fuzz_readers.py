"""Readers fuzzed with hypothesis: only `DataError` may escape, and the validator never raises.

The byte-level fuzzing of single files is in the data layer's tests (test_clam: corrupted `.h5`
bytes; test_cohort: labels CSVs; test_expression: matrix and per-sample tables; test_genes:
normaliser files). Here: well-formed HDF5 files of the wrong structure, whole cohorts with
corrupted or edited inputs through `preflight.check` and `load_cohort`, GDC folders with
manifests, and the run records `predict` reads.
"""

import json
import os
import shutil
import tempfile

import h5py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from gimp_jax.configs import nsclc
from gimp_jax import predict
from gimp_jax import preflight
from gimp_jax.data import clam
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import expression as expr
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError

D = 4
_FUZZ = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


# ----------------------------------------------------------------------------- HDF5 structures

_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int64, np.uint16, np.bool_, "S3",
           "vlen-str", "compound"]


def _array(dtype, shape, fill):
  if dtype == "vlen-str":  # np.empty keeps the string dtype's metadata for empty shapes too
    out = np.empty(shape, dtype=h5py.string_dtype())
    out[...] = "x"
    return out
  if dtype == "compound":
    return np.zeros(shape, dtype=[("a", np.float32), ("b", np.int32)])
  return np.full(shape, fill).astype(dtype)


_dataset = st.one_of(
    st.just(None),  # absent
    st.just("group"),
    st.tuples(st.sampled_from(_DTYPES),
              st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
              st.sampled_from([0.5, np.nan, np.inf, -1e30, 7])))


def _write(path, spec):
  with h5py.File(path, "w") as f:
    for name, ds in spec.items():
      if ds == "group":
        f.create_group(name).create_dataset("inner", data=np.zeros(3))
      elif ds is not None:
        dtype, shape, fill = ds
        f.create_dataset(name, data=_array(dtype, shape, fill))
    f.attrs["note"] = "fuzz"


@_FUZZ
@given(features=_dataset, coords=_dataset, width=st.sampled_from([None, D, 2]))
def test_fuzz_h5_structures_raise_only_data_error(tmp_path, features, coords, width):
  path = str(tmp_path / "s.h5")
  _write(path, {"features": features, "coords": coords})
  problems = clam.check_bag(path, width)  # never raises
  assert all(isinstance(p, str) and p.startswith(path) for p in problems)
  try:
    info = clam.inspect_slide(path, width)
    bag = clam.open_bag([path], width)
    rows = np.arange(info.num_patches)
    assert bag.features(rows).shape == (info.num_patches, info.feature_dim)
    assert bag.coords(rows).shape == (info.num_patches, 2)
    n = bag.num_patches
    bag.read_into(np.zeros((n, info.feature_dim), np.float32), np.zeros((n, 2), np.int32))
  except DataError:
    pass
  else:
    assert not problems  # what reads back cleanly, the full check accepts too


# ----------------------------------------------------------------------------- whole cohorts


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  out = tmp_path_factory.mktemp("base")
  synthetic.make_cohort(str(out), patients=6, genes=8, min_patches=3, max_patches=5,
                        feature_dim=D, seed=3)
  return str(out)


def _config(root):
  c = nsclc.get_config("tiny")
  c.data.update(features_dir=os.path.join(root, "features"),
                expression=os.path.join(root, "expression.tsv"),
                labels=os.path.join(root, "labels.csv"), feature_dim=D, num_genes=0)
  return c


_TOKENS = ["", "nan", "-inf", "1e999", "x", '"', ",", "\t", "TCGA-SY-0001", "TCGA-SY-0001-01A",
           "class_0", "class_9", "train", "val", "test", "holdout", "\x00", "é", "-3", "0"]
_edit = st.one_of(
    st.tuples(st.just("bytes"), st.sampled_from(["labels.csv", "expression.tsv", "h5"]),
              st.integers(0, 5000), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("cell"), st.sampled_from(["labels.csv", "expression.tsv"]),
              st.integers(0, 60), st.sampled_from(_TOKENS)),
    st.tuples(st.just("row"), st.just("labels.csv"), st.integers(1, 4),
              st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.sampled_from(["labels.csv", "expression.tsv", "h5"]),
              st.integers(0, 4000), st.just(b"")))


def _apply(root, edit):
  kind, name, where, what = edit
  path = (os.path.join(root, "features", sorted(os.listdir(os.path.join(root, "features")))[0])
          if name == "h5" else os.path.join(root, name))
  data = bytearray(open(path, "rb").read())
  if kind == "bytes":
    where %= max(len(data), 1)
    data[where:where + len(what)] = what
  elif kind == "truncate":
    data = data[:where % max(len(data), 1)]
  elif kind == "cell":
    sep = b"," if name.endswith(".csv") else b"\t"
    cells = data.split(sep)
    cells[where % len(cells)] = what.encode()
    data = bytearray(sep.join(cells))
  else:
    line = ",".join(what).encode() + b"\n"
    data += line * where
  with open(path, "wb") as f:
    f.write(bytes(data))


@_FUZZ
@given(edits=st.lists(_edit, min_size=1, max_size=3), split=st.booleans(),
       drop=st.booleans())
def test_fuzz_cohorts_validator_never_raises(base, edits, split, drop):
  root = tempfile.mkdtemp()
  try:
    shutil.copytree(base, root, dirs_exist_ok=True)
    if split:
      path = os.path.join(root, "labels.csv")
      lines = open(path).read().splitlines()
      names = ["split"] + [("train", "val", "test", "train")[i % 4] for i in range(len(lines) - 1)]
      open(path, "w").write("\n".join(f"{a},{b}" for a, b in zip(lines, names)) + "\n")
    for edit in edits:
      _apply(root, edit)
    c = _config(root)
    c.data.drop_incomplete = drop
    cohort, problems = preflight.check(c, os.path.join(root, "run"))  # never raises
    assert (cohort is None) == bool(problems)
    assert all(isinstance(p, str) and p and "\n" not in p for p in problems)
    try:
      loaded = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_mapping(c.data, seed=0))
    except DataError:
      assert cohort is None or drop  # the scan drops patients whose headers were fine
    else:
      if cohort is not None:
        assert loaded.num_genes == cohort.num_genes
  finally:
    shutil.rmtree(root)


# ----------------------------------------------------------------------------- GDC folders

_GDC_LINES = ["# comment", "gene_id\tgene_name\tgene_type\tfpkm_unstranded",
              "ENSG00000000003.15\tTSPAN6\tprotein_coding\t12.5",
              "ENSG00000000005.6\tTNMD\tprotein_coding\t0", "N_unmapped\t\t\t3", "__x\t1",
              "ENSG00000000003.15\t1.0", "ENSG00000000419.13\tnan", "x\ty", "\t", "ENSG1\t1\t2"]
_MANIFEST_LINES = ["File Name\tSample ID", "file name,sample_id", "a.tsv\tTCGA-05-4244-01A",
                   "b.tsv\tTCGA-05-4244-01A", "b.tsv\t", "c.tsv\tTCGA-05-4249-01A", "x"]


@_FUZZ
@given(files=st.lists(st.lists(st.sampled_from(_GDC_LINES), max_size=6), min_size=1,
                      max_size=3),
       manifest=st.one_of(st.none(), st.lists(st.sampled_from(_MANIFEST_LINES), max_size=5)),
       value_column=st.sampled_from([None, 1, 3, 9, "fpkm_unstranded", "tpm"]))
def test_fuzz_gdc_folders_raise_only_data_error(tmp_path, files, manifest, value_column):
  folder = tempfile.mkdtemp(dir=tmp_path)
  for name, lines in zip("abc", files):
    os.makedirs(os.path.join(folder, f"uuid-{name}"))
    with open(os.path.join(folder, f"uuid-{name}", f"{name}.tsv"), "w") as f:
      f.write("\n".join(lines) + "\n")
  path = None
  if manifest is not None:
    path = os.path.join(folder, "sheet.tsv")
    with open(path, "w") as f:
      f.write("\n".join(manifest) + "\n")
  try:
    source = expr.open_expression(folder, value_column, path)
    table = source.read()
    assert table.values.shape == (len(table.samples), len(table.genes))
    assert len(set(table.samples)) == len(table.samples)
  except DataError:
    pass


# ----------------------------------------------------------------------------- run records


@_FUZZ
@given(name=st.sampled_from(["config.json", "provenance.json"]),
       content=st.one_of(st.binary(max_size=80),
                         st.sampled_from([b"[]", b"{}", b"null", b'{"cohort": 3}',
                                          b'{"cohort": {"class_names": []}}',
                                          b'{"cohort": {"class_names": "ab"}}'])))
def test_fuzz_run_records_raise_only_data_error(tmp_path, name, content):
  workdir = tempfile.mkdtemp(dir=tmp_path)
  good = {"config.json": json.dumps(nsclc.get_config("tiny").to_dict()).encode(),
          "provenance.json": b'{"cohort": {"class_names": ["a", "b"]}}'}
  for n, data in good.items():
    with open(os.path.join(workdir, n), "wb") as f:
      f.write(content if n == name else data)
  try:
    config, names = predict.load_run(workdir)
    assert config.method and len(names) >= 1
  except DataError:
    pass
