"""`python -m experiments.tables --task survival`: every method as a survival model, C-index per
fold and mean ± std over folds, with elastic-net Cox reference rows on the same folds and, on the
synthetic survival cohort, the Bayes-optimal C-index (Harrell's C of the generator's true log
hazard on each fold's test cases).

  python -m experiments.tables --task survival --out experiments/results/survival --folds 5 \
      --size tiny --workers 2

Each (method, fold) runs `run.train_and_evaluate` with `task = "survival"`, `data.num_folds = k`
and `data.fold = i` in `OUT/runs/<config>/fold_<i>/`; runs whose results.json exists are skipped
(resumable); a failed run is reported without stopping the others. Writes `OUT/tables.md` and
`OUT/summary.json`. Without data paths, a synthetic survival cohort is generated in `OUT/cohort`.
"""

import csv
import json
import os
import sys
import time

import numpy as np

from experiments import tables

LABELS = {r[3]: (r[0], r[1], r[2]) for r in tables.TABLE1}
LABELS.update({"snn": ("Genomic", "w/o pre-train", "SNN (Table 2 row 1)"),
               "agg_mpm": ("Pathology", "w/ pre-train", "Aggregator + MPM"),
               "agg_triplet_img": ("Pathology", "w/ pre-train", "Aggregator + triplet (img)"),
               "agg_groupmsa_triplet": ("Pathology & Genomic", "w/ pre-train",
                                        "Aggregator + GroupMSA + triplet")})


def run_dir(out: str, name: str, fold: int) -> str:
  return os.path.join(out, "runs", name, f"fold_{fold}")


def bayes_optimal(config, truth_csv: str) -> dict:
  """Harrell's C of the generator's true log hazard on the fold's val and test cases."""
  from gimp_jax import metrics  # pylint: disable=g-import-not-at-top
  from gimp_jax.data import cohort as cohort_lib  # pylint: disable=g-import-not-at-top
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  with open(truth_csv, encoding="utf-8") as f:
    eta = {r["case_id"]: float(r["eta"]) for r in csv.DictReader(f)}
  risk = np.asarray([eta[p.patient_id] for p in cohort.patients])
  return {f"{split}_c_index": metrics.survival_metrics(
      cohort.times[idx], cohort.censorship[idx], risk[idx])["c_index"]
          for split in ("val", "test") for idx in [cohort.split(split)]}


def references(runs: dict, folds: list[int], out: str, truth: str | None) -> dict:
  """{fold: {"cox": reference.linear_rows, "bayes": bayes_optimal}}, cached per fold."""
  from experiments import reference  # pylint: disable=g-import-not-at-top
  rows, cache = {}, os.path.join(out, "reference")
  os.makedirs(cache, exist_ok=True)
  for fold in folds:
    config = next((c for (_, f), c in runs.items() if f == fold), None)
    path = os.path.join(cache, f"fold_{fold}.json")
    if config is not None and not os.path.exists(path):
      row = {"cox": reference.linear_rows(config, cache)}
      if truth:
        row["bayes"] = bayes_optimal(config, truth)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(row, f, indent=2, default=float)
      os.replace(path + ".tmp", path)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        rows[fold] = json.load(f)
  return rows


def _cells(values: list) -> tuple[str, str]:
  """(per-fold values, 'mean ± std')."""
  per = ", ".join("—" if v is None else f"{v:.3f}" for v in values)
  return per, tables.cell([v for v in values if v is not None], 0, digits=3)


def markdown(names, folds, outcomes, refs, header) -> str:
  lines = [header, "", "## C-index (test fold), per fold and mean ± std over folds", "",
           "| Modality | Pre-train | Method | config | per fold | mean ± std | val mean ± std |",
           "|---|---|---|---|---|---|---|"]
  for name in names:
    modality, pre, label = LABELS.get(name, ("", "", name))
    got = [outcomes.get((name, f), {}) for f in folds]
    per, mean = _cells([g.get("test_c_index") if g.get("ok") else None for g in got])
    _, val = _cells([g.get("val_c_index") if g.get("ok") else None for g in got])
    lines.append(f"| {modality} | {pre} | {label} | `{name}` | {per} | {mean} | {val} |")
  for key, modality, _ in tables.REFERENCE:
    got = [refs.get(f, {}).get("cox", {}).get(key, {}) for f in folds]
    per, mean = _cells([g.get("test_c_index") for g in got])
    _, val = _cells([g.get("val_c_index") for g in got])
    lines.append(f"| {modality} | reference | Elastic-net Cox, {key} | — | {per} | {mean} | {val} |")
  if any("bayes" in refs.get(f, {}) for f in folds):
    got = [refs.get(f, {}).get("bayes", {}) for f in folds]
    per, mean = _cells([g.get("test_c_index") for g in got])
    _, val = _cells([g.get("val_c_index") for g in got])
    lines.append(f"| both | oracle | Bayes-optimal (true log hazard) | — | {per} | {mean} | {val} |")
  failures = [(k, o) for k, o in sorted(outcomes.items()) if not o.get("ok")]
  if failures:
    lines += ["", "## Runs without a result (failed, or not run yet)", ""]
    lines += [f"- `{n}` fold {f}: {o.get('error')}" for (n, f), o in failures]
  return "\n".join(lines) + "\n"


def cohort_paths(args) -> tuple[dict, str | None]:
  """The user's inputs, or a synthetic survival cohort in OUT/cohort (and its truth file)."""
  if args.labels:
    return tables.cohort_paths(args), None
  args.synthetic = ["--synthetic.survival=True"] + args.synthetic
  paths = tables.cohort_paths(args)
  return paths, os.path.join(args.out, "cohort", "survival_truth.csv")


def main(args, argv) -> None:
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  if args.workers > 1:
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")
  names = tables.method_names(args.methods)
  folds = list(range(args.folds))
  paths, truth = cohort_paths(args)
  overrides = ["--config.task=survival", f"--config.data.num_folds={args.folds}", *args.config]
  runs = {}
  for name in names:
    for fold in folds:
      runs[(name, fold)] = tables.make_config(name, args.size, 0, paths,
                                              overrides + [f"--config.data.fold={fold}"])
  outcomes = tables.run_all(runs, args.out, args.workers, args.report_only, where=run_dir,
                            read=tables.read_result, unit="fold")
  refs = {} if args.no_reference else references(runs, folds, args.out, truth)
  cmd = " ".join(["python -m experiments.tables", *(argv if argv is not None else sys.argv[1:])])
  header = (f"# Survival: C-index of every method over {args.folds} folds\n\nCommand: `{cmd}`  \n"
            f"Cohort: {args.labels or 'synthetic survival cohort in ' + args.out + '/cohort'}  \n"
            f"Config size: {args.size}; seed 0; the folds are `data.num_folds={args.folds}` "
            "(fold i = test, fold i + 1 = validation, stratified by censorship); Harrell's C "
            "(scikit-survival); mean ± sample std over folds.  \n"
            f"Wall time of this call: {(time.time() - start) / 60:.1f} min with {args.workers} "
            "worker(s).")
  text = markdown(names, folds, outcomes, refs, header)
  with open(os.path.join(args.out, "tables.md"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"command": cmd, "folds": folds, "size": args.size,
               "runs": [{"config": n, "fold": k, **o} for (n, k), o in sorted(outcomes.items())],
               "reference": refs}, f, indent=2, default=float)
  print(text, flush=True)
