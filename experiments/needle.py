"""Find the needle: learning curves of a method on the rare-instance cohort, with the attention mass
the model puts on the rare patches after every fine-tuning epoch.

The run is the CLI's (`experiments.tables.make_config` config, `train.run.open_run`, the method's
stages in order, the `finetune` stage with its `observe` hook, the `test` stage); after every
fine-tuning epoch the validation patients whose slides carry the pattern are scored with the
attention protocol (`report.slides.patient_scores`, what the heatmaps draw), and metrics.jsonl gets
(stage "finetune_observed"):

- `rare_mass`: the share of a slide's attention on its rare patches (mean over those slides);
- `rare_enrichment`: that share over the rare patches' share of the slide (1 = no preference);
- `rare_top_hit`: the share of each slide's top-k patches (k = its rare patches) that are rare.

Each run also gets the two linear references on its split (logistic regression on mean-pooled and
on max-pooled features, C on validation) and the oracle AUC (`synthetic.oracle_statistic` from
`rare_truth.csv`) on its test patients, in `needle.json` beside `results.json`.

  python -m gimp_jax.data.synthetic --out data/rare300 --preset rare --patients 300 --seed 100
  python -m experiments.needle --cohort data/rare300 --out runs/needle --methods gimp_image_only \
      --seeds 0 --config.data.bucket_sizes='(1024,2048,3072)'

Runs whose needle.json exists are skipped (a call resumes); `OUT/needle.md` and `OUT/summary.json`
give each run's mean and SD over seeds, its paired difference to ABMIL and the references.
"""

import argparse
import csv
import json
import os

from absl import logging
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as sk_metrics

from experiments import reference as reference_rows
from experiments import tables
from gimp_jax import reference
from gimp_jax.data import cohort as cohort_lib
from gimp_jax.data import synthetic
from gimp_jax.models import attention
from gimp_jax.report import slides as slides_lib
from gimp_jax.train import evaluate, finetune_stage, run as run_lib
from gimp_jax.train.state import restored


def read_truth(path: str) -> dict[str, dict]:
  """rare_truth.csv -> {slide_id: {"pattern": bool, "oracle": float, "rare": int array}}."""
  out = {}
  with open(path, encoding="utf-8") as f:
    for row in csv.DictReader(f):
      out[row["slide_id"]] = {"pattern": row["pattern"] == "1", "oracle": float(row["oracle"]),
                              "rare": np.array(row["rare_patches"].split(), np.int64)}
  return out


def attention_on_rare(scores: np.ndarray, rare: np.ndarray) -> dict[str, float]:
  """One slide's attention scores [n] against its rare patch indices [k] -> (mass, enrichment,
  top-k hit rate) (module docstring)."""
  total = float(scores.sum())
  mass = float(scores[rare].sum()) / total if total > 0 else 0.0
  top = np.argsort(-scores, kind="stable")[:rare.size]
  return {"rare_mass": mass, "rare_enrichment": mass * scores.size / rare.size,
          "rare_top_hit": float(np.isin(top, rare).mean())}


def rare_attention(run, state, patients: np.ndarray, truth: dict) -> dict[str, float]:
  """Mean `attention_on_rare` over the slides with the pattern of the patient indices
  `patients`; {} when the model has no attention."""
  model = state.model(train=False)
  if not attention.supports(model):
    return {}
  rows = []
  for index in patients:
    for item in slides_lib.patient_scores(model, run.cohort, int(index),
                                          bucket_sizes=run.config.data.bucket_sizes,
                                          slides_dir="", default_patch_size=256):
      t = truth[item.slide_id]
      if t["pattern"] and t["rare"].size:
        rows.append(attention_on_rare(np.asarray(item.attention, np.float64), t["rare"]))
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def max_pooled(cohort: cohort_lib.Cohort) -> np.ndarray:
  """[P, D] each patient's per-feature maximum over its patches (all slides)."""
  return np.stack([cohort.bag(i).features().max(axis=0) for i in range(len(cohort.patients))])


def references(run, truth: dict) -> dict:
  """Mean- and max-pooled logistic regressions and the oracle AUC on the run's split."""
  cohort = run.cohort
  splits = {k: cohort.split(k) for k in ("train", "val", "test")}
  labels = np.asarray(cohort.labels)
  out = {}
  for name, x in (("mean_pooled", reference.mean_pooled(cohort)), ("max_pooled", max_pooled(cohort))):
    scores, _ = reference.fit_logistic(x, labels, splits, cohort.num_classes)
    out[name] = {k: scores[k] for k in ("val_auc", "test_auc", "test_accuracy")}
  oracle = np.array([max(truth[s]["oracle"] for s in cohort.patients[i].slide_ids)
                     for i in splits["test"]])
  out["oracle_test_auc"] = float(sk_metrics.roc_auc_score(labels[splits["test"]] == 1, oracle))
  return out


def run_one(config, workdir: str, truth: dict) -> dict:
  """The method's stages with the rare-patch attention observed after each fine-tuning epoch;
  the test results, the references and the final attention on the test patients' rare slides."""
  run = run_lib.open_run(config, workdir)
  val = run.cohort.split("val")
  observe = lambda state, epoch: rare_attention(run, state, val, truth)
  results = {}
  try:
    for name in config.stages:
      if name == "finetune":
        finetune_stage.finetune(run, observe)
      elif name == "test":
        results = dict(evaluate.test(run).results)
      else:
        run_lib.TRAINING[name](run)
  finally:
    run.writer.close()
  best = restored(run.build(), workdir, evaluate.BEST)
  scalars = {k: v for k, v in results.items() if isinstance(v, (int, float))}
  return {**scalars, "test_auc": results.get("test_auc"), "val_auc": results.get("val_auc"),
          "test_rare_attention": rare_attention(run, best, run.cohort.split("test"), truth),
          "references": references(run, truth), "curves": curves(workdir)}


def curves(workdir: str) -> dict[str, list]:
  """Per fine-tuning epoch: mean training loss, validation AUC and the observed attention."""
  out = {"train_loss": [], "val_auc": [], "rare_mass": [], "rare_enrichment": [],
         "rare_top_hit": []}
  losses = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if r["stage"] == "finetune" and "loss" in r:
        losses.append(r["loss"])
      elif r["stage"] == "finetune_val":
        out["train_loss"].append(float(np.mean(losses)) if losses else None)
        out["val_auc"].append(r["auc"])
        losses = []
      elif r["stage"] == "finetune_observed":
        for k in ("rare_mass", "rare_enrichment", "rare_top_hit"):
          if k in r:
            out[k].append(r[k])
  return out


def load_runs(out: str) -> dict[str, dict[int, dict]]:
  """{run name: {seed: needle.json}} of every finished run under OUT/runs."""
  runs = {}
  root = os.path.join(out, "runs")
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    for seed_dir in sorted(os.listdir(os.path.join(root, name))):
      path = os.path.join(root, name, seed_dir, "needle.json")
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          runs.setdefault(name, {})[int(seed_dir.removeprefix("seed_"))] = json.load(f)
  return runs


def summary(runs: dict[str, dict[int, dict]], baseline: str = "abmil") -> dict:
  """Per run name: mean and SD over seeds of the test AUC, the test slides' attention on the rare
  patches and the references of the same splits; the paired test-AUC difference to `baseline`."""
  out = {}
  stat = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1  # noqa: E731
                    else None, "n": len(v)}
  for name, by_seed in runs.items():
    auc = {s: r["test_auc"] for s, r in by_seed.items()}
    row = {"test_auc": stat(list(auc.values())), "per_seed": auc}
    for key in ("rare_mass", "rare_enrichment", "rare_top_hit"):
      vals = [r["test_rare_attention"][key] for r in by_seed.values() if r["test_rare_attention"]]
      if vals:
        row[key] = stat(vals)
    for key in ("test_slide_only_auc",):
      vals = [r[key] for r in by_seed.values() if key in r]
      if vals:
        row[key] = stat(vals)
    if baseline in runs and name != baseline:
      row[f"minus_{baseline}"] = reference_rows.paired_difference(
          auc, {s: r["test_auc"] for s, r in runs[baseline].items()})
    out[name] = row
  refs = {}
  for by_seed in runs.values():
    for s, r in by_seed.items():
      refs.setdefault(s, r["references"])
  out["references"] = {
      "mean_pooled_test_auc": stat([r["mean_pooled"]["test_auc"] for r in refs.values()]),
      "max_pooled_test_auc": stat([r["max_pooled"]["test_auc"] for r in refs.values()]),
      "oracle_test_auc": stat([r["oracle_test_auc"] for r in refs.values()])}
  return out


def table(out: str) -> str:
  """needle.md: mean +- SD over seeds per run, the paired difference to ABMIL, the references."""
  rows = ["| run | seeds | test AUC | - ABMIL (paired, 95% CI) | rare mass | enrichment | "
          "top-k hit |", "|" + "---|" * 7]
  s = summary(load_runs(out))
  pm = lambda d: "" if d is None else (f"{d['mean']:.3f}" + (  # noqa: E731
      f" ± {d['std']:.3f}" if d.get("std") is not None else ""))
  for name, row in s.items():
    if name == "references":
      continue
    diff = row.get("minus_abmil")
    d = "" if not diff or diff["mean"] is None else f"{diff['mean']:+.3f}" + (
        f" [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff["ci95"] else "")
    rows.append(f"| {name} | {row['test_auc']['n']} | {pm(row['test_auc'])} | {d} | "
                f"{pm(row.get('rare_mass'))} | {pm(row.get('rare_enrichment'))} | "
                f"{pm(row.get('rare_top_hit'))} |")
  ref = s.get("references", {})
  for key, label in (("mean_pooled_test_auc", "logistic regression, mean-pooled features"),
                     ("max_pooled_test_auc", "logistic regression, max-pooled features"),
                     ("oracle_test_auc", "oracle (knows the pattern's direction)")):
    if key in ref:
      rows.append(f"| {label} | {ref[key]['n']} | {pm(ref[key])} | | | | |")
  return "\n".join(rows) + "\n"


def landmark_dilution(config, workdir: str, truth: dict, landmarks=(8, 32, 128, 512),
                      max_patients: int = 30) -> dict:
  """The first Nyström layer's CLS row of a trained GiMP slide branch (`workdir`'s best
  checkpoint), read exactly and through m landmarks with the same weights: the share of CLS's
  attention on the rare patches (mean over heads, and its best head), over the test patients with
  the pattern. {"exact" | m: {"mass", "best_head_mass"}}."""
  run = run_lib.Run(config, workdir, cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(
      config)))
  model = restored(run.build(), workdir, evaluate.BEST).model(train=False)
  agg, layer = model.aggregator, model.aggregator.layers[0]
  variants = [("exact", True, layer.attn.num_landmarks)] + [(m, False, m) for m in landmarks]
  out = {name: {"mass": [], "best_head_mass": []} for name, _, _ in variants}
  done = 0
  for index in run.cohort.split("test"):
    patient = run.cohort.patients[int(index)]
    bag = run.cohort.bag(int(index))
    rare = np.concatenate([truth[s]["rare"] + bag.offsets[k]
                           for k, s in enumerate(patient.slide_ids)])
    if not rare.size or done >= max_patients:
      continue
    done += 1
    h = agg._embed(jnp.asarray(bag.features()[None]), None)  # pylint: disable=protected-access
    h = jnp.concatenate([jnp.broadcast_to(agg.cls_token[...], (1, 1, h.shape[-1])), h], 1)
    mask = jnp.ones(h.shape[:2], bool)
    for name, exact, m in variants:
      layer.attn.exact_cls, layer.attn.num_landmarks = exact, m
      _, (left, attn3) = layer(h, mask, return_attention=True)
      row = np.asarray((left[:, :, :1] @ attn3)[0, :, 0, 1:], np.float64)  # [H, N]
      share = row[:, rare].sum(1) / row.sum(1)
      out[name]["mass"].append(float(share.mean()))
      out[name]["best_head_mass"].append(float(share.max()))
  return {str(k): {kk: float(np.mean(vv)) for kk, vv in v.items()} for k, v in out.items()}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cohort", required=True, help="a rare-instance cohort (synthetic --preset rare)")
  p.add_argument("--out", required=True)
  p.add_argument("--methods", default="gimp_image_only", help="comma-separated method configs")
  p.add_argument("--seeds", default="0")
  p.add_argument("--size", default="cpu")
  p.add_argument("--label", default="", help="run folder name (default: the method)")
  p.add_argument("--dilution", action="store_true",
                 help="after the runs: each GiMP run's first-layer CLS row, exact and through "
                      "m landmarks (landmark_dilution), to OUT/dilution.json")
  args, rest = p.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  if len(overrides) != len(rest):
    p.error(f"unrecognized arguments: {rest}")
  logging.set_verbosity(logging.WARNING)
  paths = {"features_dir": os.path.join(args.cohort, "features"),
           "expression": os.path.join(args.cohort, "expression.tsv"),
           "labels": os.path.join(args.cohort, "labels.csv")}
  truth = read_truth(os.path.join(args.cohort, "rare_truth.csv"))
  for seed in [int(s) for s in args.seeds.split(",")]:
    for name in args.methods.split(","):
      workdir = os.path.join(args.out, "runs", args.label or name, f"seed_{seed}")
      done = os.path.join(workdir, "needle.json")
      if os.path.exists(done):
        continue
      config = tables.make_config(name, args.size, seed, paths, overrides)
      result = run_one(config, workdir, truth)
      with open(done, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
      print(f"{args.label or name} seed {seed}: test AUC {result['test_auc']:.3f}, "
            f"rare mass {result['test_rare_attention'].get('rare_mass', float('nan')):.3f}",
            flush=True)
  if args.dilution:
    found = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
      for name in args.methods.split(","):
        config = tables.make_config(name, args.size, seed, paths, overrides)
        workdir = os.path.join(args.out, "runs", args.label or name, f"seed_{seed}")
        found[f"{args.label or name}/seed_{seed}"] = landmark_dilution(config, workdir, truth)
    with open(os.path.join(args.out, "dilution.json"), "w", encoding="utf-8") as f:
      json.dump(found, f, indent=1)
    print(json.dumps(found, indent=1))
  with open(os.path.join(args.out, "needle.md"), "w", encoding="utf-8") as f:
    f.write(table(args.out))
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary(load_runs(args.out)), f, indent=1)


if __name__ == "__main__":
  main()
