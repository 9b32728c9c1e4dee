"""Chooses `pretrain.pinv_grad` on validation: GiMP pre-trained with the pseudo-inverse gradient
back-propagated through its iterations ("unrolled") and with the implicit gradient ("implicit"),
paired by seed.

  nice -n 19 python -m experiments.pinv_grad --out experiments/out/pinv_grad --seeds 0,1,2,3,4 \
      --synthetic.patients=300

Per seed, the `gimp` method's config at `--size` (default cpu) runs gene_pretrain -> pretrain ->
probe once per arm, through `experiments.tables` (`run_all`: finished runs are skipped, so an
interrupted call resumes). The arms differ only in `pretrain.pinv_grad`: same split,
initialisation, windows and data order. (The results in experiments/results/pinv_grad/ were run
when pre-training read `model.pinv_grad`, which the arms then set; no stage after pre-training ran.)
The comparison reads the validation split only:
- L_pre (and L_rec, L_tri) of the pre-trained model on the validation patients' MPM windows (eval
  mode, the windows of epoch 0: the same windows for both arms), cached as `val_pretrain.json`;
- the probe's validation balanced accuracy and AUC (frozen CLS_img, logistic regression, k = all
  and k = 10).
The probe also scores the test split; this script never reads those numbers.
Writes OUT/report.md (paired differences implicit - unrolled, mean ± std over seeds, and the
pre-training loss curves) and OUT/summary.json. `--config.*` / `--synthetic.*` as in
`experiments.tables`.
"""

import json
import os
import sys
import time

import jax
import numpy as np

from experiments import reference
from experiments import tables

ARMS = ("unrolled", "implicit")
VAL_FILE = "val_pretrain.json"
GRAD_FILE = "gradient_error.json"
VAL_KEYS = ("loss", "rec_loss", "tri_loss", "img_tri_loss")
PROBE_SHOTS = ("all", "10")


def val_pretrain_loss(config, workdir: str) -> dict[str, float]:
  """The pre-training objective's metrics (VAL_KEYS) of the run's `pretrain` checkpoint (the run
  of `config`) on the validation split's windows, eval mode, averaged over windows; cached in
  workdir/VAL_FILE."""
  path = os.path.join(workdir, VAL_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  from gimp_jax import methods  # pylint: disable=g-import-not-at-top
  from gimp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from gimp_jax import preflight  # pylint: disable=g-import-not-at-top
  from gimp_jax.train.state import create_state, restore_params  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  cohort = preflight.preflight(config, workdir)
  model = methods.build(config, cohort.gene_names, results["num_classes"], config.seed)
  state = create_state(model)
  state = state.replace(params=restore_params(workdir, "pretrain", model))
  loss_fn = jax.jit(lambda s, b: loss_of(s, b, methods.pretrain_loss(config)))
  p = config.pretrain
  sums, count = {}, 0
  for batch in pipeline.pretrain_batches(cohort, "val", batch_size=p.batch_size, window=p.window,
                                         ratio=p.mask_ratio, seed=config.seed, epoch=0,
                                         drop_remainder=False, prefetch=0):
    n = len(batch["label"])
    metrics = loss_fn(state, batch)
    for k in VAL_KEYS:
      if k in metrics:
        sums[k] = sums.get(k, 0.0) + n * float(metrics[k])
    count += n
  out = {k: v / count for k, v in sums.items()}
  out["windows"] = count
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  os.replace(path + ".tmp", path)
  return out


def gradient_error(config, workdir: str) -> float:
  """Relative L2 distance between the implicit and the unrolled gradient of L_pre (eval mode) over
  the trainable parameters, at the run's pre-trained parameters, on the first validation batch;
  cached in workdir/GRAD_FILE. (At initialisation, paper model: 3.7%, experiments.bench.profile.)"""
  path = os.path.join(workdir, GRAD_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)["relative_l2"]
  from gimp_jax import methods  # pylint: disable=g-import-not-at-top
  from gimp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from gimp_jax.train import optim  # pylint: disable=g-import-not-at-top
  from gimp_jax import preflight  # pylint: disable=g-import-not-at-top
  from gimp_jax.train.state import create_state, restore_params  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    num_classes = json.load(f)["num_classes"]
  cohort = preflight.preflight(config, workdir)
  p = config.pretrain
  batch = next(pipeline.pretrain_batches(cohort, "val", batch_size=p.batch_size, window=p.window,
                                         ratio=p.mask_ratio, seed=config.seed, epoch=0,
                                         drop_remainder=False, prefetch=0))
  grads = {}
  for mode in ARMS:  # the model built directly: model.pinv_grad is what its layers read
    cfg = config.copy_and_resolve_references()
    cfg.model.pinv_grad = mode
    model = methods.build(cfg, cohort.gene_names, num_classes, cfg.seed)
    state = create_state(model)
    params = restore_params(workdir, "pretrain", model)
    loss_fn = methods.pretrain_loss(cfg)
    grads[mode] = optim.flat_paths(jax.jit(jax.grad(
        lambda q, s=state, f=loss_fn: f(s.replace(params=q).model(train=False), batch)[0]))(
            params))
  keys = [k for k in grads["unrolled"] if not k.startswith("gene_encoder/")]
  num = sum(float(np.sum((grads["unrolled"][k] - grads["implicit"][k]) ** 2)) for k in keys)
  den = sum(float(np.sum(grads["unrolled"][k] ** 2)) for k in keys)
  err = (num / den) ** 0.5
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"relative_l2": err}, f)
  return err


def loss_of(state, batch, loss_fn) -> dict:
  """The objective's metrics in eval mode (no dropout)."""
  return loss_fn(state.model(train=False), batch)[1]


def probe_val(workdir: str) -> dict[str, float]:
  """{"val_bacc_k=<k>", "val_auc_k=<k>"} from the run's probe.json (validation entries only)."""
  with open(os.path.join(workdir, "probe.json"), encoding="utf-8") as f:
    shots = json.load(f)["shots"]
  out = {}
  for k in PROBE_SHOTS:
    val = shots[k]["val"]
    out[f"val_bacc_k={k}"] = val["balanced_accuracy"]["mean"]
    out[f"val_auc_k={k}"] = val["auc"]["mean"]
  return out


def curves(workdir: str) -> dict[str, list[float]]:
  """Per-epoch training means of L_pre, L_rec and L_tri from results.json's pretrain history."""
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    history = json.load(f)["stages"]["pretrain"]["history"]
  return {k: [h[k] for h in history] for k in ("loss", "rec_loss", "tri_loss")}


def stage_seconds(workdir: str) -> dict[str, float]:
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    stages = json.load(f)["stages"]
  return {k: stages[k].get("median_step_s") for k in ("pretrain",) if k in stages}


def report(args, seeds, per_run, wall_s: float, cmd: str) -> tuple[str, dict]:
  """The Markdown report and the summary from {(arm, seed): {"val": ..., "curves": ...}}."""
  metrics = [f"val_{k}" for k in VAL_KEYS] + [f"{m}_k={k}" for k in PROBE_SHOTS
                                              for m in ("val_bacc", "val_auc")]
  lines = ["# `pretrain.pinv_grad`: unrolled vs implicit, chosen on validation", "",
           f"Command: `{cmd}`  ", f"Config: `gimp` at size {args.size}, stages gene_pretrain -> "
           f"pretrain -> probe; overrides {args.config or 'none'}; cohort "
           f"{args.synthetic or 'default synthetic'}.  ",
           f"Seeds: {', '.join(map(str, seeds))} (a seed fixes split, initialisation, windows; "
           "both arms share it).  ",
           f"Wall time of this call: {wall_s / 60:.1f} min; load average at the end "
           f"{tuple(round(x, 2) for x in os.getloadavg())}.", "",
           "Validation only: L_pre and its terms of the pre-trained model on the validation "
           "windows (eval mode, lower is better); the probe's validation balanced accuracy and "
           "AUC (higher is better). Test numbers exist in the runs' probe.json and are not read.",
           "", "| metric | unrolled (mean ± std) | implicit (mean ± std) | implicit - unrolled: "
           "mean ± std (paired) | 95% interval | per seed |", "|---|---|---|---|---|---|"]
  summary = {"command": cmd, "seeds": seeds, "wall_s": wall_s, "runs": {}, "paired": {}}
  for key, value in per_run.items():
    summary["runs"][f"{key[0]}/seed_{key[1]}"] = value
  for m in metrics:
    vals = {arm: {s: per_run[(arm, s)]["val"][m] for s in seeds
                  if (arm, s) in per_run and m in per_run[(arm, s)]["val"]} for arm in ARMS}
    if not all(vals.values()):
      continue
    d = reference.paired_difference(vals["implicit"], vals["unrolled"])
    summary["paired"][m] = d

    def ms(v):
      a = np.array(list(v.values()))
      return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"
    ci = "—" if d["ci95"] is None else f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
    per = ", ".join(f"{s}: {v:+.4f}" for s, v in d["per_seed"].items())
    lines.append(f"| {m} | {ms(vals['unrolled'])} | {ms(vals['implicit'])} | "
                 f"{d['mean']:+.4f} ± {d['std'] or 0.0:.4f} | {ci} | {per} |")
  lines += ["", "## Pre-training loss curves (training windows, per-epoch mean, mean over seeds)",
            "", "| epoch | " + " | ".join(f"{t} {arm}" for t in ("L_pre", "L_rec", "L_tri")
                                            for arm in ARMS) + " |",
            "|---|" + "---|" * 6]
  epochs = min(len(v["curves"]["loss"]) for v in per_run.values()) if per_run else 0
  for e in range(epochs):
    cells = []
    for t in ("loss", "rec_loss", "tri_loss"):
      for arm in ARMS:
        got = [per_run[(arm, s)]["curves"][t][e] for s in seeds if (arm, s) in per_run]
        cells.append(f"{np.mean(got):.4f}" if got else "—")
    lines.append(f"| {e} | " + " | ".join(cells) + " |")
  lines += ["", "Implicit vs unrolled gradient of L_pre at each run's pre-trained parameters "
            "(relative L2 over the trainable parameters, first validation batch, eval mode): "
            + ", ".join(f"{arm}/seed {s}: {per_run[(arm, s)]['gradient_error']:.4f}"
                        for arm in ARMS for s in seeds if (arm, s) in per_run), ""]
  lines += ["", "Median pre-training step (s, wall, the machine shared): " + ", ".join(
      f"{arm}/seed {s}: {per_run[(arm, s)]['step_s'].get('pretrain', float('nan')):.3f}"
      for arm in ARMS for s in seeds if (arm, s) in per_run), ""]
  return "\n".join(lines), summary


def main(argv=None) -> None:
  args = tables.parse_args(argv)
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  paths = tables.cohort_paths(args)
  runs = {(arm, seed): tables.probe_config(tables.make_config(
              "gimp", args.size, seed, paths, args.config + [f"--config.pretrain.pinv_grad={arm}"]))
          for seed in seeds for arm in ARMS}
  outcomes = tables.run_all(runs, args.out, args.workers)
  per_run = {}
  for key, outcome in outcomes.items():
    if not outcome.get("ok"):
      print(f"{key}: {outcome.get('error')}", flush=True)
      continue
    workdir = tables.run_dir(args.out, *key)
    val = {f"val_{k}": v for k, v in val_pretrain_loss(runs[key], workdir).items() if k in VAL_KEYS}
    per_run[key] = {"val": {**val, **probe_val(workdir)}, "curves": curves(workdir),
                    "step_s": stage_seconds(workdir),
                    "gradient_error": gradient_error(runs[key], workdir)}
  cmd = " ".join(["python -m experiments.pinv_grad", *(argv if argv is not None else sys.argv[1:])])
  text, summary = report(args, seeds, per_run, time.time() - start, cmd)
  with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, default=float)
  print(text, flush=True)


if __name__ == "__main__":
  main()
