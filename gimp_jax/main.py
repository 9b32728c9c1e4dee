"""Command line: python -m gimp_jax.main --config=configs/nsclc.py --workdir=runs/nsclc

Any config field can be overridden: --config.data.labels=labels.csv --config.pretrain.epochs=10.
With data.num_folds=k or data.splits_dir (and data.fold=-1, the default) every fold runs in
WORKDIR/fold_<i> and WORKDIR/summary.csv holds the mean and std over folds (train/folds.py).
Exit codes (gimp_jax.cli): 0 done; 2 bad input or config (every problem one line, naming file,
patient and field; nothing trained), or another run holds the workdir, or the config differs from
the one the workdir was made with (--allow_config_change goes on with it); 3 a NaN/Inf loss
stopped training (the last good checkpoint is kept); 4 disk full; 128 + signal number (130 SIGINT,
143 SIGTERM) after a checkpoint was saved on request. The same command resumes.
"""

import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gimp_jax import cli
from gimp_jax import parallel
from gimp_jax.train import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and report.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Go on in a workdir made with another config: finished stages "
    "are kept, the others run with this config (results.json lists the changes).")
flags.mark_flags_as_required(["config", "workdir"])


class _StopFlag:
  """Set by SIGTERM/SIGINT: the running stage saves a checkpoint and the program exits."""

  def __init__(self):
    self.requested = False
    self.signum = signal.SIGINT

  def __call__(self, signum, _):
    if self.requested:  # a second signal: stop at once
      raise KeyboardInterrupt
    self.requested = True
    self.signum = signum
    logging.warning("Stop requested: saving a checkpoint after the current step.")


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(cli.quiet_libraries)
  stop = _StopFlag()
  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, stop)
  parallel.initialize_distributed(_CONFIG.value.get("parallel"))  # no-op for one process
  try:
    results = run.train_and_evaluate(_CONFIG.value, _WORKDIR.value, stop=lambda: stop.requested,
                                     allow_config_change=_ALLOW_CHANGE.value)
  except KeyboardInterrupt:
    print("gimp_jax: stopped; run the same command again to resume.", file=sys.stderr)
    sys.exit(128 + int(stop.signum))
  except Exception as e:  # pylint: disable=broad-except
    if cli.exit_code(e) is None:
      raise
    cli.fail("gimp_jax", cli.message(e, _WORKDIR.value), cli.exit_code(e))
  keys = ("test_accuracy", "test_auc", "test_f1", "val_accuracy", "test_c_index", "val_c_index")
  keys += tuple(f"{p}{k}" for p in ("reference_", "vs_reference_", "stack_") for k in keys)
  keys += ("stack_weight",)
  print(" ".join(f"{k}={results[k]:.4f}" for k in keys if k in results))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("gimp_jax"))
