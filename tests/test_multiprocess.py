"""Two processes on localhost (`jax.distributed`, CPU devices, gloo collectives), one shared
workdir: the real CLI trains every stage (gene pre-training at batch size 1, whose batch does not
split over the devices, pre-training split over them, fine-tuning, test), is killed with SIGKILL
mid-stage and resumed, and `gimp_jax.predict` runs as two processes; results.json, every
checkpoint and the predictions equal one process over the same two devices.

Tolerance: the two jobs run the same stages but not the same XLA programs (a batch that does not
split runs on one device in one process and replicated on the mesh in two; the all-reduce of the
split stage crosses processes through gloo), so float32 numbers agree to rounding: 1e-5
(relative and absolute) on every checkpoint leaf, result and probability; the one exception, a bias
with a zero gradient that Adam moves by rounding noise, is explained and bounded where it is
checked.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import assert_checkpoints_match, saved_steps
from gimp_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
LEARNING_RATE = 1e-4  # optim.learning_rate of the tiny config
STAGES = ("gene_pretrain", "gene_pretrain_best", "pretrain", "finetune", "finetune_best")
TIMEOUT = 600  # seconds a subprocess may take (a hung collective fails the test, not CI)


def assert_close(two, one, path: str = "") -> None:
  """JSON trees equal, floats to TOL (NaN equal to NaN)."""
  if isinstance(one, dict):
    assert isinstance(two, dict) and two.keys() == one.keys(), path
    for k in one:
      assert_close(two[k], one[k], f"{path}.{k}")
  elif isinstance(one, list):
    assert isinstance(two, list) and len(two) == len(one), path
    for i, (a, b) in enumerate(zip(two, one)):
      assert_close(a, b, f"{path}[{i}]")
  elif isinstance(one, float):
    np.testing.assert_allclose(two, one, rtol=TOL, atol=TOL, err_msg=path)
  else:
    assert two == one, path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _data_flags(paths) -> list[str]:
  return [f"--config={os.path.join(ROOT, 'configs', 'nsclc.py')}:tiny",
          f"--config.data.features_dir={paths['features_dir']}",
          f"--config.data.expression={paths['expression']}",
          f"--config.data.labels={paths['labels']}"]


def _train_flags(paths, workdir) -> list[str]:
  return [*_data_flags(paths), f"--workdir={workdir}", "--config.report.tsne=False",
          "--config.report.heatmaps=0", "--config.gene_pretrain.batch_size=1",
          "--config.gene_pretrain.epochs=1", "--config.finetune.epochs=1",
          "--config.pretrain.batch_size=2", "--config.pretrain.checkpoint_every=2"]


def _start(module: str, args: list[str], processes: int) -> list[subprocess.Popen]:
  """`python -m module args` as one process over two devices, or as two processes (one device
  each) connected through a coordinator on localhost."""
  if processes == 1:
    return [subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(2),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  job = [f"--config.parallel.coordinator_address=localhost:{_free_port()}",
         "--config.parallel.num_processes=2"]
  return [subprocess.Popen([sys.executable, "-m", module, *args, *job,
                            f"--config.parallel.process_id={i}"], cwd=ROOT, env=_env(1),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def _finish(procs: list[subprocess.Popen]) -> None:
  for i, p in enumerate(procs):
    try:
      _, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, f"process {i}: {err[-3000:]}"


def _logged(workdir: str, stage: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum(json.loads(line)["stage"] == stage for line in f.read().split("\n")[:-1])


def _kill_after(procs: list[subprocess.Popen], workdir: str, stage: str, steps: int) -> None:
  """SIGKILLs every process of the job once `stage` has logged `steps` steps."""
  deadline = time.time() + TIMEOUT
  while _logged(workdir, stage) < steps:
    if any(p.poll() is not None for p in procs) or time.time() > deadline:
      for p in procs:
        p.kill()
      raise AssertionError(f"no {stage} step {steps}: {procs[0].communicate()[1][-3000:]}")
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
  """The same training and prediction as one process over two devices and as a two-process
  job (killed in pre-training, then resumed); the reference runs beside the job."""
  base = tmp_path_factory.mktemp("multiprocess")
  # 12 patients (7 train: pre-training 3 steps of 2 windows per epoch); bags of at most
  # 2 x 60 patches: every bag in the tiny config's one bucket (128).
  paths = synthetic.make_cohort(str(base / "in"), patients=12, genes=96, min_patches=40,
                                max_patches=60, feature_dim=32, seed=0)
  one, two = str(base / "one"), str(base / "two")
  started = []
  try:
    started += _start("gimp_jax.main", _train_flags(paths, one), 1)
    started += _start("gimp_jax.main", _train_flags(paths, two), 2)
    _kill_after(started[1:], two, "pretrain", 3)
    killed_at = saved_steps(two, "pretrain")
    started += _start("gimp_jax.main", _train_flags(paths, two), 2)
    _finish(started[3:])
    _finish(started[:1])
    predict = lambda workdir, n: _start("gimp_jax.predict", [
        *_data_flags(paths), f"--workdir={workdir}", f"--out={workdir}.csv"], n)
    started += predict(one, 1) + predict(two, 2)
    _finish(started[5:])
  finally:
    for p in started:  # none left behind by a failure
      if p.poll() is None:
        p.kill()
        p.wait()
  return {"one": one, "two": two, "killed_at": killed_at}


def test_the_kill_left_a_partial_pretraining_stage(jobs):
  assert jobs["killed_at"] and jobs["killed_at"][-1] < saved_steps(jobs["one"], "pretrain")[-1]


def test_resumed_job_writes_the_files_of_one_process(jobs):
  """The killed and resumed job leaves the workdir one process leaves: no
  provenance.previous-<k>.json for the new coordinator port of the resumed job, and nothing of a
  process other than 0."""
  assert sorted(os.listdir(jobs["two"])) == sorted(os.listdir(jobs["one"]))


def test_results_equal_one_process(jobs):
  """results.json of the job equals one process's (timings and the job's own fields aside)."""
  results = {}
  for name in ("one", "two"):
    with open(os.path.join(jobs[name], "results.json"), encoding="utf-8") as f:
      results[name] = json.load(f)
    results[name].pop("report")
    results[name]["config"].pop("parallel")
    results[name]["reference"].pop("wall_s")
    for stage in results[name]["stages"].values():
      for timing in ("wall_s", "median_step_s", "median_patches_per_s"):
        stage.pop(timing, None)
  assert "test_auc" in results["one"] and set(results["one"]["stages"]) == {
      "gene_pretrain", "pretrain", "finetune"}
  assert_close(results["two"], results["one"])


@pytest.mark.parametrize("stage", STAGES)
def test_checkpoints_equal_one_process(jobs, stage):
  assert_checkpoints_match(jobs["two"], jobs["one"], stage, TOL, LEARNING_RATE)


def test_predictions_equal_one_process(jobs):
  rows = {}
  for name in ("one", "two"):
    with open(f"{jobs[name]}.csv", encoding="utf-8") as f:
      rows[name] = list(csv.DictReader(f))
  assert [r["patient_id"] for r in rows["two"]] == [r["patient_id"] for r in rows["one"]]
  probs = {name: np.array([[float(v) for k, v in r.items() if k.startswith("prob_")]
                           for r in rows[name]]) for name in rows}
  assert probs["one"].shape == (12, 2)
  np.testing.assert_allclose(probs["two"], probs["one"], rtol=TOL, atol=TOL)


def test_one_lock_holder_per_job(jobs):
  """The job's lock was released (process 0 held it), and metrics.jsonl has one record per step
  (resumed steps are not written twice, and process 1 wrote none)."""
  assert not os.path.exists(os.path.join(jobs["two"], "run.lock"))
  with open(os.path.join(jobs["two"], "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  seen = [(r["stage"], r["step"]) for r in records]
  assert len(seen) == len(set(seen)), seen
  assert max(step for stage, step in seen if stage == "pretrain") == saved_steps(
      jobs["one"], "pretrain")[-1]
