"""gimp_jax against the PyTorch reference it replaces, side by side in one process.

  python -m experiments.bench --size cpu --json experiments/results/bench_cpu.json
  python -m experiments.bench --size paper --json experiments/results/bench_h100.json
  python -m experiments.bench --size smoke --repeats 2   # a minute-scale end-to-end check

Modules: `workloads` (what is timed: gimp_jax's steps as the CLI builds them, on batches of the
CLI's data pipeline, the PyTorch reference's, and the data loader), `measure` (timing, memory,
FLOPs, device peaks and the Markdown report), `torch_reference` (GiMP in PyTorch), `__main__`
(the flags and the run).

Workloads (`--workloads`): `pretrain` (one GiMP pre-training step: B windows of L patches, 60,480
genes, frozen GroupMSA, AdamW), `slide_forward` (the aggregator over a whole slide),
`finetune` (one fine-tuning step on a whole slide; gimp_jax also padded to its bucket),
`memory_scaling` (whole-slide forward memory at 10k, 50k, 148,569 patches from XLA's buffer
assignment, plus real runs up to `--scaling_run_max`), `loading` (patches/s from CLAM .h5 files
through the real pipeline, with prefetch, against what the steps consume).

Implementations (`--frameworks`): gimp_jax, torch_eager, torch_compile (the PyTorch model of
`torch_reference`, initialised with gimp_jax's weights). Repeats are interleaved; each row gives
the median and the quartiles of the wall time, the median process CPU time, the first call
(compilation), peak memory, model FLOPs, achieved FLOP/s and fraction of peak (`--peak_tflops`,
`--peak_gbps` override the device table; CPU peaks are rough). Writes `--json` and the Markdown
table (`--markdown`, default: the JSON path with .md).
"""
