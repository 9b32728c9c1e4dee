"""Image-omic fusion baselines of GiMP's Table 1, trained end to end without pre-training.

- `GatedKroneckerFusion`: Pathomic Fusion's gated attention units + Kronecker product of the two
  gated vectors (each with an appended 1) + skip connections (Chen et al., IEEE TMI 2020,
  `BilinearFusion`).
- `AttentionFusion`: an attention-MIL pathology branch (gated attention pooling, as ABMIL) and an
  SNN genomic branch, fused by Kronecker or concatenation. PORPOISE (Chen et al., Cancer Cell 2022)
  is this with 256-d branches scaled by 8 into the fusion; Pathomic Fusion, which was built for ROI
  images, is this with its 32-d branches and 64-d fusion on WSI bags.
- `MCAT`: genomic-guided co-attention (Chen et al., ICCV 2021): the expression vector is grouped
  into tokens (one SNN per group: MCAT's six gene signatures, `data.signatures`), each gene group
  attends over the patches, then a transformer and attention pooling per modality, concatenation
  and a classifier.

All take trailing-padded bags with `patch_mask` and ignore the padding, and answer the methods'
protocol `__call__(patches, genes, patch_mask) -> (logits [B, C], fused embedding [B, E])`.
"""

from collections.abc import Sequence
import math

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gimp_jax.data import signatures
from gimp_jax.models.group_msa import TransformerBlock
from gimp_jax.models.mil import GatedAttention, full_mask, masked_softmax
from gimp_jax.models.modality_dropout import ModalityDropout, encode_genes
from gimp_jax.models.snn import SNN


class Bilinear(nnx.Module):
  """y_o = x1^T A_o x2 + b_o (torch.nn.Bilinear, same U(+-1/sqrt(in1)) init)."""

  def __init__(self, in1: int, in2: int, out: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(in1)
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (out, in1, in2), jnp.float32,
                                               -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out,), jnp.float32, -bound, bound))

  def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """x1: [B, in1], x2: [B, in2] -> [B, out]."""
    return jnp.einsum("bi,oij,bj->bo", x1, self.kernel[...], x2) + self.bias[...]


class GatedKroneckerFusion(nnx.Module):
  """Pathomic Fusion's BilinearFusion (gates on, skip on).

  For modality m in {1, 2}: h_m = ReLU(W_h x_m) (dim_m / scale_m), z_m = Bilinear(x_1, x_2),
  o_m = dropout(ReLU(W_o (sigmoid(z_m) * h_m))); o = vec([o_1; 1] [o_2; 1]^T); out =
  dropout(ReLU(E_2 [dropout(ReLU(E_1 dropout(o))); [o_1; 1]; [o_2; 1]])) of size mmhid.
  """

  def __init__(self, dim1: int, dim2: int, *, scale1: int = 1, scale2: int = 1, mmhid: int = 64,
               dropout: float = 0.25, rngs: nnx.Rngs):
    d1, d2 = dim1 // scale1, dim2 // scale2
    self.linear_h1 = nnx.Linear(dim1, d1, rngs=rngs)
    self.linear_z1 = Bilinear(dim1, dim2, d1, rngs=rngs)
    self.linear_o1 = nnx.Linear(d1, d1, rngs=rngs)
    self.linear_h2 = nnx.Linear(dim2, d2, rngs=rngs)
    self.linear_z2 = Bilinear(dim1, dim2, d2, rngs=rngs)
    self.linear_o2 = nnx.Linear(d2, d2, rngs=rngs)
    self.encoder1 = nnx.Linear((d1 + 1) * (d2 + 1), mmhid, rngs=rngs)
    self.encoder2 = nnx.Linear(mmhid + d1 + d2 + 2, mmhid, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.out_dim = mmhid

  def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """x1: [B, dim1], x2: [B, dim2] -> [B, mmhid]."""
    o1 = self.drop(jax.nn.relu(self.linear_o1(
        jax.nn.sigmoid(self.linear_z1(x1, x2)) * jax.nn.relu(self.linear_h1(x1)))))
    o2 = self.drop(jax.nn.relu(self.linear_o2(
        jax.nn.sigmoid(self.linear_z2(x1, x2)) * jax.nn.relu(self.linear_h2(x2)))))
    one = jnp.ones((x1.shape[0], 1), o1.dtype)
    o1, o2 = jnp.concatenate([o1, one], -1), jnp.concatenate([o2, one], -1)
    kron = jnp.einsum("bi,bj->bij", o1, o2).reshape(x1.shape[0], -1)
    out = self.drop(jax.nn.relu(self.encoder1(self.drop(kron))))
    return self.drop(jax.nn.relu(self.encoder2(jnp.concatenate([out, o1, o2], -1))))


class ConcatFusion(nnx.Module):
  """PORPOISE/MCAT 'concat': ReLU(W_2 ReLU(W_1 [x1; x2])) of size out_dim."""

  def __init__(self, dim1: int, dim2: int, out_dim: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim1 + dim2, out_dim, rngs=rngs)
    self.fc2 = nnx.Linear(out_dim, out_dim, rngs=rngs)
    self.out_dim = out_dim

  def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """x1: [B, dim1], x2: [B, dim2] -> [B, out_dim]."""
    return jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(jnp.concatenate([x1, x2], -1)))))


def make_fusion(mode: str, dim1: int, dim2: int, *, scale: int, mmhid: int, dropout: float,
                rngs: nnx.Rngs) -> nnx.Module:
  """"kronecker" (gated, Pathomic Fusion) or "concat"."""
  if mode == "kronecker":
    return GatedKroneckerFusion(dim1, dim2, scale1=scale, scale2=scale, mmhid=mmhid,
                                dropout=dropout, rngs=rngs)
  if mode == "concat":
    return ConcatFusion(dim1, dim2, mmhid, rngs=rngs)
  raise ValueError(f"Unknown fusion mode {mode!r}; expected 'kronecker' or 'concat'.")


class AttentionFusion(nnx.Module):
  """Attention-MIL pathology branch + SNN genes + fusion + linear classifier.

  Pathology: Linear(in -> path_hidden) + ReLU + dropout, gated attention (path_hidden / 2), masked
  softmax pooling, rho = Linear(path_hidden -> path_dim) + ReLU + dropout. Genes: SNN(num_genes ->
  snn_hidden). Fusion of [path_dim] and [snn_hidden[-1]] to `mmhid`, classifier Linear(mmhid, C).
  """

  def __init__(self, in_dim: int, num_genes: int, num_classes: int, *, path_hidden: int,
               path_dim: int, snn_hidden: Sequence[int], fusion: str = "kronecker",
               scale: int = 1, mmhid: int = 64, dropout: float = 0.25,
               modality_dropout: float = 0.0, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_dim, path_hidden, rngs=rngs)
    self.attention_net = GatedAttention(path_hidden, path_hidden // 2, 1, dropout=dropout,
                                        rngs=rngs)
    self.rho = nnx.Linear(path_hidden, path_dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.gene_encoder = SNN(num_genes, snn_hidden, dropout=dropout, rngs=rngs)
    self.missing_genes = (ModalityDropout((snn_hidden[-1],), modality_dropout, rngs=rngs)
                          if modality_dropout > 0 else None)
    self.fusion = make_fusion(fusion, path_dim, snn_hidden[-1], scale=scale, mmhid=mmhid,
                              dropout=dropout, rngs=rngs)
    self.head = nnx.Linear(mmhid, num_classes, rngs=rngs)

  def pool(self, patches: jax.Array, patch_mask: jax.Array | None = None):
    """patches: [B, N, in_dim] -> (pathology vector [B, path_dim], attention [B, N])."""
    mask = full_mask(patches, patch_mask)
    h = self.drop(jax.nn.relu(self.fc(patches.astype(jnp.float32))))
    attn = masked_softmax(self.attention_net(h)[..., 0], mask, axis=-1)
    bag = jnp.einsum("bn,bnd->bd", attn, h)
    return self.drop(jax.nn.relu(self.rho(bag))), attn

  def __call__(self, patches: jax.Array, genes: jax.Array, patch_mask: jax.Array | None = None):
    """(logits [B, C], fused embedding [B, mmhid])."""
    fused = self.fusion(self.pool(patches, patch_mask)[0],
                        encode_genes(self.gene_encoder, self.missing_genes, genes))
    return self.head(fused), fused

  def attention(self, patches: jax.Array, genes: jax.Array | None = None,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The pathology branch's gated attention [B, N] (`models.attention`)."""
    del genes
    return self.pool(patches, patch_mask)[1]


def consecutive_groups(num_genes: int, num_groups: int) -> tuple[tuple[int, ...], ...]:
  """`num_groups` consecutive slices of the gene list, ceil(G / num_groups) genes each but the last
  (`config.mcat.gene_groups = "slices"`, not MCAT's definition).

  Raises:
    ValueError: when a slice would be empty (G < num_groups).
  """
  size = -(-num_genes // num_groups)
  groups = tuple(tuple(range(k * size, min((k + 1) * size, num_genes))) for k in range(num_groups))
  if not all(groups):
    raise ValueError(f"{num_genes} genes cannot be cut into {num_groups} non-empty slices.")
  return groups


class GeneGroupSNN(nnx.Module):
  """One two-block SNN per gene group, each sized to its group (MCAT's `sig_networks`): genes
  [B, G] -> group tokens [B, K, dim], token k = SNN_k(genes[:, groups[k]]).

  Groups may differ in size and overlap (a gene in several signatures feeds each of them).
  """

  def __init__(self, num_genes: int, groups: Sequence[Sequence[int]], dim: int, *,
               dropout: float = 0.25, rngs: nnx.Rngs):
    self.num_genes = num_genes
    self.groups = tuple(tuple(int(i) for i in g) for g in groups)
    if not self.groups or not all(self.groups) or not all(
        0 <= i < num_genes for g in self.groups for i in g):
      raise ValueError(f"GeneGroupSNN: every group needs genes among the {num_genes}.")
    self.snns = nnx.List([SNN(len(g), (dim, dim), dropout=dropout, rngs=rngs)
                          for g in self.groups])

  def __call__(self, genes: jax.Array) -> jax.Array:
    """genes: [B, G] -> [B, K, dim]."""
    if genes.shape[-1] != self.num_genes:
      raise ValueError(f"GeneGroupSNN built for {self.num_genes} genes, got {genes.shape[-1]}.")
    x = genes.astype(jnp.float32)
    return jnp.stack([snn(x[:, np.asarray(g)]) for snn, g in zip(self.snns, self.groups)], axis=1)


class CoAttention(nnx.Module):
  """Single-head cross-attention (torch nn.MultiheadAttention, 1 head): gene-group queries over
  patch keys/values, padded patches masked out."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.q = nnx.Linear(dim, dim, rngs=rngs)
    self.k = nnx.Linear(dim, dim, rngs=rngs)
    self.v = nnx.Linear(dim, dim, rngs=rngs)
    self.out = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, queries: jax.Array, keys: jax.Array, mask: jax.Array):
    """queries: [B, T, d]; keys: [B, N, d]; mask: [B, N] -> ([B, T, d], attention [B, T, N])."""
    logits = jnp.einsum("btd,bnd->btn", self.q(queries), self.k(keys)) / math.sqrt(keys.shape[-1])
    attn = masked_softmax(logits, mask[:, None, :], axis=-1)
    return self.out(jnp.einsum("btn,bnd->btd", attn, self.v(keys))), attn


class _TokenPool(nnx.Module):
  """Transformer blocks over tokens, gated attention pooling, rho = Linear + ReLU + dropout."""

  def __init__(self, dim: int, *, depth: int, heads: int, dropout: float, rngs: nnx.Rngs):
    self.blocks = nnx.List([TransformerBlock(dim, heads=heads, mlp_ratio=2, dropout=dropout,
                                             rngs=rngs) for _ in range(depth)])
    self.attention = GatedAttention(dim, dim, 1, dropout=dropout, rngs=rngs)
    self.rho = nnx.Linear(dim, dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens: [B, T, d] -> [B, d]."""
    for block in self.blocks:
      tokens = block(tokens)
    attn = jax.nn.softmax(self.attention(tokens)[..., 0].astype(jnp.float32), axis=-1)
    return self.drop(jax.nn.relu(self.rho(jnp.einsum("bt,btd->bd", attn, tokens))))


class MCAT(nnx.Module):
  """Multimodal co-attention transformer for classification.

  h_path = dropout(ReLU(W x)) [B, N, d]; gene tokens [B, K, d] (GeneGroupSNN over `gene_groups`,
  K lists of gene-list positions: MCAT's six signatures, `build_mcat`); co-attention
  (genes query patches) -> [B, K, d]; per modality 2 transformer blocks + gated attention pooling
  + rho; fusion (concat: Linear(2d, d) + ReLU + Linear(d, d) + ReLU, or Kronecker); classifier.
  """

  def __init__(self, in_dim: int, num_genes: int, num_classes: int, *,
               gene_groups: Sequence[Sequence[int]], dim: int = 256, heads: int = 8,
               depth: int = 2, fusion: str = "concat", dropout: float = 0.25,
               modality_dropout: float = 0.0, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_dim, dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.gene_encoder = GeneGroupSNN(num_genes, gene_groups, dim, dropout=dropout, rngs=rngs)
    self.missing_genes = (ModalityDropout((len(gene_groups), dim), modality_dropout, rngs=rngs)
                          if modality_dropout > 0 else None)
    self.coattn = CoAttention(dim, rngs=rngs)
    self.path_pool = _TokenPool(dim, depth=depth, heads=heads, dropout=dropout, rngs=rngs)
    self.omic_pool = _TokenPool(dim, depth=depth, heads=heads, dropout=dropout, rngs=rngs)
    self.fusion = make_fusion(fusion, dim, dim, scale=1, mmhid=dim, dropout=dropout, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def coattend(self, patches: jax.Array, genes: jax.Array, patch_mask: jax.Array | None = None):
    """(genomic-guided patch tokens [B, K, d], gene tokens [B, K, d], co-attention [B, K, N])."""
    mask = full_mask(patches, patch_mask)
    h_path = self.drop(jax.nn.relu(self.fc(patches.astype(jnp.float32))))
    h_omic = encode_genes(self.gene_encoder, self.missing_genes, genes)
    h_coattn, attn = self.coattn(h_omic, h_path, mask)
    return h_coattn, h_omic, attn

  def __call__(self, patches: jax.Array, genes: jax.Array, patch_mask: jax.Array | None = None):
    """(logits [B, C], fused embedding [B, d])."""
    h_coattn, h_omic, _ = self.coattend(patches, genes, patch_mask)
    fused = self.fusion(self.path_pool(h_coattn), self.omic_pool(h_omic))
    return self.head(fused), fused

  def attention(self, patches: jax.Array, genes: jax.Array,
                patch_mask: jax.Array | None = None) -> jax.Array:
    """The co-attention of the K gene signatures over the patches, mean over signatures: [B, N]
    (`models.attention`)."""
    return jnp.mean(self.coattend(patches, genes, patch_mask)[2], axis=1)


def build_attention_fusion(model_cfg: ml_collections.ConfigDict,
                           data_cfg: ml_collections.ConfigDict,
                           method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str],
                           num_classes: int, seed: int, dtype: str = "float32"):
  """PORPOISE and Pathomic Fusion: the `fusion` block (path_hidden, path_dim, snn_hidden, mode,
  scale, mmhid, dropout); `genes` the model's gene list."""
  del dtype
  f = method_cfg
  return AttentionFusion(
      data_cfg.feature_dim, len(genes), num_classes, path_hidden=f.path_hidden,
      path_dim=f.path_dim, snn_hidden=tuple(f.snn_hidden), fusion=f.mode, scale=f.scale,
      mmhid=f.mmhid, dropout=f.dropout,
      modality_dropout=model_cfg.get("modality_dropout", 0.0),
      rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def mcat_gene_groups(mcat_cfg: ml_collections.ConfigDict, genes: Sequence[str], where: str
                     ) -> tuple[tuple[int, ...], ...]:
  """The gene-list positions of MCAT's tokens: its six signatures found by symbol in `genes`
  (the `mcat` config block's gene_groups = "signatures", `data.signatures.gene_groups`; `where`
  names the expression input in its messages), or num_gene_groups consecutive slices ("slices"; a
  config without the field, from a run older than the signatures, gets slices)."""
  c = mcat_cfg
  if c.get("gene_groups", "slices") == "signatures":
    return tuple(pos for _, pos in signatures.gene_groups(genes, where=where))
  logging.warning("MCAT: config.mcat.gene_groups='slices': %d consecutive slices of the gene list, "
                  "not MCAT's six signatures", c.num_gene_groups)
  return consecutive_groups(len(genes), c.num_gene_groups)


def build_mcat(model_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
               method_cfg: ml_collections.ConfigDict | None, genes: Sequence[str], num_classes: int,
               seed: int, dtype: str = "float32"):
  """MCAT: the `mcat` block (dim, gene_groups, num_gene_groups, heads, depth, fusion, dropout);
  `genes` the model's gene list (names, symbols where known), found in the `data` block's
  expression table."""
  del dtype
  c = method_cfg
  return MCAT(data_cfg.feature_dim, len(genes), num_classes,
              gene_groups=mcat_gene_groups(c, genes, data_cfg.get("expression", "expression")),
              dim=c.dim, heads=c.heads, depth=c.depth, fusion=c.fusion, dropout=c.dropout,
              modality_dropout=model_cfg.get("modality_dropout", 0.0),
              rngs=nnx.Rngs(params=seed, dropout=seed + 1))
