"""MGCA over GiMP's encoders: ITA + CTA + CPA (Table 1). Paper values (seed_objectives.md 2.4)."""

import ml_collections

from gimp_jax.configs import nsclc


def get_config(arg: str = "paper"):
  c = nsclc.get_config(arg)
  c.method = "mgca"
  c.mgca = ml_collections.ConfigDict()
  c.mgca.proj_dim = 128                       # d [MGCA]
  c.mgca.num_prototypes = 500 if arg == "paper" else 16  # K [MGCA]; small batches: fewer
  c.mgca.num_tokens = 512 if arg == "paper" else 64      # patch tokens per window in CTA
  c.mgca.temperature_ita = 0.1                # tau1 [MGCA paper]
  c.mgca.temperature_cta = 0.07               # tau2 [MGCA paper]
  c.mgca.temperature_attn = 0.1               # parameter-free cross-attention [MGCA code]
  c.mgca.temperature_cpa = 0.2                # tau3 [MGCA]
  c.mgca.sinkhorn_epsilon = 0.05              # [MGCA code]
  c.mgca.sinkhorn_iterations = 3              # [MGCA code]
  c.mgca.weight_ita = 1.0                     # lambda1..3 [MGCA]
  c.mgca.weight_cta = 1.0
  c.mgca.weight_cpa = 1.0
  return c
