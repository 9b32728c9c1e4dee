"""The command lines' first answers: config mistakes are one line and exit 2 before
anything runs, `--help` exits 0, a full disk is one line and exit 4 with nothing half-written."""

import errno
import logging
import os

import pytest

from conftest import TINY, run_module
from gimp_jax import cli
from gimp_jax import errors
from gimp_jax.configs import checks
from gimp_jax.data import synthetic

CONFIG = TINY


def errors_of(proc):
  """stderr without absl's log lines."""
  return [x for x in proc.stderr.splitlines() if x and x[0] not in "IWE" or "error:" in x]


def test_help_exits_0():
  proc = run_module("gimp_jax.main", "--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--workdir" in proc.stdout and "--allow_config_change" in proc.stdout


@pytest.mark.parametrize("args,expected", [
    (["--config.pretrain.windoww=5"],
     ["gimp_jax: error: --config.pretrain.windoww=5: unknown config field 'windoww' (did you mean "
      "'window'?)"]),
    (["--config.gene_pretrain.batch_size=0", "--config.pretrain.window=0",
      "--config.pretrain.mask_ratio=1.5", "--config.stages=('pretrain','pretrain_x')"],
     ["gimp_jax: error: config: stages: ('pretrain', 'pretrain_x'): unknown stage(s) 'pretrain_x'; "
      f"known: {', '.join(checks.STAGES)}",
      "config: gene_pretrain.batch_size: 0, expected an integer >= 1",
      "config: pretrain.window: 0, expected an integer >= 1",
      "config: pretrain.mask_ratio: 1.5, expected a number > 0 and < 1",
      "{tmp}/absent.csv: labels file not found"]),  # data problems come with them
    (["--config.pretrain.window=abc"],
     ["gimp_jax: error: flag --config.pretrain.window=abc: invalid literal for int() with base "
      "10: 'abc'"]),
])
def test_config_mistakes_are_one_line_each_and_exit_2_before_anything_runs(tmp_path, args,
                                                                            expected):
  workdir = tmp_path / "run"
  proc = run_module("gimp_jax.main", CONFIG, f"--workdir={workdir}",
                    f"--config.data.labels={tmp_path / 'absent.csv'}", *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert errors_of(proc) == [x.replace("{tmp}", str(tmp_path)) for x in expected]
  assert not workdir.exists()  # nothing ran, not even the workdir's creation


def test_validate_and_predict_report_config_mistakes_the_same_way(tmp_path):
  for module in ("gimp_jax.validate", "gimp_jax.predict"):
    proc = run_module(module, CONFIG, f"--workdir={tmp_path}", "--config.model.dimm=3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors_of(proc) == [f"{module}: error: --config.model.dimm=3: unknown config field "
                               "'dimm' (did you mean 'dim'?)"]


def test_a_full_disk_is_one_line_exit_4_and_leaves_nothing_half_written(tmp_path):
  """metrics.jsonl is /dev/full: the kernel answers its first write with ENOSPC, as a full disk."""
  paths = synthetic.make_cohort(str(tmp_path / "in"), patients=20, genes=96, min_patches=40,
                                max_patches=90, feature_dim=32, seed=0)
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink("/dev/full", workdir / "metrics.jsonl")
  proc = run_module("gimp_jax.main", CONFIG, f"--workdir={workdir}",
                    f"--config.data.features_dir={paths['features_dir']}",
                    f"--config.data.expression={paths['expression']}",
                    f"--config.data.labels={paths['labels']}", "--config.stages=('pretrain',)")
  assert proc.returncode == cli.EXIT_DISK_FULL == 4, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert errors_of(proc) == [f"gimp_jax: error: {workdir}: disk full (No space left on device); "
                             "nothing half-written was kept: free some space and run the same "
                             "command again to resume"]
  left = [os.path.join(r, n) for r, ds, ns in os.walk(workdir) for n in ns + ds]
  assert not [p for p in left if ".tmp" in p or "tmp-" in p], left
  assert not (workdir / "results.json").exists()
  assert not (workdir / "run.lock").exists()


def test_disk_full_is_found_through_wrapping_errors():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/w/x.json")
    except OSError as e:
      raise ValueError("tensorstore write failed") from e
  except ValueError as wrapped:
    assert errors.disk_full(wrapped) and cli.exit_code(wrapped) == cli.EXIT_DISK_FULL
    assert cli.message(wrapped).startswith("/w/x.json: disk full")
  text_only = RuntimeError("OUT_OF_RANGE: Error writing: No space left on device [errno=28]")
  assert errors.disk_full(text_only)
  assert not errors.disk_full(OSError(errno.EACCES, "Permission denied"))
  assert cli.exit_code(errors.DataError("x")) == 2 and cli.exit_code(KeyError()) is None


def test_library_info_lines_a_user_cannot_act_on_are_dropped():
  def record(name, level, path="/x/y.py"):
    return logging.LogRecord(name, level, path, 1, "msg", None, None)
  tpu = record("jax._src.xla_bridge", logging.INFO)
  assert not cli.quiet_libraries(tpu)
  assert cli.quiet_libraries(record("jax._src.xla_bridge", logging.WARNING))
  assert not cli.quiet_libraries(record("absl", logging.INFO, "/site/orbax/checkpoint/x.py"))
  assert cli.quiet_libraries(record("absl", logging.INFO, "/gimp_jax/train/run.py"))
