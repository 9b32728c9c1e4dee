"""The `probe` stage: few-shot linear probing of a frozen slide encoder (TANGLE's protocol).

Every slide of the cohort is embedded once by the frozen slide encoder (`model.embed_slide`, in
eval mode: GiMP's CLS_img, TANGLE's ABMIL embedding, ...), one bag at a time. For each k of
`probe.shots`, `probe.draws` times, k labelled training patients per class are drawn (without
replacement, from a NumPy generator seeded by (seed, k, draw)) and scikit-learn's
LogisticRegression (C = 1, lbfgs, `probe.max_iter`) is fitted on their embeddings; "all" fits once
on every labelled training patient. Balanced accuracy and ROC AUC on the labelled validation and
test patients are reported as mean ± std over the draws (population std, as TANGLE's
run_few_shot_eval.py). Nothing is selected: the validation numbers are reported beside the test
ones, not used.

The encoder's weights: the run's `pretrain` checkpoint, else its best fine-tuned one, else
`init_from`'s pre-training, else the freshly initialised encoder ("no pre-training").
"""

from collections.abc import Sequence
import json
import os

from absl import logging
from flax import nnx
import jax
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from gimp_jax import metrics as metrics_lib
from gimp_jax.checkpoint import StageCheckpoints
from gimp_jax.data import pipeline
from gimp_jax.train.state import create_state

PROBE_STREAM = 0x70726F  # separates the probe's draws from the other streams of the seed
FILENAME = "probe.json"


@jax.jit
def _embed(model, patches: jax.Array, patch_mask: jax.Array) -> jax.Array:
  return model.embed_slide(patches, patch_mask)


def embed_slides(model, cohort, bucket_sizes, prefetch: int = 2) -> np.ndarray:
  """Slide embeddings [P, E] float32 of every patient (cohort order), one bag per call.

  model: in eval mode, with `embed_slide(patches [1, N, D], patch_mask [1, N]) -> [1, E]`.
  """
  out = []
  for batch in pipeline.bag_batches(cohort, "all", batch_size=1, bucket_sizes=bucket_sizes,
                                    prefetch=prefetch):
    out.append(np.asarray(_embed(model, batch["patches"], batch["patch_mask"])))
  return np.concatenate(out).astype(np.float32)


def draw_shots(labels: np.ndarray, k: int, num_classes: int, rng: np.random.Generator
               ) -> np.ndarray | None:
  """Indices of k examples per class drawn without replacement (class order), or None when a class
  has fewer than k. labels: [N] ints in [0, C)."""
  picked = []
  for c in range(num_classes):
    pool = np.flatnonzero(labels == c)
    if pool.size < k:
      return None
    picked.append(rng.choice(pool, size=k, replace=False))
  return np.concatenate(picked)


def probe_scores(x: np.ndarray, y: np.ndarray, evals: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 num_classes: int, max_iter: int) -> dict[str, dict[str, float]]:
  """One logistic regression fitted on (x [n, E], y [n]) and scored on each eval set.

  Returns:
    {eval name: {"balanced_accuracy", "auc"}} (AUC as `metrics.roc_auc`: of class 1 when binary).
  """
  clf = LogisticRegression(max_iter=max_iter).fit(x, y)
  out = {}
  for name, (ex, ey) in evals.items():
    probs = np.zeros((ex.shape[0], num_classes))
    probs[:, clf.classes_] = clf.predict_proba(ex)
    out[name] = {"balanced_accuracy": float(balanced_accuracy_score(ey, probs.argmax(1))),
                 "auc": metrics_lib.roc_auc(ey, probs)}
  return out


def few_shot(x: np.ndarray, y: np.ndarray, evals: dict[str, tuple[np.ndarray, np.ndarray]], *,
             shots, draws: int, seed: int, num_classes: int, max_iter: int) -> dict:
  """The probe over k in `shots` (`draws` draws each) and "all" (one fit).

  Args:
    x: [n, E] training embeddings; y: [n] their labels.
    evals: name -> (embeddings [m, E], labels [m]).

  Returns:
    {k (str): {"draws": number of fits, "skipped": reason or absent,
               eval name: {metric: {"mean", "std", "values"}}}}.
  """
  result = {}
  for k in [*shots, "all"]:
    runs = []
    for d in range(1 if k == "all" else draws):
      if k == "all":
        idx = np.arange(y.size)
      else:
        idx = draw_shots(y, int(k), num_classes,
                         np.random.default_rng([PROBE_STREAM, seed, int(k), d]))
        if idx is None:
          break
      runs.append(probe_scores(x[idx], y[idx], evals, num_classes=num_classes,
                               max_iter=max_iter))
    entry = {"draws": len(runs)}
    if not runs:
      entry["skipped"] = f"a class has fewer than {k} labelled training patients"
    for name in evals if runs else ():
      entry[name] = {}
      for metric in ("balanced_accuracy", "auc"):
        values = [r[name][metric] for r in runs]
        entry[name][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                               "values": values}
    result[str(k)] = entry
  return result


def _encoder_params(model, workdir: str, stages: Sequence[str], init_from: str):
  """The weights the probe freezes (see the module docstring) of a run in `workdir` with `stages`
  and `init_from` (config.init_from), and where they came from."""
  sources = []
  if "pretrain" in stages:
    sources.append((workdir, "pretrain"))
  elif "finetune" in stages:
    sources.append((workdir, "finetune_best"))
  elif init_from:
    sources.append((init_from, "pretrain"))
  params = create_state(model).params
  for source, stage in sources:
    ckpt = StageCheckpoints(source, stage, read_only=True)
    try:
      restored = ckpt.restore_params(params)
    finally:
      ckpt.close()
    if restored is None:
      raise FileNotFoundError(f"probe: no {stage} checkpoint in {source}")
    return restored, stage if source == workdir else f"{source}:{stage}"
  return params, "initialisation (no pre-training)"


def _has_slide_encoder(model) -> bool:
  """Whether the model's class defines `embed_slide` (the protocol the probe reads)."""
  return callable(getattr(type(model), "embed_slide", None))


def encoder_problems(model: nnx.Module, method: str, stages: Sequence[str]) -> list[str]:
  """The probe stage on a model without a slide encoder (ABMIL, MCAT, ...), one line; [] when
  `stages` do not include it or `model` (method `method`'s; shapes only will do) has one."""
  if "probe" not in stages or _has_slide_encoder(model):
    return []
  return [f"config: stages: 'probe' needs a slide encoder to freeze (a model with embed_slide: "
          f"gimp, tangle, ...), and method {method!r} ({type(model).__name__}) has none; "
          "remove 'probe' from stages"]


def probe(run) -> dict:
  """The stage (`run`: a `train.run.Run`): embeds every slide with the frozen encoder, probes,
  writes `probe.json`; returns its content (results.json["probe"])."""
  cfg = run.config
  model = run.build()
  if not _has_slide_encoder(model):
    raise ValueError(encoder_problems(model, cfg.method, cfg.stages)[0])
  params, source = _encoder_params(model, run.workdir, cfg.stages, cfg.init_from)
  frozen = create_state(model).replace(params=params).model(train=False)
  emb = embed_slides(frozen, run.cohort, cfg.data.bucket_sizes, cfg.data.prefetch)
  labels = run.cohort.labels

  def labelled(split):
    idx = run.cohort.split(split)
    idx = idx[labels[idx] >= 0]
    return emb[idx], labels[idx]
  x, y = labelled("train")
  evals = {s: labelled(s) for s in ("val", "test") if labelled(s)[1].size}
  result = few_shot(x, y, evals, shots=tuple(cfg.probe.shots), draws=cfg.probe.draws,
                    seed=cfg.seed, num_classes=run.num_classes, max_iter=cfg.probe.max_iter)
  summary = {"encoder": source, "train_patients": int(y.size), "embedding_dim": int(emb.shape[1]),
             "shots": result}
  if jax.process_index() == 0:  # of a job of several processes, process 0 writes
    with open(os.path.join(run.workdir, FILENAME), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  for k, entry in result.items():
    if "test" in entry:
      t = entry["test"]
      logging.info("probe k=%s (%d draws): test balanced accuracy %.4f ± %.4f, AUC %.4f ± %.4f",
                   k, entry["draws"], t["balanced_accuracy"]["mean"],
                   t["balanced_accuracy"]["std"], t["auc"]["mean"], t["auc"]["std"])
  return summary
