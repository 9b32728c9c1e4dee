"""The `gene_pretrain` stage: supervised pre-training of the gene encoder (GroupMSA) on the
patient labels, then frozen for the later stages; the best validation epoch is kept, with early
stopping. Its genes-only scores are the run's genes-only baseline."""

import jax
import jax.numpy as jnp
import numpy as np

from gimp_jax.objectives import supervised
from gimp_jax.objectives import survival
from gimp_jax.data import pipeline
from gimp_jax.data.cohort import Cohort
from gimp_jax.train import loop, selection
from gimp_jax.train.state import train_state


def gene_pretrain(run) -> dict:
  """The stage (`run`: a `train.run.Run`); returns its entry of results.json["stages"]."""
  cfg = run.config
  train = run.patients("train", "gene_pretrain")
  n_train = run.cohort.split(train).size
  per_epoch = pipeline.num_batches(n_train, cfg.gene_pretrain.batch_size, False)
  state = train_state(run.gene_classifier(), cfg.optim, steps_per_epoch=per_epoch,
                      epochs=cfg.gene_pretrain.epochs)
  best, on_epoch_end = selection.keep_best(
      run, "gene_pretrain",
      lambda s: gene_only_scores(run.cohort, s.model(train=False),
                                 run.patients("val", "gene_pretrain"), cfg.survival.loss),
      selection.task_metric(run.cohort.task, cfg.gene_pretrain.select_metric),
      cfg.gene_pretrain.patience)
  spec = loop.StageSpec(
      name="gene_pretrain", loss_fn=supervised.gene_loss(run.cohort.task, cfg.get("survival")),
      batches=lambda e, s: pipeline.gene_batches(
          run.cohort, train, batch_size=cfg.gene_pretrain.batch_size, seed=cfg.seed, epoch=e,
          start_batch=s, prefetch=cfg.data.prefetch),
      steps_per_epoch=per_epoch, epochs=cfg.gene_pretrain.epochs,
      checkpoint_every=cfg.pretrain.checkpoint_every, on_epoch_end=on_epoch_end)
  try:
    # data parallel when the batch splits over the devices (a smaller last batch is replicated)
    return loop.fit_stage(run, spec, state, min(cfg.gene_pretrain.batch_size, n_train))[1]
  finally:
    best.close()


@jax.jit
def _gene_logits(model, genes: jax.Array) -> jax.Array:
  return model(genes)


def gene_only_scores(cohort: Cohort, model, split: str | np.ndarray, survival_loss: str) -> dict:
  """The task's metrics of the supervised GroupMSA `model` (genes only) on a split of `cohort`
  (a survival head's risk by `survival_loss`: `survival.loss`)."""
  idx = cohort.split(split)
  logits = _gene_logits(model, jnp.asarray(cohort.genes[idx]))
  pred = {"label": cohort.labels[idx], "probs": np.asarray(jax.nn.softmax(logits, -1))}
  if cohort.task == "survival":
    pred.update(time=cohort.times[idx], censorship=cohort.censorship[idx],
                risk=survival.risk(np.asarray(logits), survival_loss))
  return selection.split_scores(cohort.task, pred)
