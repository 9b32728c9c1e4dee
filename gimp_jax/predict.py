"""Predictions of a trained run on new patients.

python -m gimp_jax.predict --workdir=runs/nsclc --config=configs/nsclc.py --out=predictions.csv \
    --config.data.labels=new/labels.csv --config.data.features_dir=new/features \
    --config.data.expression=new/expression.tsv

Uses the best fine-tuned checkpoint of `--workdir` and the gene list stored with it
(`normalizer.npz`). The model's settings (feature width, size, buckets) and class names come from
the run (`config.json`, `provenance.json`), whatever `--config` says: `--config` (any config file,
e.g. the one above for a `:tiny` run) only says where the new inputs are and how to read them
(`INPUT_FIELDS`; an input it leaves out is absent, never the run's own). The labels CSV needs
`patient_id,slide_id`; a `label` column is optional (when present it must use the run's classes).
It may name a few patients of a shared features folder: the folder's other `.h5` files are
ignored (their number is logged).

Every input is checked first, as `gimp_jax.validate` does: an expression table that lacks genes of
the stored list, feature files of another width than the model's, or any other bad input is
refused with every problem on its own line and exit code 2.

Slide-only patients (no expression column, or no table at all: `--config.data.expression=`) are
predicted from the slide alone when the model can:
a slide-only model, or a multimodal one fine-tuned with modality dropout (`model.modality_dropout` >
0, its learned missing-genes token stands for the expression); a multimodal model without one
refuses them, naming each patient.

Output CSV: patient_id, label_name (empty when unknown), predicted, predicted_name, modality (what
the prediction used: "slide+genes" or "slide"), prob_<class>; then, when the run's test stage kept
its linear reference (`linear_reference.npz`, `gimp_jax.stacking`), stacked_predicted_name and
stacked_prob_<class>: the model blended with the penalised linear model on mean-pooled features +
expression, with the weight the run chose on validation (empty for slide-only patients).

A survival run (`task = "survival"`) predicts outcomes, not classes: the labels CSV needs
`case_id`/`patient_id` and `slide_id` (outcome columns, when present, are copied to the output;
any `label` column is ignored), and the CSV holds patient_id, time and censorship (the known
outcome, empty when unknown), modality, risk (the ranking score the run's C-index uses: -sum_j S_j
for the NLL-surv head, the log relative risk for Cox) and, for the NLL-surv head, per time bin of
the run (named by its range in the labels' time unit, e.g. `12.3-25`): hazard_<bin> = P(event in
the bin | no event before it) and survival_<bin> = S_j = P(no event up to the end of the bin);
then stacked_risk (the blend of the model's and the linear Cox model's risks, each standardised on
the run's validation cases) where the run kept its linear fit.
"""

import csv
import json
import os
import tempfile
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from gimp_jax import atomic
from gimp_jax import cli
from gimp_jax import parallel
from gimp_jax import preflight
from gimp_jax import provenance
from gimp_jax import reference
from gimp_jax import stacking
from gimp_jax import workdir as workdir_lib
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import labels as labels_lib
from gimp_jax.data import survival as survival_data
from gimp_jax.errors import DataError
from gimp_jax.objectives import survival
from gimp_jax.report import slides
from gimp_jax.train import evaluate
from gimp_jax.train import partial
from gimp_jax.train import run as run_lib
from gimp_jax.train.state import create_state, restore_params

# config.data fields that say where the new inputs are (empty when `--config` leaves them out:
# never the trained run's own inputs) and how to read them; all other settings (feature_dim,
# num_genes, gene handling, buckets, model, classes) are the trained run's, whatever `--config` says.
INPUT_PATHS = ("labels", "features_dir", "expression", "tfds_dir", "manifest")
INPUT_FIELDS = INPUT_PATHS + ("source", "value_column", "preferred_sample_types",
                              "drop_incomplete")


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
  """The trained run's config and class names (index order); DataError when they are missing."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: cannot read the trained run's config ({e}); is {workdir} a "
                    "gimp_jax workdir?") from e
  if not (isinstance(raw, dict) and all(isinstance(raw.get(k), dict) for k in ("data", "model"))
          and isinstance(raw.get("method"), str)):
    raise DataError(f"{path}: not a gimp_jax config (method, data and model expected)")
  record = provenance.load(workdir) or {}
  names = record.get("cohort")
  names = names.get("class_names") if isinstance(names, dict) else None
  if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
    raise DataError(f"{os.path.join(workdir, provenance.FILENAME)}: cohort.class_names: missing "
                    "or malformed; the run's class names are unknown")
  return ml_collections.ConfigDict(raw), tuple(names)


def merge_config(trained: ml_collections.ConfigDict, given: ml_collections.ConfigDict,
                 class_names: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The trained run's config with the input fields of `given.data`, the run's classes (a survival
  run's time bins), no split files, and evaluation one patient at a time."""
  d = trained.to_dict()
  d["data"].update({name: "" for name in INPUT_PATHS})
  d["data"].update({name: given.data[name] for name in INPUT_FIELDS
                    if name in given.data and given.data[name] is not None})
  d["data"]["class_names"] = list(class_names)
  d["data"].update(splits_dir="", num_folds=0)  # the run's split files name its own cases
  # One bag per batch: the Nystrom pseudo-inverse starts from a batch-wide scale (as the PyTorch
  # package), so a patient's probabilities would otherwise depend on the bags batched with it.
  d["finetune"]["batch_size"] = 1
  return ml_collections.ConfigDict(d)


def _labels_csv(path: str, placeholder: str, tmpdir: str, ignore_labels: bool = False
                ) -> tuple[str, bool]:
  """(labels CSV to load, whether it has labels): unlabelled patients (every patient with
  `ignore_labels`) get a placeholder label."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error):
    return path, True  # the cohort loader reports it
  names = [h.strip().lower() for h in rows[0]] if rows else []
  if not rows or "label" in names and not ignore_labels:
    return path, True
  keep = [j for j, h in enumerate(names) if h != "label"]
  copy = os.path.join(tmpdir, "labels.csv")
  with open(copy, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([[rows[0][j] for j in keep] + ["label"]] +
                            [[r[j] for j in keep if j < len(r)] + [placeholder] for r in rows[1:]])
  return copy, False


def _outcomes(path: str) -> dict[str, tuple[float, int]]:
  """patient -> (time, censorship 1 = censored) from a labels CSV with outcome columns, else {};
  DataError naming each bad time or indicator."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      header = next(csv.reader(f), [])
  except (OSError, UnicodeDecodeError, csv.Error):
    return {}  # the cohort loader reports it
  cols = [h.strip().lower() for h in header]
  if survival_data.outcome_columns(cols) is None:
    return {}
  return {r.patient_id: (r.time, r.censorship)
          for r in labels_lib.read_labels(path, "survival", allow_unlabelled=True)}


def check(workdir: str, given: ml_collections.ConfigDict, tmpdir: str
          ) -> tuple[ml_collections.ConfigDict, cohort_lib.Cohort, bool,
                     dict[str, tuple[float, int]]]:
  """Loads the new cohort against the trained run: (config, cohort, has labels, a survival run's
  known outcomes: patient -> (time, censorship), `_outcomes`), or DataError
  listing every problem (missing genes, feature width, bad inputs). A survival run's cohort is
  loaded without outcomes (no time bins are fitted on new patients)."""
  trained, class_names = load_run(workdir)
  normalizer, stored = workdir_lib.stored_normalizer(workdir, trained.get("init_from", ""))
  if normalizer is None or stored != os.path.join(workdir, workdir_lib.NORMALIZER):
    raise DataError(f"{workdir}: no {workdir_lib.NORMALIZER}: the gene list of the model is "
                    "unknown")
  config = merge_config(trained, given, class_names)
  width = int(trained.data.feature_dim)
  problems = []
  config.data.allow_missing = True  # slide-only patients: refused below only if the model needs genes
  surv = config.get("task", "classification") == "survival"
  # The cohort's rows are loaded as a classification cohort (a survival run's outcomes are read
  # apart, `_outcomes`), from a labels CSV given a placeholder label where it has none.
  loader = ml_collections.ConfigDict(config.to_dict())
  loader.task = "classification"
  loader.data.listed_only = True  # a shared features folder: the listed patients only
  loader.data.labels, labelled = _labels_csv(config.data.labels, class_names[0], tmpdir,
                                             ignore_labels=surv)
  cohort, found = preflight.load_cohort(cohort_lib.CohortSpec.from_config(loader), loader.data,
                                        normalizer, stored)
  problems += [p.replace(loader.data.labels, config.data.labels) for p in found]
  known = {}
  if surv:
    try:
      known = _outcomes(config.data.labels)
    except DataError as e:
      problems += str(e).split("\n")
  if any("features: width" in p for p in found):
    problems.append(f"{workdir}: the model was trained on features of width {width}")
  if problems:
    raise DataError("\n".join(problems))
  return config, cohort, labelled, known


def predict(workdir: str, given: ml_collections.ConfigDict, attention_dir: str = ""
            ) -> dict[str, Any]:
  """Predictions of the best fine-tuned model of `workdir` on the cohort of `given.data`; with
  `attention_dir`, also every slide's attention (`report.slides.write_attention`).

  Returns:
    patient_id [N], label [N] (-1 when unknown), probs [N, C] float32, modality [N], class_names
    [C]; for a survival run instead of label and probs: risk [N], hazards and survival [N, k] (NLL-
    surv head; None for Cox), time [N] (NaN when unknown) and censorship [N] (-1 when unknown), and
    the class names are the time bins.
  """
  with tempfile.TemporaryDirectory() as tmpdir:
    config, cohort, labelled, known = check(workdir, given, tmpdir)
  run = run_lib.Run(config, workdir, cohort)  # reads only
  model = run.build()
  params = restore_params(workdir, evaluate.BEST, model)
  if params is None:
    raise DataError(f"{os.path.join(workdir, 'checkpoints', evaluate.BEST)}: no fine-tuned "
                    "checkpoint; run the finetune stage first")
  genes = partial.has_genes(cohort)
  if partial.needs_genes(model) and not genes.all():
    table = config.data.expression or "data.expression (none given)"
    raise DataError("\n".join(
        f"{table}: patient {cohort.patients[i].patient_id}: no expression, and the "
        f"model in {workdir} needs it (fine-tuned without model.modality_dropout): it cannot "
        "predict from the slide alone" for i in np.flatnonzero(~genes)))
  logging.info("predict: %d patients (%d slide-only), model of %s", len(cohort.patients),
               int((~genes).sum()), workdir)
  state = create_state(model).replace(params=params)
  out = evaluate.predict(run, state, "all")
  if attention_dir:
    slides.write_attention(attention_dir, state.model(train=False), cohort,
                           given.data.get("slides_dir", ""), method=config.method,
                           bucket_sizes=config.data.bucket_sizes,
                           report_cfg=config.get("report", {}))
  labels = out["label"] if labelled else np.full(len(out["patient_id"]), -1)
  uses_genes = getattr(model, "gene_encoder", None) is not None
  modality = np.where(genes & uses_genes, "slide+genes", "slide")
  result = {"patient_id": out["patient_id"], "modality": modality,
            "class_names": cohort.class_names}
  is_survival = config.get("task", "classification") == "survival"
  risk = survival.risk(out["logits"], config.survival.loss) if is_survival else None
  result["stacked"] = _stacked(workdir, cohort, out["patient_id"],
                               risk if is_survival else out["probs"], genes, params)
  if not is_survival:
    return dict(result, label=labels, probs=out["probs"])
  hazards = surv = None
  if config.survival.loss == "nll":
    hazards, surv = survival.hazards_and_survival(out["logits"])
  return dict(result, risk=risk, hazards=hazards, survival=surv,
              time=np.asarray([known.get(p, (np.nan, -1))[0] for p in out["patient_id"]]),
              censorship=np.asarray([known.get(p, (np.nan, -1))[1] for p in out["patient_id"]]))


def _stacked(workdir: str, cohort: cohort_lib.Cohort, patient_ids: np.ndarray,
             model: np.ndarray, genes: np.ndarray, params) -> np.ndarray | None:
  """The model blended with the run's linear reference (`gimp_jax.stacking`, w chosen on the
  run's validation split) for the patients with expression; NaN rows for slide-only patients
  (the linear model needs both inputs). None, with a warning, when the workdir keeps no linear
  fit (a run made before it did, or without a test stage) or keeps one chosen for other
  parameters than `params` (the fine-tuned model's: finetune rerun without the test stage).

  Args:
    model: the model's probabilities [N, C] or risks [N], rows in `patient_ids`' order.
    genes: [P] whether each patient of `cohort` has expression.

  Returns:
    stacked probabilities [N, C] or standardised risks [N].
  """
  path = os.path.join(workdir, stacking.FILE)
  if not os.path.exists(path):
    logging.info("predict: no %s in %s; no stacked predictions", stacking.FILE, workdir)
    return None
  if stacking.kept_for(path) != stacking.fingerprint(params):
    logging.warning("predict: %s was kept for other fine-tuned parameters than %s's (finetune "
                    "rerun after the test stage?); no stacked predictions: rerun the test stage",
                    path, evaluate.BEST)
    return None
  index = {p.patient_id: i for i, p in enumerate(cohort.patients)}
  rows = np.array([index[str(p)] for p in patient_ids], np.int64)
  x = reference.inputs(cohort, reference.mean_pooled(cohort))[reference.MAIN][rows]
  stacked, w = stacking.apply(path, model, x)
  logging.info("predict: stacked with the linear reference, w = %.2f (its share)", w)
  return np.where(genes[rows].reshape((-1,) + (1,) * (stacked.ndim - 1)), stacked, np.nan)


def _rows(result: dict[str, Any]) -> list[list]:
  """The CSV's header and rows (module docstring): classes, or a survival run's risks; then the
  stacked columns when the run kept its linear fit (empty for slide-only patients)."""
  names = result["class_names"]
  stacked = result.get("stacked")
  if "risk" not in result:
    rows = [["patient_id", "label_name", "predicted", "predicted_name", "modality"] +
            [f"prob_{n}" for n in names] +
            (["stacked_predicted_name"] + [f"stacked_prob_{n}" for n in names]
             if stacked is not None else [])]
    for i, (pid, y, m, p) in enumerate(zip(result["patient_id"], result["label"],
                                           result["modality"], result["probs"])):
      k = int(np.argmax(p))
      rows.append([pid, names[y] if y >= 0 else "", k, names[k], m] + [f"{v:.9g}" for v in p] +
                  ([] if stacked is None else
                   [""] * (len(names) + 1) if np.isnan(stacked[i]).any() else
                   [names[int(np.argmax(stacked[i]))]] + [f"{v:.9g}" for v in stacked[i]]))
    return rows
  per_bin = result["hazards"] is not None
  rows = [["patient_id", "time", "censorship", "modality", "risk"] +
          ([f"hazard_{n}" for n in names] + [f"survival_{n}" for n in names] if per_bin else []) +
          (["stacked_risk"] if stacked is not None else [])]
  for i, pid in enumerate(result["patient_id"]):
    t, c = result["time"][i], result["censorship"][i]
    rows.append([pid, f"{t:.9g}" if np.isfinite(t) else "", int(c) if c >= 0 else "",
                 result["modality"][i], f"{result['risk'][i]:.9g}"] +
                ([f"{v:.9g}" for v in (*result["hazards"][i], *result["survival"][i])]
                 if per_bin else []) +
                ([] if stacked is None else
                 [f"{stacked[i]:.9g}" if np.isfinite(stacked[i]) else ""]))
  return rows


def write_csv(path: str, result: dict[str, Any]) -> None:
  """One row per patient (module docstring): ID, known label, predicted class (index and name), the
  modality the prediction used, P(class); or a survival run's risk and per-bin hazards and
  survival. Written through a temporary file and a rename (`gimp_jax.atomic`: a full disk leaves
  no half file; a path that is not a regular file is refused)."""
  atomic.write(path, lambda f: csv.writer(f).writerows(_rows(result)), newline="")


def _inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or under it (both resolved)."""
  return os.path.commonpath([path, folder]) == folder


def prepare_out(path: str, workdir: str, given: ml_collections.ConfigDict) -> None:
  """Creates the folder of the output CSV before any inference; DataError when it cannot be, or
  when `path` is not ours to replace: not a regular file (`atomic.problem`), an input of `given`
  (labels CSV, expression table, manifest, a file under the features or TFDS folder) or a file of
  the trained run's `workdir`."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise DataError(f"{path}: --out: cannot create the folder {folder} ({e.strerror or e})") from e
  if os.path.isdir(path):
    raise DataError(f"{path}: --out: is a folder; give the CSV file to write")
  why = atomic.problem(path)
  if why:
    raise DataError(f"--out: {why}")
  refuse_over_inputs(path, "--out", workdir, given)


def refuse_over_inputs(path: str, flag: str, workdir: str,
                       given: ml_collections.ConfigDict) -> None:
  """DataError when `path` (what `flag` names) is or lies in an input of `given` (labels CSV,
  expression table, manifest, features or TFDS folder) or in the trained run's `workdir`."""
  real = os.path.realpath(path)
  data = given.data
  for field in ("labels", "expression", "manifest", "features_dir", "tfds_dir", None):
    where = data.get(field, "") if field else workdir
    if where and _inside(real, os.path.realpath(where)):
      what = f"the input data.{field}" if field else "the trained run's workdir"
      raise DataError(f"{path}: {flag}: is {'in ' if real != os.path.realpath(where) else ''}"
                      f"{what} ({where}); write the predictions elsewhere")


def main(argv) -> None:
  del argv
  logging.get_absl_handler().addFilter(cli.quiet_libraries)  # as gimp_jax.main: no orbax chatter
  try:
    parallel.initialize_distributed(flags.FLAGS.config.get("parallel"))  # no-op for one process
    prepare_out(flags.FLAGS.out, flags.FLAGS.workdir, flags.FLAGS.config)
    if flags.FLAGS.attention:
      refuse_over_inputs(flags.FLAGS.attention, "--attention", flags.FLAGS.workdir,
                         flags.FLAGS.config)
    result = predict(flags.FLAGS.workdir, flags.FLAGS.config, flags.FLAGS.attention)
    if jax.process_index() == 0:  # of a job of several processes, process 0 writes
      write_csv(flags.FLAGS.out, result)
  except Exception as e:  # pylint: disable=broad-except
    if cli.exit_code(e) is None:
      raise
    cli.fail("gimp_jax.predict", cli.message(e, flags.FLAGS.out), cli.exit_code(e))
  print(f"gimp_jax.predict: {len(result['patient_id'])} patients -> {flags.FLAGS.out}")


if __name__ == "__main__":  # flags only here, as in gimp_jax.validate
  config_flags.DEFINE_config_file("config", None, "Config naming the new inputs (config.data).",
                                  lock_config=False)
  flags.DEFINE_string("workdir", None, "Workdir of the trained run.")
  flags.DEFINE_string("out", "predictions.csv", "Output CSV.")
  flags.DEFINE_string("attention", "", "Folder for every slide's attention: heatmap PNG, scores "
                      "CSV and QuPath GeoJSON (on the slide with --config.data.slides_dir).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=cli.flags_parser("gimp_jax.predict"))
