"""MGCA (Wang et al., NeurIPS 2022) adapted to patch bags x expression vectors.

L = lambda1 L_ITA + lambda2 L_CTA + lambda3 L_CPA (paper Eq. 10, lambdas 1):
- ITA: symmetric instance InfoNCE between projected CLS_img and CLS_ge (tau1 = 0.1).
- CTA: token-wise alignment. Image tokens are a strided subset of the window's patch tokens, gene
  tokens are GroupMSA's fragment tokens (after its intra-group block). Each token attends (the
  code's default parameter-free attention, temperature 0.1) to the other modality's tokens of the
  same patient; the per-token InfoNCE contrasts it with the other attended outputs of that patient,
  both ways, weighted: patch tokens by the aggregator's CLS -> patch attention (head mean, clipped
  to its [10, 90] percentiles, normalised, no gradient), gene tokens uniformly (GroupMSA has no
  CLS -> fragment attention; tau2 = 0.07).
- CPA: K prototypes shared by both modalities; Sinkhorn-Knopp soft codes (3 iterations,
  eps = 0.05, stop-gradient) of one modality supervise the other's softmax over prototypes
  (tau3 = 0.2). Prototypes are L2-normalised inside the loss (the code renormalises in place);
  the code's first-epoch prototype freeze is not reproduced.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from gimp_jax import losses
from gimp_jax.models.group_msa import GroupMSA
from gimp_jax.objectives.clip import info_nce
from gimp_jax.losses import l2_normalize
from gimp_jax.objectives.heads import Projection, build_with_objective


def cross_attend(queries: jax.Array, keys: jax.Array, key_mask: jax.Array,
                 temperature: float = 0.1) -> jax.Array:
  """Parameter-free cross-attention (MGCA code default).

  Args:
    queries: [B, S, d] L2-normalised.
    keys: [B, T, d] L2-normalised (also the values).
    key_mask: [B, T] bool, True for real keys.
    temperature: attention temperature.

  Returns:
    [B, S, d]: normalize(sum_t softmax_t(<q_s, k_t> / temperature) k_t).
  """
  logits = jnp.einsum("bsd,btd->bst", queries, keys) / temperature
  logits = jnp.where(key_mask[:, None, :], logits, -jnp.inf)
  return l2_normalize(jnp.einsum("bst,btd->bsd", jax.nn.softmax(logits, axis=-1), keys))


def token_infonce(x: jax.Array, o: jax.Array, weights: jax.Array, mask: jax.Array,
                  temperature: float = 0.07) -> jax.Array:
  """Weighted per-token InfoNCE whose negatives are the other tokens of the same sample.

  For token j of sample b: p1 = log softmax_k(<x_j, o_k> / tau)[j], p2 = log softmax_k(<o_j, x_k>
  / tau)[j] over the real tokens k; weights are renormalised to sum to 1 over the real tokens.

  Args:
    x: [B, S, d] tokens (L2-normalised).
    o: [B, S, d] their cross-modal attended outputs.
    weights: [B, S] >= 0.
    mask: [B, S] bool real tokens.
    temperature: tau2.

  Returns:
    Scalar -(1 / 2B) sum_b sum_j w_bj (p1 + p2).
  """
  sim = jnp.einsum("bjd,bkd->bjk", x.astype(jnp.float32), o.astype(jnp.float32)) / temperature
  keys = mask[:, None, :]
  lp_x = jax.nn.log_softmax(jnp.where(keys, sim, -jnp.inf), axis=-1)
  lp_o = jax.nn.log_softmax(jnp.where(keys, jnp.swapaxes(sim, 1, 2), -jnp.inf), axis=-1)
  pos = jnp.diagonal(lp_x, axis1=1, axis2=2) + jnp.diagonal(lp_o, axis1=1, axis2=2)
  pos = jnp.where(mask, pos, 0.0)  # padded tokens: -inf, kept out of the values and gradients
  w = jnp.where(mask, weights.astype(jnp.float32), 0.0)
  w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-12)
  return -jnp.sum(w * pos) / (2 * x.shape[0])


def cta_loss(img_tokens: jax.Array, img_mask: jax.Array, img_weights: jax.Array,
             gene_tokens: jax.Array, gene_mask: jax.Array, gene_weights: jax.Array, *,
             temperature: float = 0.07, attn_temperature: float = 0.1) -> jax.Array:
  """L_CTA = (L_LIA + L_LTA) / 2 (MGCA Eqs. 4-6).

  Args:
    img_tokens: [B, S, d], img_mask: [B, S], img_weights: [B, S] (patch tokens, normalised).
    gene_tokens: [B, T, d], gene_mask: [B, T], gene_weights: [B, T] (gene tokens, normalised).
    temperature: tau2 of the token InfoNCE.
    attn_temperature: temperature of the parameter-free cross-attention.
  """
  o_img = cross_attend(img_tokens, gene_tokens, gene_mask, attn_temperature)     # [B, S, d]
  o_gene = cross_attend(gene_tokens, img_tokens, img_mask, attn_temperature)     # [B, T, d]
  lia = token_infonce(img_tokens, o_img, img_weights, img_mask, temperature)
  lta = token_infonce(gene_tokens, o_gene, gene_weights, gene_mask, temperature)
  return 0.5 * (lia + lta)


def clipped_weights(attention: jax.Array, mask: jax.Array, low: float = 10.0,
                    high: float = 90.0) -> jax.Array:
  """MGCA's token weights: clip each sample's weights to its [low, high] percentiles (over the
  real tokens) and normalise them to sum to 1. attention, mask: [B, S] -> [B, S] (0 on padding)."""
  a = jnp.where(mask, attention.astype(jnp.float32), jnp.nan)
  lo = jnp.nanpercentile(a, low, axis=-1, keepdims=True)
  hi = jnp.nanpercentile(a, high, axis=-1, keepdims=True)
  w = jnp.where(mask, jnp.clip(attention.astype(jnp.float32), lo, hi), 0.0)
  return w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-12)


def sinkhorn(scores: jax.Array, epsilon: float = 0.05, iterations: int = 3) -> jax.Array:
  """Sinkhorn-Knopp soft assignments with equal prototype mass (SwAV, MGCA), stop-gradient.

  Args:
    scores: [B, K] similarities of samples to prototypes.
    epsilon: entropy regulariser.
    iterations: alternating normalisations.

  Returns:
    [B, K] codes, each row summing to 1: Q = exp(scores / eps)^T normalised to total 1, then
    `iterations` times: rows (prototypes) to 1/K each, columns (samples) to 1/B each; finally
    columns to 1, transposed.
  """
  s = scores.astype(jnp.float32)
  q = jnp.exp((s - jnp.max(s)) / epsilon).T                                     # [K, B]
  q = q / jnp.sum(q)
  k, b = q.shape

  def step(q, _):
    q = q / jnp.sum(q, axis=1, keepdims=True) / k
    q = q / jnp.sum(q, axis=0, keepdims=True) / b
    return q, None
  q, _ = jax.lax.scan(step, q, None, length=iterations)
  q = q / jnp.sum(q, axis=0, keepdims=True)
  return jax.lax.stop_gradient(q.T)


def cpa_loss(v: jax.Array, t: jax.Array, prototypes: jax.Array, *, temperature: float = 0.2,
             epsilon: float = 0.05, iterations: int = 3) -> jax.Array:
  """Cross-modal prototype alignment (MGCA Eqs. 7-9), swapped prediction.

  Args:
    v: [B, d] image embeddings, t: [B, d] gene embeddings (L2-normalised).
    prototypes: [K, d] (normalised here).
    temperature: tau3.
    epsilon, iterations: Sinkhorn settings.

  Returns:
    0.5 (mean_i CE(q_t,i, softmax(v_i C^T / tau3)) + mean_i CE(q_v,i, softmax(t_i C^T / tau3))).
  """
  c = l2_normalize(prototypes)
  s_v, s_t = v.astype(jnp.float32) @ c.T, t.astype(jnp.float32) @ c.T
  q_v, q_t = sinkhorn(s_v, epsilon, iterations), sinkhorn(s_t, epsilon, iterations)
  lp_v = jax.nn.log_softmax(s_v / temperature, axis=-1)
  lp_t = jax.nn.log_softmax(s_t / temperature, axis=-1)
  return 0.5 * (-jnp.sum(q_t * lp_v, -1).mean() - jnp.sum(q_v * lp_t, -1).mean())


class MGCAHeads(nnx.Module):
  """Global and local projections per modality, and the shared prototypes."""

  def __init__(self, dim: int, proj_dim: int, num_prototypes: int, *, rngs: nnx.Rngs):
    self.img_global = Projection(dim, dim, proj_dim, rngs=rngs)
    self.gene_global = Projection(dim, dim, proj_dim, rngs=rngs)
    self.img_local = Projection(dim, dim, proj_dim, rngs=rngs)
    self.gene_local = Projection(dim, dim, proj_dim, rngs=rngs)
    self.prototypes = nnx.Param(l2_normalize(
        jax.random.normal(rngs.params(), (num_prototypes, proj_dim))))


def build(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
          method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
          seed: int, dtype: str = "float32"):
  """GiMP + MGCAHeads (the `mgca` block's proj_dim, num_prototypes); needs the GroupMSA gene
  encoder."""
  if model_cfg.gene_encoder != "group_msa":
    raise ValueError("config.method='mgca' aligns patch tokens with GroupMSA's fragment tokens: "
                     f"set model.gene_encoder='group_msa' (got {model_cfg.gene_encoder!r}).")
  return build_with_objective(
      model_cfg, data_cfg.feature_dim, genes, num_classes, seed,
      lambda rngs: MGCAHeads(model_cfg.dim, method_cfg.proj_dim, method_cfg.num_prototypes,
                             rngs=rngs), dtype=dtype, method="mgca")


def token_subset(length: int, count: int) -> jax.Array:
  """`count` evenly strided positions of a window of `length` tokens (all when count >= length)."""
  count = min(count, length)
  return (jnp.arange(count) * length) // count


def make_loss(mgca_cfg: ml_collections.ConfigDict) -> losses.LossFn:
  """lambda_ita ITA + lambda_cta CTA + lambda_cpa CPA over pre-training windows (the `mgca`
  block)."""
  cfg = mgca_cfg

  def loss_fn(model, batch):
    head = model.objective
    cls_img, tokens, cls_attn = model.aggregator(batch["patches"], return_attention=True)
    encoder: GroupMSA = model.gene_encoder
    cls_ge = encoder(batch["genes"])
    v = l2_normalize(head.img_global(cls_img))
    t = l2_normalize(head.gene_global(cls_ge))
    ita = info_nce(v, t, cfg.temperature_ita, "symmetric")
    idx = token_subset(tokens.shape[1], cfg.num_tokens)
    img_tokens = l2_normalize(head.img_local(tokens[:, idx]))
    img_mask = jnp.ones(img_tokens.shape[:2], bool)
    img_w = jax.lax.stop_gradient(clipped_weights(jnp.mean(cls_attn, axis=1)[:, idx], img_mask))
    gene_tokens = l2_normalize(head.gene_local(encoder.fragment_tokens(batch["genes"])))
    gene_mask = jnp.ones(gene_tokens.shape[:2], bool)
    cta = cta_loss(img_tokens, img_mask, img_w, gene_tokens, gene_mask,
                   jnp.ones(gene_tokens.shape[:2]), temperature=cfg.temperature_cta,
                   attn_temperature=cfg.temperature_attn)
    cpa = cpa_loss(v, t, head.prototypes[...], temperature=cfg.temperature_cpa,
                   epsilon=cfg.sinkhorn_epsilon, iterations=cfg.sinkhorn_iterations)
    loss = cfg.weight_ita * ita + cfg.weight_cta * cta + cfg.weight_cpa * cpa
    return loss, {"loss": loss, "ita_loss": ita, "cta_loss": cta, "cpa_loss": cpa}
  return loss_fn
