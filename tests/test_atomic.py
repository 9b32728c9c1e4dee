"""gimp_jax.atomic, through the writers that use it (`provenance.write_json_atomic`,
`predict.write_csv`): a regular file is replaced whole; whatever is not one (a symbolic link, a
device, a named pipe, a folder) is refused and left as it was."""

import json
import os

import numpy as np
import pytest

from gimp_jax import predict
from gimp_jax import provenance
from gimp_jax.errors import DataError

_RESULT = {"patient_id": ["p0"], "label": np.array([0]), "probs": np.array([[0.25, 0.75]]),
           "modality": ["slide"], "class_names": ("a", "b")}


def test_a_regular_file_is_replaced_whole_and_no_temporary_file_stays(tmp_path):
  path = tmp_path / "r.json"
  path.write_text("old")
  provenance.write_json_atomic(str(path), {"a": 1})
  assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["r.json"]


def test_a_symbolic_link_is_refused_and_its_target_kept(tmp_path):
  target = tmp_path / "precious.csv"
  target.write_text("keep me")
  for name, write in (("out.json", lambda p: provenance.write_json_atomic(p, {"a": 1})),
                      ("out.csv", lambda p: predict.write_csv(p, _RESULT))):
    link = tmp_path / name
    link.symlink_to(target)
    with pytest.raises(DataError, match=rf"^{link}: is a symbolic link to {target}, not a "
                       r"regular file; refusing to replace it"):
      write(str(link))
    assert os.path.islink(link) and target.read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["out.csv", "out.json", "precious.csv"]


def test_a_named_pipe_is_refused_and_stays_a_pipe(tmp_path):
  fifo = tmp_path / "pipe"
  os.mkfifo(fifo)
  with pytest.raises(DataError, match=rf"^{fifo}: is a named pipe, not a regular file"):
    predict.write_csv(str(fifo), _RESULT)
  assert os.path.exists(fifo) and not os.path.isfile(fifo) and os.listdir(tmp_path) == ["pipe"]


def test_a_device_is_refused_and_stays_the_device(tmp_path):
  """/dev/full itself; as root (who could replace it) a node of the same device in tmp_path, so
  that a broken writer damages nothing outside the test."""
  device = "/dev/full"
  if os.geteuid() == 0:
    device = str(tmp_path / "full")
    os.mknod(device, 0o666 | 0o020000, os.stat("/dev/full").st_rdev)  # S_IFCHR
  before = os.lstat(device)
  for write in (lambda p: provenance.write_json_atomic(p, {"a": 1}),
                lambda p: predict.write_csv(p, _RESULT)):
    with pytest.raises(DataError, match=rf"^{device}: is a character device, not a regular file"):
      write(device)
    after = os.lstat(device)
    assert (after.st_ino, after.st_rdev, after.st_mode) == (before.st_ino, before.st_rdev,
                                                            before.st_mode)
  folder = os.path.dirname(device)
  assert not [n for n in os.listdir(folder) if n.startswith(os.path.basename(device) + ".tmp-")]


def test_a_folder_is_refused(tmp_path):
  with pytest.raises(DataError, match=rf"^{tmp_path}: is a folder, not a regular file"):
    provenance.write_json_atomic(str(tmp_path), {"a": 1})
