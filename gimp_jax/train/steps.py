"""The one step factory of every stage: pure, jitted, donating `(state, batch, key) -> (state,
metrics)`, and the evaluation step.

Batches are dicts of arrays:
  gene_pretrain: genes [B, G], label [B].
  pretrain: patches [B, L, D], mpm_mask [B, L] bool, genes [B, G], label [B].
  finetune / eval: patches [B, N, D], patch_mask [B, N] bool (optional), genes [B, G], label [B].
"""

import jax
import jax.numpy as jnp

from gimp_jax.losses import LossFn
from gimp_jax.train.optim import frozen_mask
from gimp_jax.train.state import TrainState


def make_train_step(loss_fn: LossFn, frozen_regex: str = ""):
  """The jitted training step of a stage, donating the state. The CLI, tests and benchmarks all
  build their steps here.

  Freezing is one predicate (`optim.frozen_mask` over parameter paths) applied three ways: the
  optimizer gives frozen leaves zero updates (optim.make_optimizer); here they are held constant
  (stop_gradient, so no gradient is computed through them: -17% of a CPU pre-training step at the
  paper's sizes), and every sub-module whose parameters are all frozen runs in eval mode (no
  dropout: a frozen GroupMSA gives the same CLS_ge whatever the step key). The rest of the model
  runs in train mode with dropout keyed by `key`.

  Args:
    loss_fn: `(model, batch) -> (loss, metrics)`.
    frozen_regex: the stage's frozen-parameter regex ('' = nothing frozen).

  Returns:
    step(state, batch, key) -> (state, metrics); metrics gain `grad_norm`, the global norm of the
    trainable parameters' gradients.
  """
  def step(state: TrainState, batch: dict, key: jax.Array):
    frozen = frozen_mask(state.params, frozen_regex)

    def objective(params):
      params = jax.tree_util.tree_map(
          lambda f, x: jax.lax.stop_gradient(x) if f else x, frozen, params)
      model = state.replace(params=params).model(key, train=True, frozen=frozen_regex)
      return loss_fn(model, batch)

    grads, metrics = jax.grad(objective, has_aux=True)(state.params)
    trainable = [g for f, g in zip(jax.tree_util.tree_leaves(frozen),
                                   jax.tree_util.tree_leaves(grads)) if not f]
    metrics["grad_norm"] = _global_norm(trainable)
    return state.apply_gradients(grads), metrics
  return jax.jit(step, donate_argnums=0)


def _global_norm(leaves) -> jax.Array:
  return jnp.sqrt(sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves),
                      jnp.zeros((), jnp.float32)))


def make_eval_step():
  """Jitted evaluation: (state, batch, key) -> {"logits", "probs", "embedding"} in eval mode, from
  the one model protocol `model(patches, genes, patch_mask) -> (logits [B, C], embedding [B, E])`.
  """
  def step(state: TrainState, batch: dict, key: jax.Array):
    del key  # evaluation is deterministic; the key keeps the step signature uniform
    logits, emb = state.model(train=False)(batch["patches"], batch.get("genes"),
                                           batch.get("patch_mask"))
    return {"logits": logits, "probs": jax.nn.softmax(logits, -1), "embedding": emb}
  return jax.jit(step)
