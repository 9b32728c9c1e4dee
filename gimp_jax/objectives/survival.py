"""Survival objectives (config.task = "survival"): discrete-time NLL-surv and Cox partial
likelihood, the risk score each head gives, and `bag_loss`, the supervised bag loss of either task.

Discrete time (Zadeh & Schmid 2020, as MCAT and PORPOISE): follow-up is cut into k bins
(`data/survival.py`), the head gives k logits, hazard h_j = sigmoid(logit_j) = P(event in bin j |
alive at its start), survival S_j = prod_{i <= j} (1 - h_i), and with bin y and censorship c
(1 = censored):
  uncensored term  u = -(1 - c) [log S_{y-1} + log h_y]     (S_{-1} = 1)
  censored term    e = -c log S_y
  loss = mean((1 - alpha) (u + e) + alpha u).
The risk is -sum_j S_j (MCAT's ranking score: higher = shorter survival).

Cox (config.survival.loss = "cox"): one logit is the log relative risk r; the negative partial
log-likelihood with Breslow's ties, averaged over the events of the batch:
  -1/E sum_{i: event} [r_i - log sum_{j: t_j >= t_i} exp(r_j)].
It compares cases within a batch, so it needs batches of several cases with events.

Everything is computed in float32 from log-sigmoids (no clipping of probabilities).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gimp_jax import losses

LOSSES = ("nll", "cox")


def nll_surv(logits: jax.Array, bins: jax.Array, censorship: jax.Array,
             alpha: float = 0.0) -> jax.Array:
  """Discrete-time survival NLL (module docstring).

  Args:
    logits: [B, k] hazard logits.
    bins: [B] int time bin in [0, k).
    censorship: [B] 1 = censored, 0 = event observed.
    alpha: weight moved onto the uncensored term.

  Returns:
    Scalar mean loss.
  """
  logits = logits.astype(jnp.float32)
  c = censorship.astype(jnp.float32)
  log_h = jax.nn.log_sigmoid(logits)                       # log h_j
  log_surv = jnp.cumsum(jax.nn.log_sigmoid(-logits), -1)   # log S_j
  log_surv_prev = jnp.concatenate([jnp.zeros_like(log_surv[:, :1]), log_surv[:, :-1]], -1)
  take = lambda x: jnp.take_along_axis(x, bins[:, None].astype(jnp.int32), -1)[:, 0]
  uncensored = -(1.0 - c) * (take(log_surv_prev) + take(log_h))
  censored = -c * take(log_surv)
  return jnp.mean((1.0 - alpha) * (uncensored + censored) + alpha * uncensored)


def cox_partial_likelihood(log_risk: jax.Array, times: jax.Array, censorship: jax.Array
                           ) -> jax.Array:
  """Negative Cox partial log-likelihood, Breslow ties, mean over events (0 without events).

  Args:
    log_risk: [B] log relative risk r.
    times: [B] follow-up times.
    censorship: [B] 1 = censored, 0 = event.

  Returns:
    Scalar.
  """
  r = log_risk.astype(jnp.float32)
  event = (censorship == 0).astype(jnp.float32)
  at_risk = times[None, :] >= times[:, None]               # [i, j]: j still at risk at t_i
  log_denominator = jax.nn.logsumexp(jnp.where(at_risk, r[None, :], -jnp.inf), axis=1)
  return -jnp.sum(event * (r - log_denominator)) / jnp.maximum(jnp.sum(event), 1.0)


def hazards_and_survival(logits):
  """NLL-surv head logits [N, k] -> (hazards h_j = sigmoid(logit_j) [N, k], survival
  S_j = prod_{i<=j} (1 - h_i) [N, k]), float32 (NumPy or jax)."""
  xp = jnp if isinstance(logits, jax.Array) else np
  logits = xp.asarray(logits, xp.float32)
  return 1.0 / (1.0 + xp.exp(-logits)), xp.cumprod(1.0 / (1.0 + xp.exp(logits)), axis=-1)


def risk(logits, kind: str = "nll"):
  """Risk score per case (higher = earlier event) from head logits [N, k] (NumPy or jax).

  "nll": -sum_j S_j (`hazards_and_survival`); "cox": logits[:, 0].
  """
  if kind == "cox":
    xp = jnp if isinstance(logits, jax.Array) else np
    return xp.asarray(logits, xp.float32)[:, 0]
  return -hazards_and_survival(logits)[1].sum(axis=-1)


def num_outputs(task: str, survival_cfg: ml_collections.ConfigDict | None, num_classes: int
                ) -> int:
  """Logits of a model's head for `task` (`config.task`): the classes, or with the `survival`
  config block k hazards (nll) or one log risk (cox)."""
  if task != "survival":
    return num_classes
  return 1 if survival_cfg.loss == "cox" else survival_cfg.num_bins


def bag_loss(task: str, survival_cfg: ml_collections.ConfigDict | None,
             label_smoothing: float = 0.0):
  """The supervised loss of one bag-level (or gene-level) head for `task` (`config.task`; for
  survival, the `survival` config block's loss and alpha).

  Returns:
    (logits [B, C], batch) -> (loss, metrics): cross-entropy on `label` (with `label_smoothing`)
    and its accuracy; or, for survival, NLL-surv on `label` (the time bin) and `censorship`, or
    the Cox loss on `time` and `censorship`.
  """
  if task != "survival":
    def ce(logits, batch):
      loss = losses.cross_entropy(logits, batch["label"], label_smoothing)
      return loss, {"accuracy": losses.accuracy(logits, batch["label"])}
    return ce
  cfg = survival_cfg
  if cfg.loss not in LOSSES:
    raise ValueError(f"Unknown survival.loss {cfg.loss!r}; expected one of {LOSSES}.")
  if cfg.loss == "cox":
    return lambda logits, batch: (cox_partial_likelihood(
        logits[:, 0], batch["time"], batch["censorship"]), {})
  return lambda logits, batch: (nll_surv(logits, batch["label"], batch["censorship"],
                                         cfg.alpha), {})

