"""One run per workdir: a second real `python -m gimp_jax.main` on a workdir in use exits
2 naming the holder, and the first one's results equal a run alone; stale locks are taken over;
a changed config on a finished workdir is refused unless --allow_config_change, and results.json
records the config that produced it; SIGTERM in the test/report stage is honoured.

The cohort and flags are those of tests/test_resume.py (the shared XLA compilation cache).
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import finish, start_main, tiny_flags
from gimp_jax import workdir as workdir_lib
from gimp_jax.configs import nsclc
from gimp_jax.data import genes as genes_lib
from gimp_jax.errors import DataError
from gimp_jax.train import run as run_lib



def flags(paths, workdir, *extra):
  return tiny_flags(paths, workdir, "--config.report.tsne=False", "--config.report.heatmaps=0",
                    "--config.pretrain.checkpoint_every=2",
                    "--config.finetune.checkpoint_every=1000",
                    "--config.stages=('pretrain','finetune','test')", *extra)


start = start_main


def read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def inputs(cohort20):
  return cohort20


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
  """Run A alone; B and C started on one workdir, C while B holds the lock; then D, E on B's
  finished workdir with a changed config (refused, then allowed)."""
  base = tmp_path_factory.mktemp("runs")
  alone, shared = str(base / "alone"), str(base / "shared")
  obs = {"alone": alone, "shared": shared}
  first = start(flags(inputs, shared))
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(shared, workdir_lib.LOCK)):
    assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
    time.sleep(0.05)
  obs["holder"] = read_json(os.path.join(shared, workdir_lib.LOCK))
  obs["second"] = finish(start(flags(inputs, shared)))
  obs["first"] = finish(first)
  obs["alone_run"] = finish(start(flags(inputs, alone)))
  obs["lock_after"] = os.path.exists(os.path.join(shared, workdir_lib.LOCK))
  obs["results_before"] = read_json(os.path.join(shared, "results.json"))
  changed = ("--config.finetune.epochs=3", "--config.optim.learning_rate=0.001")
  obs["refused"] = finish(start(flags(inputs, shared, *changed)))
  obs["results_after_refusal"] = read_json(os.path.join(shared, "results.json"))
  obs["allowed"] = finish(start(flags(inputs, shared, *changed, "--allow_config_change")))
  obs["results_allowed"] = read_json(os.path.join(shared, "results.json"))
  return obs


def test_a_second_run_on_a_workdir_in_use_exits_2_naming_the_holder(runs):
  rc, _, err = runs["second"]
  assert rc == 2 and "Traceback" not in err, err[-3000:]
  holder = runs["holder"]
  line = err.splitlines()[-1]
  assert line.startswith(f"gimp_jax: error: {os.path.join(runs['shared'], 'run.lock')}: workdir "
                         f"in use by process {holder['pid']} on host {socket.gethostname()}")
  assert "main.py --config=" in line and holder["pid"] != os.getpid()


def test_the_first_run_is_untouched_and_equals_a_run_alone(runs):
  for name in ("first", "alone_run"):
    rc, _, err = runs[name]
    assert rc == 0, err[-3000:]
  assert runs["first"][1] == runs["alone_run"][1]  # the printed test metrics
  alone = read_json(os.path.join(runs["alone"], "results.json"))
  for key in ("test_accuracy", "test_auc", "val_accuracy"):
    assert runs["results_before"][key] == alone[key]
  for stage in ("pretrain", "finetune"):
    assert (runs["results_before"]["stages"][stage]["final_metrics"]
            == alone["stages"][stage]["final_metrics"])
  assert not os.path.exists(os.path.join(runs["shared"], "checkpoints", "pretrain.damaged"))
  assert not runs["lock_after"]  # released on exit


def test_a_changed_config_is_refused_listing_the_fields(runs):
  rc, _, err = runs["refused"]
  assert rc == 2 and "Traceback" not in err, err[-3000:]
  line = err.splitlines()[-1]
  assert line.startswith(f"gimp_jax: error: {os.path.join(runs['shared'], 'config.json')}: the "
                         "config differs from the one this workdir was made with (")
  assert "finetune.epochs: 2 -> 3; optim.learning_rate: 0.0001 -> 0.001)" in line
  assert "--allow_config_change" in line
  assert runs["results_after_refusal"] == runs["results_before"]


def test_an_allowed_change_is_recorded_in_results(runs):
  rc, _, err = runs["allowed"]
  assert rc == 0, err[-3000:]
  got = runs["results_allowed"]
  assert got["config"]["finetune"]["epochs"] == 3
  assert got["config_changes"] == [{"config": "config.previous-1.json", "changes": [
      "finetune.epochs: 2 -> 3", "optim.learning_rate: 0.0001 -> 0.001"]}]
  previous = read_json(os.path.join(runs["shared"], "config.previous-1.json"))
  assert previous["finetune"]["epochs"] == 2 == runs["results_before"]["config"]["finetune"][
      "epochs"]
  assert read_json(os.path.join(runs["shared"], "config.json"))["finetune"]["epochs"] == 3


def test_sigterm_during_the_test_stage_stops_it(runs, inputs):
  """A stop requested once the test stage has begun: KeyboardInterrupt (the CLI exits 143), and
  neither results.json nor the report is rewritten."""
  c = nsclc.get_config("tiny")
  c.data.update(features_dir=inputs["features_dir"], expression=inputs["expression"],
                labels=inputs["labels"])
  c.update_from_flattened_dict({"report.tsne": False, "report.heatmaps": 0,
                                "pretrain.checkpoint_every": 2, "finetune.checkpoint_every": 1000})
  c.stages = ("pretrain", "finetune", "test")
  workdir = runs["alone"]
  before = {n: os.path.getmtime(os.path.join(workdir, n))
            for n in ("results.json", "report/report.md")}
  calls = []

  def stop():  # False at the check before the stage, True from then on
    calls.append(1)
    return len(calls) > 3
  with pytest.raises(KeyboardInterrupt):
    run_lib.train_and_evaluate(c, workdir, stop=stop)
  assert len(calls) >= 4
  assert before == {n: os.path.getmtime(os.path.join(workdir, n)) for n in before}
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK))


# ----------------------------------------------------------------------------- the lock alone


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_is_held_released_and_refused(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lib.lock(workdir) as path:
    held = read_json(path)
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"workdir in use by process {os.getpid()} "
                       f"on host {socket.gethostname()}"):
      with workdir_lib.lock(workdir):
        pass
  assert not os.path.exists(path)
  with pytest.raises(RuntimeError):  # released on any exit
    with workdir_lib.lock(workdir):
      raise RuntimeError
  assert not os.path.exists(path)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  pid = _dead_pid()
  (workdir / workdir_lib.LOCK).write_text(json.dumps(
      {"pid": pid, "host": socket.gethostname(), "time": 0, "command": "killed"}))
  with workdir_lib.lock(str(workdir)) as path:
    assert read_json(path)["pid"] == os.getpid()
  assert f"stale lock of process {pid}" in caplog.text
  # Half a lock file (a kill while it was written) is stale too.
  (workdir / workdir_lib.LOCK).write_text('{"pid": ')
  with workdir_lib.lock(str(workdir)):
    pass


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
  """The PID is alive (this process) but started at another time than the recorded one."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lib.LOCK).write_text(json.dumps(
      {"pid": os.getpid(), "host": socket.gethostname(), "start": "1", "time": 0}))
  with workdir_lib.lock(str(workdir)) as path:
    assert read_json(path)["start"] != "1"


def test_lock_of_another_host_is_refused_naming_it(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lib.LOCK).write_text(json.dumps(
      {"pid": _dead_pid(), "host": "node-17", "time": 0, "command": "python -m gimp_jax.main"}))
  with pytest.raises(workdir_lib.WorkdirBusy, match="on host node-17 .*if that run is dead, "
                     "delete this file"):
    with workdir_lib.lock(str(workdir)):
      pass


def test_config_changes_lists_fields_and_ignores_the_neutral_ones():
  old = {"stages": ["pretrain"], "data": {"prefetch": 2, "labels": "a.csv"},
         "report": {"tsne": True}, "pretrain": {"window": 64},
         "parallel": {"coordinator_address": "h:1", "process_id": 0, "num_processes": 2}}
  new = {"stages": ["pretrain", "test"], "data": {"prefetch": 4, "labels": "b.csv"},
         "report": {"tsne": False}, "pretrain": {"window": 32, "extra": 1},
         "parallel": {"coordinator_address": "h:2", "process_id": 1, "num_processes": 4}}
  assert workdir_lib.config_changes(old, new) == [
      'data.labels: "a.csv" -> "b.csv"', "parallel.num_processes: 2 -> 4",
      'pretrain.extra: "<unset>" -> 1', "pretrain.window: 64 -> 32"]


def test_a_field_added_later_counts_as_its_earlier_behaviour():
  """A workdir recorded before `model.head_fusion` existed ran the concatenation head."""
  old = {"model": {"dim": 8}}
  assert workdir_lib.config_changes(old, {"model": {"dim": 8, "head_fusion": "concat"}}) == []
  assert workdir_lib.config_changes(old, {"model": {"dim": 8, "head_fusion": "late"}}) == [
      'model.head_fusion: "concat" -> "late"']


def test_an_unreadable_config_record_is_a_data_error(tmp_path):
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(DataError, match="config.json: unreadable config record"):
    workdir_lib.check_config(str(tmp_path), nsclc.get_config("tiny"), False)


def test_the_gene_list_is_stored_by_process_zero_only(tmp_path, monkeypatch):
  """In a job of several processes the others leave normalizer.npz to process 0."""
  norm = genes_lib.GeneNormalizer.fit(np.arange(6.0).reshape(2, 3), ["a", "b", "c"])
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  workdir_lib.save_normalizer(norm, str(tmp_path))
  assert not os.listdir(tmp_path)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  workdir_lib.save_normalizer(norm, str(tmp_path))
  assert genes_lib.GeneNormalizer.load(str(tmp_path / "normalizer.npz")).genes == ("a", "b", "c")
