"""Where the deep models lose to the penalised linear reference, and which recipe fixes it: each
recipe (a list of config overrides) x seeds on one cohort, with the val/test numbers beside the
linear reference that every run now fits on its own split (`gimp_jax.reference`), and two
diagnostics of the fused vector CLS_pat = [CLS_img; CLS_ge] of the kept fine-tuned model.

  python -m experiments.learning --out experiments/out/learning --seeds 0,1,2 \
      --recipes paper,modality_dropout --synthetic.patients=300

Writes OUT/runs/<recipe>/seed_<s>/ (one run each, resumable: a finished run is read back),
OUT/learning.md (a table per recipe: val and test, the reference, the differences, mean ± std over
seeds) and OUT/summary.json. Recipes are chosen on VALIDATION; test is read once at the end.
One worker: the runs go one after another in this process's child.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from experiments import reference
from experiments import tables

# name -> (method config, overrides): the candidates of issue 23, on validation.
RECIPES = {
    "paper": ("gimp_no_pretrain", []),
    "modality_dropout": ("gimp_no_pretrain", ["--config.model.modality_dropout=0.5"]),
    "gene_stage_2_epochs": ("gimp_no_pretrain", ["--config.gene_pretrain.epochs=2"]),
    "joint": ("gimp_no_pretrain", ["--config.stages=('finetune','test')",
                                   "--config.finetune.frozen="]),
    "joint+modality_dropout": ("gimp_no_pretrain", ["--config.stages=('finetune','test')",
                                                    "--config.finetune.frozen=",
                                                    "--config.model.modality_dropout=0.5"]),
    "joint+modality_dropout+wd": ("gimp_no_pretrain", ["--config.stages=('finetune','test')",
                                                       "--config.finetune.frozen=",
                                                       "--config.model.modality_dropout=0.5",
                                                       "--config.optim.weight_decay=0.1"]),
    "joint+modality_dropout+wd+snn": ("gimp_no_pretrain", [
        "--config.stages=('finetune','test')", "--config.finetune.frozen=",
        "--config.model.modality_dropout=0.5", "--config.optim.weight_decay=0.1",
        "--config.model.gene_encoder=snn"]),
    "joint+modality_dropout+wd+slow": ("gimp_no_pretrain", [
        "--config.stages=('finetune','test')", "--config.finetune.frozen=",
        "--config.model.modality_dropout=0.5", "--config.optim.weight_decay=0.1",
        "--config.optim.learning_rate=0.0002", "--config.finetune.epochs=20"]),
    "snn": ("gimp_no_pretrain", ["--config.model.gene_encoder=snn"]),
    # With pre-training (the supervised gene stage kept: the triplet needs a trained CLS_ge).
    "gimp": ("gimp", []),
    "gimp+modality_dropout+wd": ("gimp", ["--config.model.modality_dropout=0.5",
                                          "--config.optim.weight_decay=0.1"]),
    "gimp+modality_dropout+wd+unfrozen": ("gimp", ["--config.model.modality_dropout=0.5",
                                                   "--config.optim.weight_decay=0.1",
                                                   "--config.finetune.frozen="]),
    "mcat": ("mcat", []),
    "abmil": ("abmil", []),
}
KEYS = ("val_accuracy", "test_accuracy", "val_auc", "test_auc", "gene_only_val_accuracy",
        "gene_only_test_accuracy")


def run_dir(out: str, name: str, seed: int) -> str:
  return os.path.join(out, "runs", name, f"seed_{seed}")


def fused_scale(config, workdir: str) -> dict:
  """Norms of the two halves of CLS_pat over the training and validation patients, and the
  training accuracy of the fine-tuned model (how much of the training set it memorised)."""
  from gimp_jax import preflight  # pylint: disable=g-import-not-at-top
  from gimp_jax.train import evaluate, run as run_lib  # pylint: disable=g-import-not-at-top
  from gimp_jax.train.state import restored  # pylint: disable=g-import-not-at-top
  run = run_lib.Run(config, workdir, preflight.preflight(config, workdir))
  state = restored(run.build(), workdir, evaluate.BEST)
  out = {}
  for split in ("train", "val"):
    pred = evaluate.predict(run, state, split)
    emb = pred["embedding"]
    out[f"{split}_accuracy_model"] = float(np.mean(pred["probs"].argmax(1) == pred["label"]))
    if emb.shape[1] == 2 * config.model.dim:
      img, ge = emb[:, :config.model.dim], emb[:, config.model.dim:]
      out[f"{split}_norm_img"] = float(np.linalg.norm(img, axis=1).mean())
      out[f"{split}_norm_ge"] = float(np.linalg.norm(ge, axis=1).mean())
      out[f"{split}_std_img"] = float(img.std(0).mean())  # spread over patients
      out[f"{split}_std_ge"] = float(ge.std(0).mean())
  return out


def read_result(workdir: str) -> dict | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    r = json.load(f)
  got = {k: r.get(k) for k in KEYS}
  got.update({k: v for k, v in r.items() if k.startswith(("reference_", "vs_reference_"))})
  got["reference"] = r.get("reference")
  got["wall_s"] = sum(s.get("wall_s", 0.0) for s in r.get("stages", {}).values())
  got["gene_best_epoch"] = None
  diag = os.path.join(workdir, "fused_scale.json")
  if os.path.exists(diag):
    with open(diag, encoding="utf-8") as f:
      got["fused"] = json.load(f)
  return {"ok": True, **got}


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


def markdown(recipes, seeds, outcomes, header) -> str:
  cols = ("val_accuracy", "test_accuracy", "reference_val_accuracy", "reference_test_accuracy",
          "vs_reference_val_accuracy", "vs_reference_test_accuracy", "gene_only_val_accuracy")
  lines = [header, "", "| recipe | runs | " + " | ".join(cols) + " | train acc. | |CLS_img| | "
           "|CLS_ge| | wall s |", "|---" * (len(cols) + 6) + "|"]
  for name in recipes:
    ok = [outcomes.get((name, s), {}) for s in seeds]
    ok = [o for o in ok if o.get("ok")]
    fused = [o.get("fused", {}) for o in ok]
    lines.append(f"| {name} | {len(ok)} | " + " | ".join(cell([o.get(c) for o in ok])
                                                       for c in cols)
                 + f" | {cell([f.get('train_accuracy_model') for f in fused])} | "
                 f"{cell([f.get('val_norm_img') for f in fused])} | "
                 f"{cell([f.get('val_norm_ge') for f in fused])} | "
                 f"{cell([o.get('wall_s') for o in ok])} |")
  lines += ["", "Paired differences over the seeds both have (same seed = same split), mean and "
            "95% t interval:", "",
            "| recipe | metric | minus `paper` | minus linear reference (both) |", "|---|---|---|---|"]
  for name in recipes:
    for metric in ("val_accuracy", "test_accuracy"):
      mine = {s: o[metric] for s in seeds for o in [outcomes.get((name, s), {})] if o.get("ok")}
      base = {s: o[metric] for s in seeds for o in [outcomes.get(("paper", s), {})] if o.get("ok")}
      ref = {s: o[f"reference_{metric}"] for s in seeds
             for o in [outcomes.get((name, s), {})] if o.get("ok")}
      lines.append(f"| {name} | {metric} | {_paired(mine, base)} | {_paired(mine, ref)} |")
  lines += ["", "Per seed (val acc. / test acc. / reference test acc.):", ""]
  for name in recipes:
    per = [f"{s}: {o['val_accuracy']:.3f}/{o['test_accuracy']:.3f}/"
           f"{o.get('reference_test_accuracy', float('nan')):.3f}"
           for s in seeds for o in [outcomes.get((name, s), {})] if o.get("ok")]
    lines.append(f"- {name}: " + ", ".join(per))
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--recipes", default="paper")
  p.add_argument("--seeds", default="0")
  p.add_argument("--size", default="cpu")
  p.add_argument("--report_only", action="store_true",
                 help="write the table from the finished runs, run nothing")
  args, rest = p.parse_known_args(argv)
  args.config = [a for a in rest if a.startswith("--config.")]
  args.synthetic = [a for a in rest if a.startswith("--synthetic.")]
  args.features_dir = args.expression = args.labels = ""
  start, load = time.time(), os.getloadavg()
  os.makedirs(args.out, exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
  seeds = [int(s) for s in args.seeds.split(",")]
  paths = tables.cohort_paths(args)
  runs = {(name, seed): tables.make_config(RECIPES[name][0], args.size, seed, paths,
                                           RECIPES[name][1] + args.config)
          for seed in seeds for name in recipes}
  outcomes = tables.run_all(runs, args.out, 1, args.report_only, where=run_dir, read=read_result)
  for key, config in runs.items():
    workdir = run_dir(args.out, *key)
    if outcomes[key].get("ok") and not os.path.exists(os.path.join(workdir, "fused_scale.json")):
      with open(os.path.join(workdir, "fused_scale.json"), "w", encoding="utf-8") as f:
        json.dump(fused_scale(config, workdir), f, indent=1)
      outcomes[key] = read_result(workdir)
  cmd = " ".join(["python -m experiments.learning", *(argv if argv is not None else sys.argv[1:])])
  header = (f"# Recipes against the linear reference\n\nCommand: `{cmd}`  \nSize {args.size}; "
            f"mean ± sample std over seeds {seeds}; wall {(time.time() - start) / 60:.1f} min, "
            f"one worker; load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}.")
  text = markdown(recipes, seeds, outcomes, header)
  with open(os.path.join(args.out, "learning.md"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"command": cmd, "runs": [{"recipe": n, "seed": s, **o}
                                        for (n, s), o in sorted(outcomes.items())]},
              f, indent=1, default=float)
  print(text, flush=True)


if __name__ == "__main__":
  main()
