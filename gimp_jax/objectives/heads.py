"""What the pre-training objectives add to a GiMP model: projection heads and their attachment.

The compared objectives run over GiMP's own two encoders (the Nyström patch aggregator and the gene
encoder), as the GiMP paper did for its Table 1; each objective's extra parameters (projections,
prototypes, fusion and matching heads) live in one submodule, `model.objective`, which fine-tuning
carries along unused.
"""

from collections.abc import Sequence
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from gimp_jax.models import build
from gimp_jax.models.gimp import GiMP


class Projection(nnx.Module):
  """Linear -> LayerNorm -> ReLU -> Linear (MGCA's head with LayerNorm in place of BatchNorm, which
  small and variable WSI batches make unreliable)."""

  def __init__(self, in_dim: int, hidden: int, out_dim: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, hidden, rngs=rngs)
    self.norm = nnx.LayerNorm(hidden, epsilon=1e-5, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, out_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., in_dim] -> [..., out_dim] (float32)."""
    return self.fc2(jax.nn.relu(self.norm(self.fc1(x.astype(jnp.float32)))))


def build_with_objective(
    model_cfg: ml_collections.ConfigDict, feature_dim: int, genes: Sequence[str],
    num_classes: int, seed: int, make_objective: Callable[[nnx.Rngs], nnx.Module], *,
    dtype: str, method: str) -> GiMP:
  """GiMP of the `model` config block on the gene list `genes` (`models.build.build_gimp`) with
  `model.objective = make_objective(rngs)`: the `build` of compared method `method`."""
  if model_cfg.gene_encoder == "none":
    raise ValueError(f"config.method={method!r} aligns images with genes: set "
                     "model.gene_encoder to 'group_msa' or 'snn', not 'none'.")
  objective = make_objective(nnx.Rngs(params=seed + 2, dropout=seed + 3))
  return build.build_gimp(model_cfg, feature_dim, len(genes), num_classes, seed, dtype=dtype,
                          objective=objective)
