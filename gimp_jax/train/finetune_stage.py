"""The `finetune` stage: the MLP head on CLS_pat = [CLS_img; CLS_ge] (or the method's own model)
over whole bags, bucketed padding with a key-padding mask; validation after every epoch, the best
epoch kept (`finetune.select_metric`, optional `finetune.patience`)."""

from gimp_jax import methods
from gimp_jax.data import pipeline
from gimp_jax.train import evaluate, loop, selection, transfer
from gimp_jax.train.state import frozen_regex, train_state


def finetune(run, observe=None) -> dict:
  """The stage (`run`: a `train.run.Run`); returns its entry of results.json["stages"].

  `observe`: optional (state, epoch) -> {name: float}, measured after each epoch's validation and
  written to metrics.jsonl as stage "finetune_observed" (experiments' learning curves)."""
  cfg = run.config
  model = run.build()
  params = transfer.initial_params(run, model, "finetune")
  train = run.patients("train", "finetune")
  n_train = run.cohort.split(train).size
  per_epoch = pipeline.num_batches(n_train, cfg.finetune.batch_size, False)
  frozen = frozen_regex(cfg.finetune.frozen, params)
  state = train_state(model, cfg.optim, steps_per_epoch=per_epoch, epochs=cfg.finetune.epochs,
                      frozen=frozen, params=params)
  best, on_epoch_end = selection.keep_best(
      run, "finetune",
      lambda state: selection.split_scores(
          run.cohort.task, evaluate.predict(run, state, run.patients("val", "finetune"))),
      selection.task_metric(run.cohort.task, cfg.finetune.select_metric), cfg.finetune.patience)
  if observe is not None:
    keep = on_epoch_end

    def on_epoch_end(state, epoch, meta):
      out = keep(state, epoch, meta)
      run.writer.write("finetune_observed", int(state.step), observe(state, epoch))
      return out
  spec = loop.StageSpec(
      name="finetune", loss_fn=methods.finetune_loss(cfg),
      batches=lambda e, s: pipeline.bag_batches(
          run.cohort, train, batch_size=cfg.finetune.batch_size, seed=cfg.seed, epoch=e,
          shuffle=True, bucket_sizes=cfg.data.bucket_sizes, start_batch=s,
          prefetch=cfg.data.prefetch),
      steps_per_epoch=per_epoch, epochs=cfg.finetune.epochs,
      checkpoint_every=cfg.finetune.checkpoint_every, on_epoch_end=on_epoch_end, frozen=frozen)
  try:
    # data parallel when the batch splits over the devices (a smaller last batch is replicated)
    return loop.fit_stage(run, spec, state, min(cfg.finetune.batch_size, n_train))[1]
  finally:
    best.close()
