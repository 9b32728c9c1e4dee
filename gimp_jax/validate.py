"""Checks every input of a run before anything is trained.

python -m gimp_jax.validate --config=configs/nsclc.py [--workdir=runs/nsclc] [--config.data.x=...]

Prints every problem on its own line, naming the file, the patient or slide and the field, then
exits with code 2 (no traceback); or prints a one-line summary and exits 0. The checks are
`gimp_jax.preflight.check`, the same that `train_and_evaluate` runs first, so a run never starts
on inputs that fail them.
"""

import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from gimp_jax import cli
from gimp_jax import methods
from gimp_jax import preflight
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import labels as labels_lib
from gimp_jax.train import partial


def summary(config: ml_collections.ConfigDict, cohort: cohort_lib.Cohort) -> str:
  """One line describing a clean cohort."""
  splits = ", ".join(f"{k} {v.size}" for k, v in cohort.splits.items())
  slides = sum(len(p.slide_ids) for p in cohort.patients)
  dropped = ""
  if config.data.get("source", "h5") != "tfds":
    listed = {r.patient_id for r in labels_lib.read_labels(
        config.data.labels, config.get("task", "classification"),
        config.data.get("allow_missing", False))}
    if len(listed) > len(cohort.patients):
      dropped = f" ({len(listed) - len(cohort.patients)} dropped: drop_incomplete)"
  return (f"{len(cohort.patients)} patients{dropped} ({splits}), {slides} slides, "
          f"{cohort.num_classes} classes, {cohort.num_genes} genes, feature width "
          f"{cohort.feature_dim}: no problems found")


def main(argv) -> None:
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  cohort, problems = preflight.check(config, workdir)
  if problems:
    for line in problems:
      print(line, file=sys.stderr)
    print(f"gimp_jax.validate: {len(problems)} problem(s)", file=sys.stderr)
    sys.exit(2)
  print(f"gimp_jax.validate: {summary(config, cohort)}")
  if config.data.get("allow_missing", False):
    uses = partial.method_uses(methods.get(config.method),
                               preflight.abstract_model(config, cohort))
    print(partial.usage_table(cohort, config.stages, **uses))


if __name__ == "__main__":  # flags only here: the module is imported by tests
  config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "The run's workdir (optional): write access, disk room, "
                      "and its stored gene list are checked too.")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.flags_parser("gimp_jax.validate"))
