"""Stacking: the fine-tuned model and the penalised linear reference (`gimp_jax.reference`)
blended with one weight w chosen on validation, so that a run always reports what the better of
the two, or their mix, gives on test.

- classification: log p = (1 - w) log p_model + w log p_linear, renormalised (a product of
  experts: w = 0 is the model, w = 1 the linear model); w minimises the validation cross-entropy.
- survival: risk = (1 - w) z_model + w z_linear, each risk standardised by its own validation mean
  and standard deviation (the two scales are unrelated); w maximises the validation C-index.
Ties go to the smaller w (the model). w is read from `WEIGHTS`; test is scored once with it.
The validation scores of the model come from the epoch chosen on the same patients, so the
stacked validation numbers are optimistic; the test numbers are not.

The test stage keeps the linear fit, w and (survival) the validation risks that standardise the
two scores in the workdir (`FILE`, `save`), with the fingerprint of the fine-tuned parameters
they were chosen for; `gimp_jax.predict` blends new patients' predictions with them (`apply`),
and refuses a file kept for other parameters (the finetune stage rerun without the test stage).
"""

import hashlib
from typing import Any

import jax
import numpy as np
from sklearn.metrics import log_loss

from gimp_jax import metrics as metrics_lib
from gimp_jax import reference

FILE = "linear_reference.npz"  # in the workdir: the linear fit and w, for `gimp_jax.predict`

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # the linear model's share, 0 to 1
_EPS = 1e-12  # probabilities floored before the log (a float32 softmax can reach 0)


def blend_probs(model: np.ndarray, linear: np.ndarray, w: float) -> np.ndarray:
  """[N, C] probabilities of the product of experts p_model^(1 - w) p_linear^w, renormalised."""
  logp = (1.0 - w) * np.log(np.maximum(model, _EPS)) + w * np.log(np.maximum(linear, _EPS))
  logp -= logp.max(1, keepdims=True)
  p = np.exp(logp)
  return p / p.sum(1, keepdims=True)


def blend_risks(model: np.ndarray, linear: np.ndarray, w: float, model_val: np.ndarray,
                linear_val: np.ndarray) -> np.ndarray:
  """[N] (1 - w) z_model + w z_linear, each risk standardised by its validation [n_val] scores."""
  def z(r, ref):
    sd = float(np.std(ref))
    return (np.asarray(r, np.float64) - float(np.mean(ref))) / (sd if sd > 0 else 1.0)
  return (1.0 - w) * z(model, model_val) + w * z(linear, linear_val)


def stack(task: str, model: dict[str, dict], linear: dict[str, np.ndarray]) -> dict[str, Any]:
  """The stacked model's scalars for results.json.

  Args:
    task: "classification" or "survival".
    model: "val" / "test" -> `evaluate.predict`'s output (label and probs, or time, censorship
      and risk), rows in any order.
    linear: "val" / "test" -> the linear reference's probabilities [n, C] or risks [n], rows in
      the same order as `model`'s.

  Returns:
    {"stack_weight": w, "stack_<split>_<metric>" for val and test (accuracy, auc, f1 or c_index)}.
  """
  val = model["val"]
  if task == "survival":
    def scores(split, w):
      risk = blend_risks(model[split]["risk"], linear[split], w, val["risk"], linear["val"])
      return metrics_lib.survival_metrics(model[split]["time"], model[split]["censorship"], risk)
    w = min(WEIGHTS, key=lambda v: (-np.nan_to_num(scores("val", v)["c_index"]), v))
  else:
    def scores(split, w):
      return metrics_lib.classification_metrics(
          model[split]["label"], blend_probs(model[split]["probs"], linear[split], w))
    classes = np.arange(val["probs"].shape[1])
    w = min(WEIGHTS, key=lambda v: (log_loss(
        val["label"], blend_probs(val["probs"], linear["val"], v), labels=classes), v))
  keys = ("c_index",) if task == "survival" else ("accuracy", "auc", "f1")
  out = {"stack_weight": float(w)}
  for split in ("val", "test"):
    got = scores(split, w)
    out.update({f"stack_{split}_{k}": float(got[k]) for k in keys})
  return out


def fingerprint(params) -> str:
  """SHA-256 of a parameter tree's paths, shapes, dtypes and bytes (host arrays)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    x = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{x.shape}:{x.dtype};".encode())
    digest.update(np.ascontiguousarray(x).tobytes())
  return digest.hexdigest()


def save(path: str, fit: reference.LinearFit, w: float, model_val: dict,
         linear_val: np.ndarray, model_fingerprint: str) -> None:
  """Keeps `fit`, w, the `fingerprint` of the model's parameters and, for survival, the
  validation risks of the model (`model_val`, `evaluate.predict`'s output) and of the linear
  model ([n_val]) in `path`."""
  extra = {"stack_weight": np.float64(w), "model_fingerprint": np.str_(model_fingerprint)}
  if fit.task == "survival":
    extra.update(model_val_risk=np.asarray(model_val["risk"], np.float64),
                 linear_val_risk=np.asarray(linear_val, np.float64))
  fit.save(path, **extra)


def kept_for(path: str) -> str:
  """The fingerprint of the parameters the file `save` wrote was chosen for."""
  with np.load(path) as f:
    return str(f["model_fingerprint"]) if "model_fingerprint" in f.files else ""


def apply(path: str, model: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
  """The stacked predictions of new patients.

  Args:
    path: the file `save` wrote.
    model: the model's probabilities [N, C] or risks [N].
    x: [N, F] the linear model's inputs (`reference.inputs(...)[reference.MAIN]`).

  Returns:
    (stacked probabilities [N, C] or standardised risks [N], w).
  """
  fit, extra = reference.LinearFit.load(path)
  w = float(extra["stack_weight"])
  linear = fit.predict(x)
  if fit.task == "survival":
    return blend_risks(model, linear, w, extra["model_val_risk"], extra["linear_val_risk"]), w
  return blend_probs(model, linear, w), w
