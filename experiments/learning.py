"""Where the deep models lose to the penalised linear reference, and which recipe fixes it: each
recipe (a list of config overrides) x seeds on one cohort, with the val/test numbers beside the
linear reference that every run now fits on its own split (`gimp_jax.reference`), and two
diagnostics of the fused vector CLS_pat = [CLS_img; CLS_ge] of the kept fine-tuned model.

  python -m experiments.learning --out experiments/out/learning --seeds 0,1,2 \
      --recipes paper,modality_dropout --synthetic.patients=300
  python -m experiments.learning --task survival --out experiments/out/learning_survival \
      --seeds 0,1,2 --recipes paper,cox --synthetic.patients=300 --synthetic.censor_rate=2.5

`--task survival` runs the SURVIVAL_RECIPES with `task = "survival"` on a synthetic survival
cohort (`--synthetic.survival=True`) and compares the C-index instead of the accuracy, with the
Bayes-optimal C-index of each seed's split (the generator's true log hazard) beside it, and the
spread the validation split's size alone gives a C-index (`oracle_spread`). Both tasks: each
stage's training loss against its validation score per epoch (`learning_curves`).

Writes OUT/runs/<recipe>/seed_<s>/ (one run each, resumable: a finished run is read back),
OUT/learning.md (a table per recipe: val and test, the reference, the differences, mean ± std over
seeds) and OUT/summary.json. Recipes are chosen on VALIDATION; test is read once at the end.
One worker: the runs go one after another in this process's child.
"""

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from experiments import reference
from experiments import survival_tables
from experiments import tables
from gimp_jax import provenance

# name -> (method config, overrides): the recipe candidates compared on validation, each from the
# paper's recipe (`*_published`: the defaults now carry the chosen one, configs/nsclc.py RECIPE).
NO_PRETRAIN, PRETRAIN = "gimp_no_pretrain_published", "gimp_published"
JOINT = ["--config.stages=('finetune','test')", "--config.finetune.frozen="]
CLASSIFICATION_WINNER = JOINT + ["--config.model.modality_dropout=0.5",
                                 "--config.optim.weight_decay=0.1"]
# MCAT's survival training (its README / main.py defaults): one case per step, gradients
# accumulated over 32 (`optim.grad_accum_steps`), lr 2e-4, weight decay 1e-5, 20 epochs.
MCAT_SCHEDULE = ["--config.finetune.batch_size=1", "--config.gene_pretrain.batch_size=1",
                 "--config.optim.grad_accum_steps=32", "--config.optim.learning_rate=0.0002",
                 "--config.optim.weight_decay=0.00001", "--config.finetune.epochs=20"]
MODALITY_DROPOUT = ["--config.model.modality_dropout=0.5"]
# Dropout of the standardised genes before GroupMSA's projection, p chosen on the supervised gene
# stage's validation score alone (notes section 9): 0.9.
GENE_INPUT_DROPOUT = ["--config.model.gene_input_dropout=0.9"]
WEIGHT_DECAY = ["--config.optim.weight_decay=0.1"]
RECIPES = {
    "paper": (NO_PRETRAIN, []),
    "modality_dropout": (NO_PRETRAIN, MODALITY_DROPOUT),
    "gene_stage_2_epochs": (NO_PRETRAIN, ["--config.gene_pretrain.epochs=2"]),
    "joint": (NO_PRETRAIN, JOINT),
    "joint+modality_dropout": (NO_PRETRAIN, JOINT + MODALITY_DROPOUT),
    "joint+modality_dropout+wd": (NO_PRETRAIN, CLASSIFICATION_WINNER),
    "joint+modality_dropout+wd+snn": (NO_PRETRAIN, CLASSIFICATION_WINNER + [
        "--config.model.gene_encoder=snn"]),
    "joint+modality_dropout+wd+slow": (NO_PRETRAIN, CLASSIFICATION_WINNER + [
        "--config.optim.learning_rate=0.0002", "--config.finetune.epochs=20"]),
    "snn": (NO_PRETRAIN, ["--config.model.gene_encoder=snn"]),
    "joint+modality_dropout+wd+late": (NO_PRETRAIN, CLASSIFICATION_WINNER + [
        "--config.model.head_fusion=late"]),
    "joint+modality_dropout+wd+gene_input_dropout": (NO_PRETRAIN, CLASSIFICATION_WINNER
                                                     + GENE_INPUT_DROPOUT),
    # The supervised gene stage kept (frozen after it): with the input dropout it no longer
    # memorises the training labels (section 9).
    "modality_dropout+wd+gene_input_dropout": (NO_PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY
                                               + GENE_INPUT_DROPOUT),
    # With pre-training (the supervised gene stage kept: the triplet needs a trained CLS_ge).
    "gimp": (PRETRAIN, []),
    "gimp+modality_dropout+wd": (PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY),
    "gimp+modality_dropout+wd+unfrozen": (PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY + [
        "--config.finetune.frozen="]),
    "gimp+modality_dropout+wd+late": (PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY + [
        "--config.model.head_fusion=late"]),
    "gimp+modality_dropout+wd+gene_input_dropout": (PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY
                                                    + GENE_INPUT_DROPOUT),
    "mcat": ("mcat", []),
    "pathomic": ("pathomic", []),
    "abmil": ("abmil", []),
    "transmil": ("transmil", []),
}
# The same questions for survival (`--task survival`; every run gets `--config.task=survival`).
SURVIVAL_RECIPES = {
    "paper": (NO_PRETRAIN, []),
    "cox": (NO_PRETRAIN, ["--config.survival.loss=cox"]),
    "joint+modality_dropout+wd": (NO_PRETRAIN, CLASSIFICATION_WINNER),
    "joint+modality_dropout+wd+snn": (NO_PRETRAIN, CLASSIFICATION_WINNER + [
        "--config.model.gene_encoder=snn"]),
    "joint+modality_dropout+wd+snn+cox": (NO_PRETRAIN, CLASSIFICATION_WINNER + [
        "--config.model.gene_encoder=snn", "--config.survival.loss=cox"]),
    "mcat_schedule": (NO_PRETRAIN, MCAT_SCHEDULE),
    "joint+modality_dropout+snn+mcat_schedule": (NO_PRETRAIN, JOINT + [
        "--config.model.modality_dropout=0.5", "--config.model.gene_encoder=snn"]
                                                 + MCAT_SCHEDULE),
    "gimp+modality_dropout+wd": (PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY),
    "joint+modality_dropout+wd+gene_input_dropout": (NO_PRETRAIN, CLASSIFICATION_WINNER
                                                     + GENE_INPUT_DROPOUT),
    "modality_dropout+wd+gene_input_dropout": (NO_PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY
                                               + GENE_INPUT_DROPOUT),
    "gimp+modality_dropout+wd+gene_input_dropout": (PRETRAIN, MODALITY_DROPOUT + WEIGHT_DECAY
                                                    + GENE_INPUT_DROPOUT),
    "mcat": ("mcat", []),
    "mcat+mcat_schedule": ("mcat", MCAT_SCHEDULE),
    "pathomic": ("pathomic", []),
    "abmil": ("abmil", []),
    "transmil": ("transmil", []),
}
PAIRED_AGAINST = ("paper", "mcat")  # recipes every other one is compared with, seed by seed
TASKS = {"classification": (RECIPES, "accuracy"), "survival": (SURVIVAL_RECIPES, "c_index")}


def run_dir(out: str, name: str, seed: int) -> str:
  return os.path.join(out, "runs", name, f"seed_{seed}")


def fused_scale(config, workdir: str) -> dict:
  """Norms of the two halves of CLS_pat over the training and validation patients, and the
  fine-tuned model's own score on its training patients (accuracy, or the C-index for survival:
  how much of the training set it memorised)."""
  from gimp_jax import metrics, preflight  # pylint: disable=g-import-not-at-top
  from gimp_jax.train import evaluate, run as run_lib  # pylint: disable=g-import-not-at-top
  from gimp_jax.train.state import restored  # pylint: disable=g-import-not-at-top
  run = run_lib.Run(config, workdir, preflight.preflight(config, workdir))
  state = restored(run.build(), workdir, evaluate.BEST)
  out = {}
  for split in ("train", "val"):
    pred = evaluate.predict(run, state, split)
    emb = pred["embedding"]
    if config.task == "survival":
      out[f"{split}_c_index_model"] = float(metrics.survival_metrics(
          pred["time"], pred["censorship"], pred["risk"])["c_index"])
    else:
      out[f"{split}_accuracy_model"] = float(np.mean(pred["probs"].argmax(1) == pred["label"]))
    if emb.shape[1] == 2 * config.model.dim:
      img, ge = emb[:, :config.model.dim], emb[:, config.model.dim:]
      out[f"{split}_norm_img"] = float(np.linalg.norm(img, axis=1).mean())
      out[f"{split}_norm_ge"] = float(np.linalg.norm(ge, axis=1).mean())
      out[f"{split}_std_img"] = float(img.std(0).mean())  # spread over patients
      out[f"{split}_std_ge"] = float(ge.std(0).mean())
  return out


def read_result(workdir: str) -> dict | None:
  """`tables.read_result` with the run's `fused_scale.json` (as "fused") when written."""
  got = tables.read_result(workdir)
  diag = os.path.join(workdir, "fused_scale.json")
  if got is not None and os.path.exists(diag):
    with open(diag, encoding="utf-8") as f:
      got["fused"] = json.load(f)
  return got


def learning_curves(workdir: str, metric: str) -> dict[str, dict]:
  """Per training stage of a finished run: the training loss and training `metric` per epoch
  (results.json's `history`, means over the epoch's steps; survival has no training C-index),
  the validation `metric` per epoch (metrics.jsonl's `<stage>_val` records, one per epoch) and
  the kept (best validation) epoch. {stage: {"train_loss": [E], "val": [E], "best": int}}."""
  from gimp_jax.train import loop  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    stages = json.load(f).get("stages", {})
  out = {}
  for name, stage in stages.items():
    history = stage.get("history")
    if not history:
      continue
    val = [scores.get(metric, float("nan")) for _, scores in
           loop.stage_records(workdir, f"{name}_val")]
    # The kept epoch: the first best (selection keeps the earlier epoch on a tie).
    best = int(np.nanargmax(val)) if val and not np.all(np.isnan(val)) else None
    out[name] = {"train_loss": [h["loss"] for h in history], "val": val, "best": best}
  return out


def curve_lines(recipes, seeds, outcomes, metric: str, epochs: int = 10) -> list[str]:
  """Per recipe and stage: mean over seeds of the training loss and the validation `metric` at
  each of the first `epochs` epochs, and the kept epochs."""
  lines = ["", f"Learning curves, mean over seeds (training loss / validation {metric}, epochs 0 "
           f"to {epochs - 1}; kept epoch per seed):", ""]
  for name in recipes:
    curves = [o["curves"] for s in seeds for o in [outcomes.get((name, s), {})]
              if o.get("ok") and o.get("curves")]
    for stage in dict.fromkeys(k for c in curves for k in c):
      got = [c[stage] for c in curves if stage in c]
      n = min(epochs, max(len(g["train_loss"]) for g in got))
      mean = lambda key, e: np.nanmean([g[key][e] for g in got if e < len(g[key])])
      points = ", ".join(f"{mean('train_loss', e):.3f}/{mean('val', e):.3f}" for e in range(n))
      lines.append(f"- {name}, {stage}: {points}; kept {[g['best'] for g in got]}, epochs run "
                   f"{[len(g['train_loss']) for g in got]}")
  return lines


def cell(values) -> str:
  vals = [v for v in values if v is not None and np.isfinite(v)]
  if not vals:
    return "—"
  return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.3f}"


def _paired(a: dict, b: dict) -> str:
  """'mean [low, high] (n)' of the paired difference a - b (`reference.paired_difference`)."""
  d = reference.paired_difference(a, b)
  if not d["n"]:
    return "—"
  ci = "" if d["ci95"] is None else f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
  return f"{d['mean']:+.3f}{ci} ({d['n']})"


def per_seed(outcomes: dict, name: str, seeds, key: str) -> dict[int, float]:
  """{seed: outcome[key]} over the seeds where recipe `name` finished with that key."""
  return {s: o[key] for s in seeds for o in [outcomes.get((name, s), {})]
          if o.get("ok") and o.get(key) is not None}


def bayes_rows(outcomes: dict, seeds) -> dict[int, dict]:
  """{seed: Bayes-optimal {"val_c_index", "test_c_index"}} from any finished run of the seed
  that carries it (every run of a seed has the same split)."""
  return {s: o["bayes"] for (_, s), o in outcomes.items() if s in seeds and o.get("bayes")}


def oracle_spread(truth_csv: str, labels_csv: str, size: int, draws: int = 1000,
                  seed: int = 0) -> dict:
  """How much a split of `size` cases alone moves a C-index: Harrell's C of the generator's true
  log hazard on `draws` random subsets of `size` cases of the cohort (no model, no fitting).

  Returns:
    {"size", "draws", "mean", "std", "p5", "p95"} over the draws.
  """
  from gimp_jax import metrics  # pylint: disable=g-import-not-at-top
  with open(truth_csv, encoding="utf-8") as f:
    eta = {r["case_id"]: float(r["eta"]) for r in csv.DictReader(f)}
  with open(labels_csv, encoding="utf-8") as f:
    rows = {r["case_id"]: (float(r["survival_months"]), int(r["censorship"]))
            for r in csv.DictReader(f)}
  ids = sorted(rows)
  t, c, r = (np.array([rows[i][0] for i in ids]), np.array([rows[i][1] for i in ids]),
             np.array([eta[i] for i in ids]))
  rng = np.random.default_rng(seed)
  got = []
  for _ in range(draws):
    idx = rng.choice(len(ids), size, replace=False)
    got.append(metrics.survival_metrics(t[idx], c[idx], r[idx])["c_index"])
  got = np.asarray(got)
  return {"size": size, "draws": draws, "mean": float(np.nanmean(got)),
          "std": float(np.nanstd(got, ddof=1)), "p5": float(np.nanpercentile(got, 5)),
          "p95": float(np.nanpercentile(got, 95))}


def markdown(recipes, seeds, outcomes, header, metric: str = "accuracy") -> str:
  """The recipes' table: val/test `metric` (accuracy, or c_index for survival) beside the
  linear reference of the same runs (both inputs, and genes / slide alone), the model's own
  training score, the paired differences against `PAIRED_AGAINST` and the reference, and each
  seed."""
  val, test = f"val_{metric}", f"test_{metric}"
  cols = (val, test, f"reference_{val}", f"reference_{test}", f"vs_reference_{val}",
          f"vs_reference_{test}", f"gene_only_{val}", "stack_weight", f"stack_{test}")
  lines = [header, "", "| recipe | runs | " + " | ".join(cols) + " | train " + metric +
           " | |CLS_img| | |CLS_ge| | wall s |", "|---" * (len(cols) + 6) + "|"]
  for name in recipes:
    ok = [outcomes.get((name, s), {}) for s in seeds]
    ok = [o for o in ok if o.get("ok")]
    fused = [o.get("fused", {}) for o in ok]
    lines.append(f"| {name} | {len(ok)} | " + " | ".join(cell([o.get(c) for o in ok])
                                                       for c in cols)
                 + f" | {cell([f.get(f'train_{metric}_model') for f in fused])} | "
                 f"{cell([f.get('val_norm_img') for f in fused])} | "
                 f"{cell([f.get('val_norm_ge') for f in fused])} | "
                 f"{cell([o.get('train_wall_s') for o in ok])} |")
  bayes = bayes_rows(outcomes, seeds)
  refs = {}  # the reference's three inputs, per seed: the same split gives the same fit
  for (_, s), o in outcomes.items():
    if s in seeds and o.get("ok") and o.get("reference"):
      refs.setdefault(s, o["reference"])
  if refs:
    lines += ["", f"Penalised linear reference per input (same splits; {len(refs)} seeds):", "",
              f"| input | {val} | {test} |", "|---|---|---|"]
    for key in ("slide", "genes", "both"):
      got = [r[key] for r in refs.values() if key in r]
      lines.append(f"| {key} | {cell([g.get(val) for g in got])} | "
                   f"{cell([g.get(test) for g in got])} |")
    if bayes:
      lines.append(f"| Bayes-optimal (true log hazard) | "
                   f"{cell([b[val] for b in bayes.values()])} | "
                   f"{cell([b[test] for b in bayes.values()])} |")
  lines += ["", "Paired differences over the seeds both have (same seed = same split), mean and "
            "95% t interval:", "",
            "| recipe | metric | " + " | ".join(f"minus `{b}`" for b in PAIRED_AGAINST)
            + " | minus linear reference (both) |", "|---" * (len(PAIRED_AGAINST) + 3) + "|"]
  for name in recipes:
    for key in (val, test, f"stack_{test}"):
      mine = per_seed(outcomes, name, seeds, key)
      if key.startswith("stack_") and not mine:  # runs from before stacking
        continue
      base = ["—" if name == b else _paired(mine, per_seed(outcomes, b, seeds, key))
              for b in PAIRED_AGAINST]
      reference_key = f"reference_{key.removeprefix('stack_')}"  # the same split's linear fit
      lines.append(f"| {name} | {key} | " + " | ".join(base) + " | "
                   f"{_paired(mine, per_seed(outcomes, name, seeds, reference_key))} |")
  lines += ["", f"Per seed (val / test / reference val / reference test {metric}):", ""]
  for name in recipes:
    per = [f"{s}: {o[val]:.3f}/{o[test]:.3f}/{o.get(f'reference_{val}', float('nan')):.3f}/"
           f"{o.get(f'reference_{test}', float('nan')):.3f}"
           for s in seeds for o in [outcomes.get((name, s), {})] if o.get("ok")]
    lines.append(f"- {name}: " + ", ".join(per))
  if bayes:
    lines.append("- Bayes-optimal (val / test): " + ", ".join(
        f"{s}: {b[val]:.3f}/{b[test]:.3f}" for s, b in sorted(bayes.items())))
  lines += curve_lines(recipes, seeds, outcomes, metric)
  failures = [f"- `{n}` seed {s}: {o.get('error')}" for (n, s), o in sorted(outcomes.items())
              if not o.get("ok")]
  if failures:
    lines += ["", "Runs without a result (failed, or not run yet):", "", *failures]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--task", default="classification", choices=sorted(TASKS))
  p.add_argument("--recipes", default="paper")
  p.add_argument("--seeds", default="0")
  p.add_argument("--size", default="cpu")
  p.add_argument("--report_only", action="store_true",
                 help="write the table from the finished runs, run nothing")
  p.add_argument("--retest", action="store_true",
                 help="redo the test stage and report of finished runs (no retraining)")
  args, rest = p.parse_known_args(argv)
  known, metric = TASKS[args.task]
  survival = args.task == "survival"
  args.config = ([f"--config.task={args.task}"] if survival else []) + [
      a for a in rest if a.startswith("--config.")]
  args.synthetic = (["--synthetic.survival=True"] if survival else []) + [
      a for a in rest if a.startswith("--synthetic.")]
  args.features_dir = args.expression = args.labels = ""
  start, load = time.time(), os.getloadavg()
  os.makedirs(args.out, exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
  unknown = [r for r in recipes if r not in known]
  if unknown:
    raise SystemExit(f"learning.py: unknown {args.task} recipe(s) {unknown}; "
                     f"known: {sorted(known)}")
  seeds = [int(s) for s in args.seeds.split(",")]
  paths = tables.cohort_paths(args)
  truth = paths.get("truth") or os.path.join(os.path.dirname(paths["labels"]),
                                             "survival_truth.csv")
  paths = {k: paths[k] for k in ("features_dir", "expression", "labels")}
  runs = {(name, seed): tables.make_config(known[name][0], args.size, seed, paths,
                                           known[name][1] + args.config)
          for seed in seeds for name in recipes}
  outcomes = tables.run_all(runs, args.out, 1, args.report_only, where=run_dir, read=read_result,
                            retest=args.retest)
  bayes = {}
  for key, config in runs.items():
    workdir = run_dir(args.out, *key)
    if outcomes[key].get("ok") and not os.path.exists(os.path.join(workdir, "fused_scale.json")):
      provenance.write_json_atomic(os.path.join(workdir, "fused_scale.json"),
                                   fused_scale(config, workdir))
      outcomes[key] = read_result(workdir)
    if outcomes[key].get("ok"):
      outcomes[key]["curves"] = learning_curves(workdir, metric)
    if outcomes[key].get("ok") and survival and os.path.exists(truth):
      if key[1] not in bayes:  # one split per seed
        bayes[key[1]] = survival_tables.bayes_optimal(config, truth)
      outcomes[key]["bayes"] = bayes[key[1]]
  spread = None
  sizes = [o["val_cases"] for o in outcomes.values() if o.get("ok") and o.get("val_cases")]
  if survival and sizes and os.path.exists(truth):
    spread = oracle_spread(truth, paths["labels"], sizes[0])
  cmd = " ".join(["python -m experiments.learning", *(argv if argv is not None else sys.argv[1:])])
  header = (f"# Recipes against the linear reference ({args.task})\n\nCommand: `{cmd}`  \n"
            f"Size {args.size}; mean ± sample std over seeds {seeds} (each seed draws its own "
            f"split); wall {(time.time() - start) / 60:.1f} min, one worker; load average at start "
            f"{load[0]:.1f}, at end {os.getloadavg()[0]:.1f}.")
  text = markdown(recipes, seeds, outcomes, header, metric)
  if spread:
    text += (f"\nThe true log hazard's C-index on {spread['draws']} random subsets of "
             f"{spread['size']} cases (a validation split's size) of this cohort: "
             f"{spread['mean']:.3f} ± {spread['std']:.3f} (5th-95th percentile "
             f"{spread['p5']:.3f}-{spread['p95']:.3f}): what the split alone does to a C-index.\n")
  with open(os.path.join(args.out, "learning.md"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"command": cmd, "task": args.task, "oracle_spread": spread,
               "runs": [{"recipe": n, "seed": s, **o} for (n, s), o in sorted(outcomes.items())]},
              f, indent=1, default=float)
  print(text, flush=True)


if __name__ == "__main__":
  main()
