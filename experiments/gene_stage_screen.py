"""Chooses `model.gene_input_dropout` on validation, on the supervised gene stage alone: GroupMSA
trained on the genes (`gene_pretrain`, best validation epoch kept), beside the penalised linear
model on the same genes and split (`gimp_jax.reference`: logistic regression or Coxnet, penalty
chosen on validation). The gene stage costs seconds where a whole run costs minutes.

  python -m experiments.gene_stage_screen --out experiments/out/gene_stage_screen \
      --cohort experiments/out/learning_paper_scale/cohort --dropouts 0,0.5,0.8,0.9,0.95 \
      --seeds 0,1,2,3,4 "--config.data.bucket_sizes=(512,1024,2048)"
  python -m experiments.gene_stage_screen ... --task survival \
      --cohort experiments/out/learning_ps_survival/cohort --dropouts 0,0.9

Each (p, seed) is the `gimp_published` config at `--size` (default cpu) with
`stages = ("gene_pretrain",)`, `model.gene_input_dropout = p` and `seed` (which sets the split),
run in OUT/p_<p>/seed_<s>/ (finished runs are read back: the call resumes). The validation score
is the kept epoch's (`gene_pretrain.select_metric`: the best AUC, ties by accuracy, and its
accuracy; survival: the best C-index, the earlier epoch on ties); the test split is never read.
Writes OUT/screen.md: mean ± std over seeds per p, the paired difference against p = 0 and
against the linear model on the genes, and the per-seed rows.
"""

import argparse
import json
import os

import numpy as np

from experiments import learning
from experiments import reference as reference_stats
from experiments import tables


def kept_val(workdir: str, config) -> tuple[float, int]:
  """(the validation score of the epoch the gene stage kept, epochs run), from metrics.jsonl:
  the stage's own `selection.selection_key`, applied to each epoch's validation record."""
  from gimp_jax.train import selection  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  val = [r for r in rows if r["stage"] == "gene_pretrain_val"]
  select = selection.task_metric(config.task, config.gene_pretrain.select_metric)
  best = None
  for r in val:  # strictly better only: the earlier epoch stays on ties, as the stage keeps it
    key = selection.selection_key(r, select)
    if best is None or key > best[0]:
      best = (key, r)
  name = "c_index" if config.task == "survival" else "accuracy"
  return float(best[1][name]), len(val)


def linear_genes_val(config, workdir: str) -> dict[str, float]:
  """The linear model's validation score on the genes alone, on the run's split (cached in
  workdir/linear_genes.json)."""
  path = os.path.join(workdir, "linear_genes.json")
  if not os.path.exists(path):
    from gimp_jax import preflight  # pylint: disable=g-import-not-at-top
    from gimp_jax import reference  # pylint: disable=g-import-not-at-top
    cohort = preflight.preflight(config, workdir)
    splits = {k: cohort.split(k) for k in ("train", "val", "test")}
    x = np.asarray(cohort.genes, np.float64)
    if cohort.task == "survival":
      numbers, _ = reference.fit_cox(x, cohort.times, cohort.censorship, splits)
    else:
      numbers, _ = reference.fit_logistic(x, cohort.labels, splits, cohort.num_classes)
    with open(path, "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in numbers.items() if k.startswith("val_")}, f)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def config_for(args, p: float, seed: int):
  """The gene stage's config of one (p, seed): `gimp_published` through `tables.make_config`,
  with `args.config` (`--config.a.b=value` overrides) applied last."""
  paths = {"features_dir": os.path.join(args.cohort, "features"),
           "expression": os.path.join(args.cohort, "expression.tsv"),
           "labels": os.path.join(args.cohort, "labels.csv")}
  return tables.make_config("gimp_published", args.size, seed, paths, [
      f"--config.task={args.task}", "--config.stages=('gene_pretrain',)",
      f"--config.model.gene_input_dropout={p}", *args.config])


def markdown(rows: dict, dropouts, seeds, metric: str) -> str:
  """The screen's table: per p, mean ± std over seeds and the paired differences."""
  lines = [f"| p | seeds | val {metric} | − p = 0 (paired, 95% CI) | − linear on the genes (paired) |",
           "|---|---|---|---|---|"]
  for p in dropouts:
    got = {s: rows[(p, s)]["val"] for s in seeds if (p, s) in rows}
    zero = {s: rows[(dropouts[0], s)]["val"] for s in got if (dropouts[0], s) in rows}
    lin = {s: rows[(p, s)]["linear"] for s in got}
    cells = []
    for other in (zero, lin):
      d = reference_stats.paired_difference(got, other)
      cells.append(f"{d['mean']:+.3f}" + (" [{:+.3f}, {:+.3f}]".format(*d["ci95"]) if d["ci95"]
                                          else ""))
    lines.append(f"| {p} | {len(got)} | {learning.cell(got.values())} | {cells[0]} | {cells[1]} |")
  lines += ["", "Per seed (val " + metric + "; linear on the genes):", ""]
  for (p, s), r in sorted(rows.items()):
    lines.append(f"- p {p}, seed {s}: {r['val']:.3f} ({r['epochs']} epochs); linear "
                 f"{r['linear']:.3f}")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--cohort", required=True, help="folder of features/, expression.tsv, "
                      "labels.csv (e.g. experiments.learning's OUT/cohort)")
  parser.add_argument("--task", default="classification", choices=("classification", "survival"))
  parser.add_argument("--dropouts", default="0,0.5,0.8,0.9")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--size", default="cpu")
  args, rest = parser.parse_known_args(argv)
  args.config = [a for a in rest if a.startswith("--config.")]  # as experiments.tables
  if len(args.config) != len(rest):
    parser.error(f"unrecognised arguments: {' '.join(a for a in rest if a not in args.config)}")
  from gimp_jax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  dropouts = [float(p) for p in args.dropouts.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  metric = "c_index" if args.task == "survival" else "accuracy"
  rows = {}
  for p in dropouts:
    for seed in seeds:
      config, workdir = config_for(args, p, seed), os.path.join(args.out, f"p_{p}", f"seed_{seed}")
      if not os.path.exists(os.path.join(workdir, "results.json")):
        run_lib.train_and_evaluate(config, workdir)
      val, epochs = kept_val(workdir, config)
      rows[(p, seed)] = {"val": val, "epochs": epochs,
                         "linear": linear_genes_val(config, workdir)[f"val_{metric}"]}
      print(f"p {p} seed {seed}: val {metric} {val:.4f}, linear "
            f"{rows[(p, seed)]['linear']:.4f}", flush=True)
  text = markdown(rows, dropouts, seeds, metric)
  with open(os.path.join(args.out, "screen.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # the runs' own progress lines; not when imported
  main()
