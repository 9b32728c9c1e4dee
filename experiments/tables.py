"""Reruns the comparison of GiMP's Tables 1 and 2 on a cohort: methods x seeds, mean +- std.

Every run follows the paper's protocol through `gimp_jax.train.run.train_and_evaluate`: the
method's stages (supervised gene pre-training, pre-training on the training split, fine-tuning with
the best validation epoch kept, test). Without data paths a synthetic cohort is generated into
`OUT/cohort` (`gimp_jax.data.synthetic.make_cohort`); with `--features_dir --expression --labels`
the user's cohort is used.

  python -m experiments.tables --out experiments/results/synthetic --seeds 0,1,2 --workers 2
  python -m experiments.tables --out runs/nsclc --size paper --features_dir F --expression E \
      --labels L --methods table1
  python -m experiments.tables --out runs/short --config.finetune.epochs=3 --synthetic.patients=200

`--config.<field>=<value>` overrides a field of every run's config and `--synthetic.<field>=<value>`
a `SyntheticConfig` field of the generated cohort, both parsed by ml_collections as
`gimp_jax.main`'s `--config.` flags are.

Writes `OUT/runs/<config>/seed_<s>/` (checkpoints, metrics, results.json of each run),
`OUT/tables.md` (Markdown Tables 1 and 2) and `OUT/summary.json` (every run's numbers and every
failure). Runs whose results.json exists are skipped, so an interrupted call resumes; a config
that several rows name (Table 2's GroupMSA row and full model are Table 1's GiMP rows,
gimp_no_pretrain and gimp) runs once; a failed run is reported in the tables and the summary
without stopping the others.
"""

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import importlib
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback

from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from gimp_jax.data import synthetic

# (modality, pre-training, method as printed, config, paper accuracy) [GiMP Table 1]; "GiMP" is
# GiMP with the fine-tuning recipe chosen on validation (configs/nsclc.py RECIPE), "as published"
# the paper's.
TABLE1 = (
    ("Pathology", "w/o pre-train", "ABMIL", "abmil", 0.7737),
    ("Pathology", "w/o pre-train", "DSMIL", "dsmil", 0.7566),
    ("Pathology", "w/o pre-train", "CLAM-SB", "clam_sb", 0.8519),
    ("Pathology", "w/o pre-train", "CLAM-MB", "clam_mb", 0.8889),
    ("Pathology", "w/o pre-train", "TransMIL", "transmil", 0.8836),
    ("Pathology", "w/o pre-train", "GiMP (w/o GroupMSA)", "gimp_image_only", 0.8995),
    ("Pathology & Genomic", "w/o pre-train", "PORPOISE", "porpoise", 0.9524),
    ("Pathology & Genomic", "w/o pre-train", "Pathomic Fusion", "pathomic", 0.9684),
    ("Pathology & Genomic", "w/o pre-train", "MCAT", "mcat", 0.9632),
    ("Pathology & Genomic", "w/o pre-train", "GiMP, as published", "gimp_no_pretrain_published",
     0.9737),
    ("Pathology & Genomic", "w/o pre-train", "GiMP", "gimp_no_pretrain", 0.9737),
    ("Pathology & Genomic", "w/ pre-train", "MGCA", "mgca", 0.9105),
    ("Pathology & Genomic", "w/ pre-train", "BioViL (CLIP InfoNCE)", "biovil_clip", 0.9316),
    ("Pathology & Genomic", "w/ pre-train", "REFERS", "refers", 0.9368),
    ("Pathology & Genomic", "w/ pre-train", "Image-gene matching (ITM)", "itm", None),
    ("Pathology & Genomic", "w/ pre-train", "GiMP, as published", "gimp_published", 0.9947),
    ("Pathology & Genomic", "w/ pre-train", "GiMP", "gimp", 0.9947),
)
# (aggregator, gene encoder, triplet, MPM, config, paper accuracy) [GiMP Table 2]
TABLE2 = (
    ("✓", "SNN", "", "", "snn", 0.9684),
    ("✓", "✓", "", "", "gimp_no_pretrain", 0.9737),
    ("✓", "", "", "✓", "agg_mpm", 0.9579),
    ("✓", "", "✓", "", "agg_triplet_img", 0.9263),
    ("✓", "✓", "✓", "", "agg_groupmsa_triplet", 0.9526),
    ("✓", "✓", "✓", "✓", "gimp", 0.9974),
)
# Reference rows of Table 1 (experiments/reference.py): logistic regression, same splits.
REFERENCE = (("slide", "Pathology", "Logistic regression, mean-pooled features"),
             ("genes", "Genomic", "Logistic regression, expression"),
             ("both", "Pathology & Genomic", "Logistic regression, both"))
# Cohorts and the config fields they need. paper_scale: the paper's 946 patients (567/189/190
# with the 60/20/20 split), bags of 100 to 1,000 patches per slide (log-uniform), so that one test
# patient is 0.5 point instead of 4.2; buckets that fit those bags with little padding.
PRESETS = {
    "default": ([], []),
    "paper_scale": (["--synthetic.patients=946", "--synthetic.min_patches=100",
                     "--synthetic.max_patches=1000"],
                    ["--config.data.bucket_sizes=(512,1024,2048)"]),
    # The same cohort as survival data (`--task survival`): 946 cases, censoring at 2.5 x the
    # baseline hazard so that about a third of the cases have an event, TCGA-like (seed 0: 34% of
    # the 946; over 200,000 simulated cases 31%, and 36% at 2.0, 28% at 3.0); Bayes-optimal
    # C-index (the generator's eta) 0.735 over the 946, per fold in the table.
    # The rare-instance cohort (`synthetic.PRESETS["rare"]`: the class in 0.5-3% of 200-1,200
    # patches per slide), 300 patients, buckets for bags of up to 2 x 1,200 patches.
    "rare": ([f"--synthetic.{k}={v}" for k, v in synthetic.PRESETS["rare"].items()]
             + ["--synthetic.patients=300"],
             ["--config.data.bucket_sizes=(1024,2048,3072)"]),
    "paper_scale_survival": (["--synthetic.survival=True", "--synthetic.patients=946",
                              "--synthetic.min_patches=100", "--synthetic.max_patches=1000",
                              "--synthetic.censor_rate=2.5"],
                             ["--config.data.bucket_sizes=(512,1024,2048)"]),
}
# (method as printed, config) [the third table, `--probe`: TANGLE's few-shot protocol on the slide
# encoder each pre-training leaves; "no pre-training" probes GiMP's freshly initialised aggregator]
TABLE3 = (("GiMP", "gimp"), ("TANGLE", "tangle"), ("TANGLE-Rec", "tangle_rec"),
          ("Intra", "intra"), ("MGCA", "mgca"), ("CLIP InfoNCE (BioViL)", "biovil_clip"),
          ("REFERS", "refers"), ("Image-gene matching (ITM)", "itm"),
          ("No pre-training", "gimp_no_pretrain"))
PRETRAINING_STAGES = ("gene_pretrain", "pretrain")
# Runs fine-tuned with modality dropout (`--config.model.modality_dropout=p`) also report the test
# split from the slides alone.
SLIDE_ONLY_KEYS = ("test_slide_only_accuracy", "test_slide_only_auc")
NOT_RUN = "not run yet"
GROUPS = {"table1": [r[3] for r in TABLE1], "table2": [r[4] for r in TABLE2],
          "table3": [r[1] for r in TABLE3]}
GROUPS["all"] = GROUPS["table1"] + [n for n in GROUPS["table2"] if n not in GROUPS["table1"]]


def parse_args(argv=None) -> argparse.Namespace:
  """The script's options; the `--config.*` and `--synthetic.*` overrides in `.config` and
  `.synthetic` (lists of those arguments, applied by `override`)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              epilog="--config.FIELD=VALUE: a config override for every run; "
                                     "--synthetic.FIELD=VALUE: a synthetic cohort setting "
                                     "(both repeatable)")
  p.add_argument("--out", required=True, help="output folder (runs, tables.md, summary.json)")
  p.add_argument("--methods", default="all",
                 help="'all', 'table1', 'table2' or comma-separated config names")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  p.add_argument("--workers", type=int, default=1, help="parallel processes")
  p.add_argument("--size", default="cpu", help="config size: paper | cpu | tiny")
  p.add_argument("--features_dir", default="", help="CLAM feature folder (user cohort)")
  p.add_argument("--expression", default="", help="expression matrix or folder (user cohort)")
  p.add_argument("--labels", default="", help="labels CSV (user cohort)")
  p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                 help="synthetic cohort preset (paper_scale: 946 patients, 100-1,000 patches; "
                      "paper_scale_survival: the same as survival data, ~1/3 events, for "
                      "--task survival)")
  p.add_argument("--no_reference", action="store_true",
                 help="skip the logistic-regression reference rows")
  p.add_argument("--probe", action="store_true",
                 help="the third table: each method's pre-training stages, then the probe stage "
                      "(few-shot logistic regression on the frozen slide encoder); --methods "
                      "defaults to table3")
  p.add_argument("--task", default="classification", choices=("classification", "survival"),
                 help="survival: C-index over --folds folds (experiments/survival_tables.py)")
  p.add_argument("--folds", type=int, default=5, help="survival: folds (data.num_folds)")
  p.add_argument("--report_only", action="store_true",
                 help="write the tables from the finished runs, run nothing (partial results of "
                      "a call cut short)")
  args, rest = p.parse_known_args(argv)
  synthetic, config = PRESETS[args.preset]
  args.config = config + [a for a in rest if a.startswith("--config.")]
  args.synthetic = synthetic + [a for a in rest if a.startswith("--synthetic.")]
  unknown = [a for a in rest if a not in args.config + args.synthetic]
  if unknown:
    p.error(f"unrecognized arguments: {' '.join(unknown)} (overrides are --config.FIELD=VALUE "
            "and --synthetic.FIELD=VALUE)")
  return args


def override(config: ml_collections.ConfigDict, args: list[str],
             name: str = "config") -> ml_collections.ConfigDict:
  """`config` with `--<name>.a.b=value` arguments applied by ml_collections' flag parser (types
  checked against the field; tuples, booleans and strings as on `gimp_jax.main`'s command line)."""
  if not args:
    return config
  values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict(name, config, flag_values=values, lock_config=False,
                                   sys_argv=["tables", *args])
    values(["tables", *args])
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise SystemExit(f"tables.py: bad override in {' '.join(args)}: {e}") from e
  return values[name].value


def method_names(spec: str) -> list[str]:
  if spec in GROUPS:
    return list(GROUPS[spec])
  names = [n.strip() for n in spec.split(",") if n.strip()]
  known = set(GROUPS["all"]) | set(GROUPS["table3"])
  unknown = [n for n in names if n not in known]
  if unknown:
    raise SystemExit(f"tables.py: unknown method config(s) {unknown}; known: {sorted(known)}")
  return names


def cohort_paths(args) -> dict[str, str]:
  """The user's three inputs, or the synthetic cohort (generated once) under OUT/cohort."""
  given = [args.features_dir, args.expression, args.labels]
  if any(given):
    if not all(given):
      raise SystemExit("tables.py: give all of --features_dir, --expression and --labels.")
    return {"features_dir": args.features_dir, "expression": args.expression,
            "labels": args.labels}
  # Relative to the working directory when it is under it: committed results carry no machine's
  # absolute paths.
  out = os.path.relpath(os.path.join(os.path.abspath(args.out), "cohort"))
  if out.startswith(".."):
    out = os.path.abspath(out)
  paths = {"features_dir": os.path.join(out, "features"),
           "expression": os.path.join(out, "expression.tsv"),
           "labels": os.path.join(out, "labels.csv")}
  if not os.path.exists(paths["labels"]):
    defaults = dataclasses.asdict(synthetic.SyntheticConfig())
    chosen = override(ml_collections.ConfigDict(defaults), args.synthetic, "synthetic").to_dict()
    kwargs = {k: v for k, v in chosen.items() if v != defaults[k]}
    print(f"Generating the synthetic cohort in {out} ({kwargs or 'defaults'})", flush=True)
    paths = synthetic.make_cohort(out, **kwargs)
  return paths


def make_config(name: str, size: str, seed: int, paths: dict[str, str], overrides: list[str]):
  """gimp_jax/configs/methods/<name>.py at `size` with the cohort, the seed and the overrides
  (`--config.a.b=value` arguments)."""
  config = importlib.import_module(f"gimp_jax.configs.methods.{name}").get_config(size)
  config.seed = seed
  for key, value in paths.items():
    config.data[key] = value
  return override(config, overrides)


def probe_config(config):
  """`config` with its pre-training stages followed by the probe stage (the third table); the
  supervised gene pre-training is left out where no pre-training follows (it does not touch the
  slide encoder)."""
  stages = tuple(s for s in config.stages if s in PRETRAINING_STAGES)
  config.stages = (stages if "pretrain" in stages else ()) + ("probe",)
  return config


def plan(names: list[str], seeds: list[int], args, paths) -> tuple[dict, dict]:
  """(runs {(canonical, seed): config}, alias {name: canonical}); identical configs share runs
  (so a --config override that makes two methods' configs equal runs them once)."""
  canonical_of, alias, runs = {}, {}, {}
  for name in names:
    fingerprint = make_config(name, args.size, 0, paths, args.config).to_json(sort_keys=True)
    alias[name] = canonical_of.setdefault(fingerprint, name)
  # Seed-major: a call cut short has every method at the first seeds rather than some at all.
  for seed in seeds:
    for name in sorted(set(alias.values()), key=names.index):
      config = make_config(name, args.size, seed, paths, args.config)
      runs[(name, seed)] = probe_config(config) if getattr(args, "probe", False) else config
  return runs, alias


def run_dir(out: str, name: str, seed: int) -> str:
  return os.path.join(out, "runs", name, f"seed_{seed}")


_STOP = []  # in a worker: the signal that asked its run to stop (`_worker_init`)
STOPPED = "stopped on request (its checkpoints kept: the same command resumes it)"


def _worker_init() -> None:
  """Quiet logging; SIGTERM / SIGINT ask the worker's run to stop at its next step, saving its
  checkpoint (as `gimp_jax.main` does), instead of killing it mid-write."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda n, _: _STOP.append(n))


def execute(config, workdir: str) -> dict:
  """One run in a worker process; its output goes to workdir/log.txt. Never raises. After a stop
  request it starts nothing (the pool may still hand it a run queued before the stop)."""
  if _STOP:
    return {"ok": False, "wall_s": 0.0, "error": STOPPED}
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8") as log, \
      contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    try:
      from gimp_jax.train import run  # pylint: disable=g-import-not-at-top
      results = run.train_and_evaluate(config, workdir, stop=lambda: bool(_STOP))
      return {"ok": True, "wall_s": time.time() - start,
              "test_accuracy": results.get("test_accuracy"), "test_auc": results.get("test_auc")}
    except KeyboardInterrupt:
      return {"ok": False, "wall_s": time.time() - start, "error": STOPPED}
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc(file=log)
      return {"ok": False, "wall_s": time.time() - start, "error": f"{type(e).__name__}: {e}"}


def read_result(workdir: str) -> dict | None:
  """A finished run's numbers (None when its results.json is not written yet): every scalar
  `val_*`, `test_*`, `gene_only_*`, `reference_*`, `vs_reference_*` and `stack_*` result
  (classification or survival, slide-only scores included), the reference's three fits, the
  probe, the number of validation and test cases and the stages' summed wall time
  (`train_wall_s`). The one reader of every table."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    r = json.load(f)
  wall = sum(s.get("wall_s", 0.0) for s in r.get("stages", {}).values())
  scalars = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and k.startswith(("val_", "test_", "gene_only_", "reference_", "vs_reference_",
                               "stack_"))}
  return {"ok": True, **scalars, "reference": r.get("reference"), "probe": r.get("probe"),
          "val_cases": r.get("splits", {}).get("val"), "test_cases": r.get("splits", {}).get("test"),
          "train_wall_s": wall}


@contextlib.contextmanager
def _stopping_workers(pool: cf.ProcessPoolExecutor):
  """SIGTERM (as SIGINT) to this process stops the workers too: the runs not started are
  cancelled, each running one is asked to stop (SIGTERM: it saves its checkpoint and releases
  its workdir, `_worker_init`) and waited for, then SystemExit(128 + signal)."""
  def interrupt(signum, _):
    raise KeyboardInterrupt(signum)
  previous = signal.signal(signal.SIGTERM, interrupt)
  try:
    yield
  except KeyboardInterrupt as e:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal does not cut the wait short
    pool.shutdown(wait=False, cancel_futures=True)
    children = multiprocessing.active_children()
    for child in children:
      os.kill(child.pid, signal.SIGTERM)
    print(f"Stopping: asked {len(children)} running run(s) to save and stop; run the same "
          "command again to resume.", flush=True)
    for child in children:
      child.join()
    signum = e.args[0] if e.args and isinstance(e.args[0], int) else int(signal.SIGINT)
    raise SystemExit(128 + signum) from None
  finally:
    signal.signal(signal.SIGTERM, previous)


def run_all(runs: dict, out: str, workers: int, report_only: bool = False, *,
            where=None, read=None, unit: str = "seed", retest: bool = False) -> dict:
  """Runs the missing runs in `workers` spawned processes (none with `report_only`); returns
  {(name, seed): outcome}. `where(out, name, seed)` and `read(workdir)` replace `run_dir` and
  `read_result` (the survival table's folds); `unit` names the second key in the progress lines.
  With `retest`, finished runs run again: their finished training stages are skipped, the test
  stage and the report are redone (a changed evaluation, no retraining)."""
  where, read = where or run_dir, read or read_result
  outcomes, todo = {}, []
  for (name, seed), config in runs.items():
    done = read(where(out, name, seed))
    if done is not None and not retest:
      outcomes[(name, seed)] = dict(done, skipped=True)
    else:
      todo.append((name, seed, config))
  print(f"{len(runs)} runs: {len(outcomes)} already done, {len(todo)} to run on {workers} "
        "worker(s).", flush=True)
  if report_only:
    outcomes.update({(name, seed): {"ok": False, "error": NOT_RUN} for name, seed, _ in todo})
    return outcomes
  if not todo:
    return outcomes
  ctx = multiprocessing.get_context("spawn")
  with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                              initializer=_worker_init) as pool, _stopping_workers(pool):
    futures = {pool.submit(execute, config, where(out, name, seed)): (name, seed)
               for name, seed, config in todo}
    for i, future in enumerate(cf.as_completed(futures), 1):
      key = futures[future]
      try:
        outcome = future.result()
      except Exception as e:  # pylint: disable=broad-except  (a crashed worker process)
        outcome = {"ok": False, "error": f"{type(e).__name__}: {e}"}
      if outcome["ok"]:
        outcome.update(read(where(out, *key)) or {})
        scores = "".join(f"{k} {outcome[k]:.4f}, " for k in ("test_accuracy", "test_c_index")
                         if outcome.get(k) is not None)
        status = f"{scores}{outcome['wall_s']:.0f} s"
      else:
        status = f"FAILED: {outcome['error']}"
      print(f"[{i}/{len(todo)}] {key[0]} {unit} {key[1]}: {status}", flush=True)
      outcomes[key] = outcome
  return outcomes


def cell(values: list, failures: int, digits: int = 4, pending: int = 0) -> str:
  """'mean ± std' over seeds (sample std; '—' when nothing finished), with failures and runs not
  run yet (`--report_only`) noted."""
  vals = [v for v in values if v is not None and np.isfinite(v)]
  text = "—"
  if vals:
    text = f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.{digits}f}"
  return (text + (f" ({failures} failed)" if failures else "")
          + (f" ({pending} not run yet)" if pending else ""))


def _row_stats(name, alias, seeds, outcomes):
  key_name = alias[name]
  got = [outcomes.get((key_name, s), {"ok": False, "error": "not run"}) for s in seeds]
  ok = [g for g in got if g.get("ok")]
  pending = sum(g.get("error") == NOT_RUN for g in got)
  failed = len(got) - len(ok) - pending
  return (cell([g.get("test_accuracy") for g in ok], failed, pending=pending),
          cell([g.get("test_auc") for g in ok], 0), len(ok))


def _paper(value) -> str:
  return "—" if value is None else f"{value:.4f}"


def markdown(names, alias, seeds, outcomes, header: str, reference=None, paired=None) -> str:
  lines = [header, ""]
  rows1 = [r for r in TABLE1 if r[3] in names]
  if rows1:
    lines += ["## Table 1: accuracy comparison", "",
              "| Modality | Pre-train | Method | Acc. (ours) | AUC (ours) | Acc. (paper) | runs |",
              "|---|---|---|---|---|---|---|"]
    for modality, pre, label, name, paper in rows1:
      acc, auc, n = _row_stats(name, alias, seeds, outcomes)
      lines.append(f"| {modality} | {pre} | {label} | {acc} | {auc} | {_paper(paper)} | {n} |")
    for key, modality, label in REFERENCE if reference else ():
      got = [reference[s][key] for s in seeds if s in reference]
      lines.append(f"| {modality} | reference | {label} | "
                   f"{cell([g['test_accuracy'] for g in got], 0)} | "
                   f"{cell([g['test_auc'] for g in got], 0)} | — | {len(got)} |")
    lines.append("")
  if paired:
    lines += paired_lines(paired)
  rows2 = [r for r in TABLE2 if r[4] in names]
  if rows2:
    lines += ["## Table 2: ablation study", "",
              "| Aggregator | GroupMSA | Triplet | MPM | Acc. (ours) | AUC (ours) | Acc. (paper) "
              "| runs |", "|---|---|---|---|---|---|---|---|"]
    for agg, genes, tri, mpm, name, paper in rows2:
      acc, auc, n = _row_stats(name, alias, seeds, outcomes)
      lines.append(f"| {agg} | {genes} | {tri} | {mpm} | {acc} | {auc} | {_paper(paper)} | {n} |")
    lines.append("")
  lines += slide_only_lines(names, alias, seeds, outcomes)
  failures = [(k, o) for k, o in sorted(outcomes.items()) if not o.get("ok")]
  if failures:
    lines += ["## Runs without a result (failed, or not run yet)", ""]
    lines += [f"- `{name}` seed {seed}: {o.get('error')}" for (name, seed), o in failures]
    lines.append("")
  return "\n".join(lines)


def slide_only_lines(names, alias, seeds, outcomes) -> list[str]:
  """Both modalities beside the slide alone, for the runs that report both (modality dropout)."""
  rows = []
  for name in names:
    ok = [o for o in (outcomes.get((alias[name], s), {}) for s in seeds)
          if o.get("ok") and o.get("test_slide_only_accuracy") is not None]
    if ok:
      rows.append(f"| {name} | " + " | ".join(
          cell([o[k] for o in ok], 0) for k in ("test_accuracy", "test_slide_only_accuracy",
                                                "test_auc", "test_slide_only_auc"))
                  + f" | {len(ok)} |")
  if not rows:
    return []
  return ["## One model, both modalities or the slide alone (modality dropout)", "",
          "| config | acc., slide + genes | acc., slide only | AUC, slide + genes | "
          "AUC, slide only | runs |", "|---|---|---|---|---|---|", *rows, ""]


def probe_markdown(names, alias, seeds, outcomes, header: str) -> str:
  """The third table: per method and k, the test balanced accuracy and AUC of the probe (each
  seed's mean over its draws), mean ± sample std over seeds."""
  rows = [r for r in TABLE3 if r[1] in names]
  found = [o["probe"]["shots"] for o in outcomes.values() if o.get("ok") and o.get("probe")]
  shots = list(found[0]) if found else ["1", "5", "10", "25", "all"]
  lines = [header, ""]
  for metric, title in (("balanced_accuracy", "balanced accuracy"), ("auc", "AUC")):
    lines += [f"## Table 3: slide-only few-shot probing, test {title}", "",
              "| Pre-training | " + " | ".join(f"k = {k}" for k in shots) + " | runs |",
              "|---|" + "---|" * (len(shots) + 1)]
    for label, name in rows:
      got = [outcomes.get((alias[name], s), {"ok": False, "error": "not run"}) for s in seeds]
      ok = [g for g in got if g.get("ok") and g.get("probe")]
      pending = sum(g.get("error") == NOT_RUN for g in got)
      cells = [cell([g["probe"]["shots"][k].get("test", {}).get(metric, {}).get("mean")
                     for g in ok], len(got) - len(ok) - pending, 3, pending) for k in shots]
      lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(ok)} |")
    lines.append("")
  failures = [(k, o) for k, o in sorted(outcomes.items()) if not o.get("ok")]
  if failures:
    lines += ["## Runs without a result (failed, or not run yet)", ""]
    lines += [f"- `{name}` seed {seed}: {o.get('error')}" for (name, seed), o in failures]
    lines.append("")
  return "\n".join(lines)


def reference_rows(runs: dict, seeds: list[int], out: str) -> dict[int, dict]:
  """{seed: reference.linear_rows} on each seed's split (that of any run of the seed), cached in
  OUT/reference/seed_<s>.json."""
  from experiments import reference  # pylint: disable=g-import-not-at-top
  rows, cache = {}, os.path.join(out, "reference")
  os.makedirs(cache, exist_ok=True)
  for seed in seeds:
    config = next((c for (_, s), c in runs.items() if s == seed), None)
    if config is None:
      continue
    path = os.path.join(cache, f"seed_{seed}.json")
    if not os.path.exists(path):
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(reference.linear_rows(config, cache), f, indent=2, default=float)
      os.replace(path + ".tmp", path)
    with open(path, encoding="utf-8") as f:
      rows[seed] = json.load(f)
  return rows


def _pretrain_diagnostics(workdir: str) -> dict:
  """Mean active-anchor fraction over pre-training and the last epoch's CLS_img spread."""
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    history = json.load(f)["stages"].get("pretrain", {}).get("history", [])
  if not history:
    return {}
  return {"tri_active": float(np.mean([h.get("tri_active", np.nan) for h in history])),
          "img_spread_last": history[-1].get("img_spread")}


def paired(alias, seeds, outcomes, out: str, a: str = "gimp", b: str = "gimp_no_pretrain"):
  """GiMP with minus without pre-training on each seed (same split, same initialisation of what
  both train), with the 95% interval, for test accuracy, test AUC and val accuracy."""
  from experiments import reference  # pylint: disable=g-import-not-at-top
  if a not in alias or b not in alias:
    return None
  result = {"a": a, "b": b}
  for metric in ("test_accuracy", "test_auc", "val_accuracy"):
    values = [{s: outcomes[(alias[m], s)][metric] for s in seeds
               if outcomes.get((alias[m], s), {}).get("ok")} for m in (a, b)]
    result[metric] = reference.paired_difference(*values)
  result["diagnostics"] = {s: _pretrain_diagnostics(run_dir(out, alias[a], s)) for s in seeds
                           if outcomes.get((alias[a], s), {}).get("ok")}
  return result


def paired_lines(p: dict) -> list[str]:
  lines = [f"## Paired comparison: `{p['a']}` minus `{p['b']}` (same seed = same split)", "",
           "| metric | mean difference | 95% interval (t) | std | seeds | per seed |",
           "|---|---|---|---|---|---|"]
  for metric in ("test_accuracy", "test_auc", "val_accuracy"):
    d = p[metric]
    ci = "—" if d["ci95"] is None else f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
    std = "—" if d["std"] is None else f"{d['std']:.4f}"
    mean = "—" if d["mean"] is None else f"{d['mean']:+.4f}"
    per = ", ".join(f"{s}: {v:+.3f}" for s, v in d["per_seed"].items())
    lines.append(f"| {metric} | {mean} | {ci} | {std} | {d['n']} | {per} |")
  lines += ["", f"Pre-training diagnostics of `{p['a']}` (per seed): mean fraction of anchors with "
            "an active triplet hinge over pre-training; relative spread of CLS_img in the last "
            "epoch (2 = independent slide tokens, 0 = collapsed).", ""]
  lines += [f"- seed {s}: active {d.get('tri_active', float('nan')):.3f}, spread "
            f"{d.get('img_spread_last') or float('nan'):.3f}" for s, d in p["diagnostics"].items()]
  return lines + [""]


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.task == "survival":
    from experiments import survival_tables  # pylint: disable=g-import-not-at-top
    survival_tables.main(args, argv)
    return
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  # Every worker shares one persistent XLA cache (seeds compile identical programs) and one core.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  if args.workers > 1:
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")
  names = method_names("table3" if args.probe and args.methods == "all" else args.methods)
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  paths = cohort_paths(args)
  runs, alias = plan(names, seeds, args, paths)
  outcomes = run_all(runs, args.out, args.workers, args.report_only)
  wall = time.time() - start
  cmd = " ".join(["python -m experiments.tables", *(argv if argv is not None else sys.argv[1:])])
  cohort = args.labels or f"synthetic, generated in {os.path.join(args.out, 'cohort')}"
  header = (f"# GiMP Tables 1 and 2 rerun\n\nCommand: `{cmd}`  \nCohort: {cohort}  \n"
            f"Config size: {args.size}; seeds: {', '.join(map(str, seeds))}; test accuracy and "
            f"AUC as mean ± sample std over seeds (each seed also draws its own split).  \n"
            f"Wall time of this call: {wall / 60:.1f} min with {args.workers} worker(s).")
  if args.probe:
    header = header.replace("# GiMP Tables 1 and 2 rerun", "# Slide-only few-shot probing of the "
                            "pre-trained slide encoders (TANGLE's protocol)")
    header += ("  \nEach cell: the probe's test score (k training patients per class, mean over "
               "its draws; k = all: one fit on every training patient), mean ± sample std over "
               "seeds.")
    reference = pairs = None
    text = probe_markdown(names, alias, seeds, outcomes, header)
  else:
    reference = None if args.no_reference else reference_rows(runs, seeds, args.out)
    pairs = paired(alias, seeds, outcomes, args.out)
    text = markdown(names, alias, seeds, outcomes, header, reference, pairs)
  with open(os.path.join(args.out, "tables.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  summary = {"command": cmd, "wall_s": wall, "seeds": seeds, "size": args.size, "alias": alias,
             "runs": [{"config": n, "seed": s, **o} for (n, s), o in sorted(outcomes.items())],
             "reference": reference, "paired": pairs}
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, default=float)
  print(text, flush=True)


if __name__ == "__main__":
  main()
