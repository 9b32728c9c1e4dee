"""TANGLE (Jaume et al., CVPR 2024) and, through the argument's variant, its two baselines: slide
encoder pre-training, then the few-shot linear probe of the slide embedding (TANGLE's protocol).

Values from mahmoodlab/TANGLE (core/utils/process_args.py) unless marked "choice".
"""

import ml_collections

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper", method: str = "tangle"):
  c = nsclc.published(arg)
  c.method = method
  c.stages = ("pretrain", "probe")            # TANGLE's protocol: pre-train, then probe the slides
  c.model.gene_encoder = "none"               # the method builds its own encoders
  c.pretrain.frozen = ""
  c.finetune.frozen = ""                      # with "finetune" in stages: everything trains
  c.pretrain.sampling = "uniform"             # patch subsampling with replacement [TANGLE dataset]
  c.tangle = ml_collections.ConfigDict()
  c.tangle.n_tokens = {"paper": 2048, "cpu": 512, "tiny": 32}[arg]  # patches per view [TANGLE: 2048]
  c.tangle.temperature = 0.01                 # tau [TANGLE default; its BRCA run used 0.1]
  c.tangle.gene_hidden = 0 if arg != "paper" else 1024  # expression MLP width; 0 = number of genes
                                              # [TANGLE v1]; choice at 60,480 genes (3.6e9 weights)
  views = 2 if method == "intra" else 1
  c.pretrain.window = views * c.tangle.n_tokens
  c.pretrain.batch_size = {"paper": 64, "cpu": 32, "tiny": 4}[arg]  # [TANGLE: 64]; choice below
  if arg == "paper":
    c.pretrain.epochs = 100                   # [TANGLE], fixed (no rank-based selection: choice)
    c.optim.warmup_epochs = 5.0               # [TANGLE]
  elif arg == "cpu":
    c.pretrain.epochs = 20                    # choice: ~340 steps on 567 training patients
  return c
