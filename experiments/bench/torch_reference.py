"""GiMP in PyTorch: the model a user would otherwise run, for `python -m experiments.bench`.

The same architecture, shapes and losses as `gimp_jax` (attribute names mirror ours so that
`load_gimp_params` can copy a gimp_jax parameter tree in and the two can be checked number for
number):

- aggregator: Linear(in -> dim) + ReLU, mask token, CLS first, `depth` pre-LN residual layers
  x + NystromAttention(LayerNorm(x)) from the `nystrom-attention` package, final LayerNorm;
- gene encoder: GroupMSA as `gimp_jax/models/group_msa.py` (fragments, per-fragment or shared
  projection, position embedding, group tokens, an intra-group and an inter-group pre-LN
  transformer block, LayerNorm);
- decoder Linear(dim -> in) and the MLP head on [CLS_img; CLS_ge];
- losses: the config's pre-training objective (masked L1 reconstruction, batch-hard or batch-all
  triplet losses on the optionally L2-normalised halves, VICReg variance hinge); cross-entropy;
- AdamW with global-norm clipping over the trainable parameters (GroupMSA frozen:
  `requires_grad=False`, run without a graph, as a PyTorch user would freeze it).

Mixed precision is `torch.autocast(dtype=torch.bfloat16)` with float32 parameters, PyTorch's usual
recipe; the losses and the gene encoder are computed in float32 (as gimp_jax does).
"""

import contextlib
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from nystrom_attention import NystromAttention

_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NystromLayer(nn.Module):
  """x + NystromAttention(LayerNorm(x)) (TransMIL's TransLayer)."""

  def __init__(self, dim: int, heads: int, num_landmarks: int, dropout: float):
    super().__init__()
    self.norm = nn.LayerNorm(dim, eps=1e-5)
    self.attn = NystromAttention(dim=dim, dim_head=dim // heads, heads=heads,
                                 num_landmarks=num_landmarks, pinv_iterations=6, residual=True,
                                 residual_conv_kernel=33, dropout=dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, dim] -> [B, N, dim]."""
    return x + self.attn(self.norm(x))


class PatchAggregator(nn.Module):
  """Linear + ReLU, mask token, CLS token first, Nyström layers, final LayerNorm."""

  def __init__(self, in_dim: int, dim: int, depth: int, heads: int, num_landmarks: int,
               dropout: float):
    super().__init__()
    self.embed = nn.Linear(in_dim, dim)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.layers = nn.ModuleList(
        [NystromLayer(dim, heads, num_landmarks, dropout) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-5)

  def forward(self, patches: torch.Tensor, mpm_mask: torch.Tensor | None = None):
    """patches: [B, N, in_dim]; mpm_mask: [B, N] bool -> (cls [B, dim], tokens [B, N, dim])."""
    h = F.relu(self.embed(patches))
    if mpm_mask is not None:
      h = torch.where(mpm_mask[..., None], self.mask_token.to(h.dtype), h)
    cls = self.cls_token.to(h.dtype).expand(h.shape[0], -1, -1)
    h = torch.cat([cls, h], dim=1)
    for layer in self.layers:
      h = layer(h)
    h = self.norm(h)
    return h[:, 0], h[:, 1:]


class SelfAttention(nn.Module):
  """Multi-head softmax self-attention, fused qkv with bias (as gimp_jax's GroupMSA)."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.out = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [B, T, dim] -> [B, T, dim]."""
    b, t, d = x.shape
    q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.out(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
  """Pre-LN block: x + MSA(LN(x)); x + MLP(LN(x)) with tanh-GELU (jax.nn.gelu's default)."""

  def __init__(self, dim: int, heads: int, dropout: float, mlp_ratio: int = 4):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-5)
    self.attn = SelfAttention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-5)
    self.fc1 = nn.Linear(dim, mlp_ratio * dim)
    self.fc2 = nn.Linear(mlp_ratio * dim, dim)
    self.drop = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.drop(self.attn(self.norm1(x)))
    return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))))


class FragmentProjection(nn.Module):
  """Every fragment its own [fragment_size, dim] matrix and bias: [B, F, g] -> [B, F, dim]."""

  def __init__(self, num_fragments: int, fragment_size: int, dim: int):
    super().__init__()
    self.kernel = nn.Parameter(torch.randn(num_fragments, fragment_size, dim)
                               / math.sqrt(fragment_size))
    self.bias = nn.Parameter(torch.zeros(num_fragments, dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bfg,fgd->bfd", x, self.kernel.to(x.dtype)) + self.bias.to(x.dtype)


class GroupMSA(nn.Module):
  """Gene encoder: expression [B, G] -> CLS_ge [B, dim]."""

  def __init__(self, num_genes: int, num_fragments: int, num_groups: int, dim: int, heads: int,
               dropout: float, projection: str = "per_fragment"):
    super().__init__()
    self.num_fragments, self.num_groups = num_fragments, num_groups
    self.fragment_size = math.ceil(num_genes / num_fragments)
    self.pad = self.fragment_size * num_fragments - num_genes
    if projection == "per_fragment":
      self.project = FragmentProjection(num_fragments, self.fragment_size, dim)
    else:
      self.project = nn.Linear(self.fragment_size, dim)
    self.pos_embed = nn.Parameter(torch.randn(1, num_fragments, dim) * 0.02)
    self.group_tokens = nn.Parameter(torch.randn(num_groups, 1, dim) * 0.02)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    self.intra = TransformerBlock(dim, heads, dropout)
    self.inter = TransformerBlock(dim, heads, dropout)
    self.norm = nn.LayerNorm(dim, eps=1e-5)

  def forward(self, genes: torch.Tensor) -> torch.Tensor:
    b = genes.shape[0]
    x = F.pad(genes, (0, self.pad)).reshape(b, self.num_fragments, self.fragment_size)
    h = self.project(x) + self.pos_embed
    d = h.shape[-1]
    h = h.reshape(b, self.num_groups, self.num_fragments // self.num_groups, d)
    tokens = self.group_tokens.to(h.dtype).expand(b, -1, -1, -1)
    h = torch.cat([tokens, h], dim=2).reshape(b * self.num_groups, -1, d)
    group_out = self.intra(h)[:, 0].reshape(b, self.num_groups, d)
    cls = self.cls_token.to(h.dtype).expand(b, -1, -1)
    return self.norm(self.inter(torch.cat([cls, group_out], dim=1))[:, 0])


class MLPHead(nn.Module):
  def __init__(self, in_dim: int, hidden: int, num_classes: int, dropout: float):
    super().__init__()
    self.fc1 = nn.Linear(in_dim, hidden)
    self.drop = nn.Dropout(dropout)
    self.fc2 = nn.Linear(hidden, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.drop(F.relu(self.fc1(x))))


class GiMP(nn.Module):
  """Aggregator + GroupMSA + decoder + head, configured from a gimp_jax config."""

  def __init__(self, config, num_genes: int, num_classes: int):
    super().__init__()
    m, d = config.model, config.data.feature_dim
    self.aggregator = PatchAggregator(d, m.dim, m.depth, m.heads, m.num_landmarks, m.attn_dropout)
    self.gene_encoder = GroupMSA(num_genes, m.num_fragments, m.num_groups, m.dim, m.heads,
                                 m.gene_dropout, m.get("gene_projection", "shared"))
    self.decoder = nn.Linear(m.dim, d)
    self.head = MLPHead(2 * m.dim, m.head_hidden, num_classes, m.head_dropout)

  def encode_genes(self, genes: torch.Tensor) -> torch.Tensor:
    """CLS_ge [B, dim] from the frozen encoder in float32 (as gimp_jax), without a graph."""
    with torch.no_grad(), torch.autocast(device_type=_DEVICE.type, enabled=False):
      return self.gene_encoder(genes.float())

  def forward(self, patches: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
    """Whole-bag logits [B, C]."""
    cls_img, _ = self.aggregator(patches)
    return self.head(torch.cat([cls_img.float(), self.encode_genes(genes)], dim=-1))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Mean |pred - target| over masked tokens and features (gimp_jax.losses.masked_l1)."""
  m = mask.float()
  total = ((pred.float() - target.float()).abs() * m[..., None]).sum()
  return total / torch.clamp(m.sum() * pred.shape[-1], min=1.0)


def triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float, mining: str
                 ) -> torch.Tensor:
  """Squared-Euclidean triplet loss, batch-hard or batch-all (gimp_jax.losses.triplet_loss)."""
  emb = emb.float()
  d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
  same = labels[:, None] == labels[None]
  pos = same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=emb.device)
  neg = ~same
  if mining == "batch_hard":
    hardest_pos = torch.where(pos, d, -torch.inf).amax(1)
    hardest_neg = torch.where(neg, d, torch.inf).amin(1)
    valid = pos.any(1) & neg.any(1)
    per = torch.where(valid, F.relu(hardest_pos + margin - hardest_neg), 0.0)
    return per.sum() / torch.clamp(valid.sum(), min=1)
  valid = pos[:, :, None] & neg[:, None, :]
  per = F.relu(d[:, :, None] + margin - d[:, None, :])
  return torch.where(valid, per, 0.0).sum() / torch.clamp(valid.sum(), min=1)


def variance_hinge(x: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
  """VICReg's variance term (gimp_jax.losses.variance_hinge): mean relu(target - std over batch)."""
  std = torch.sqrt(x.float().var(0, unbiased=False) + eps)
  return F.relu(target - std).mean()


def pretrain_loss(model: GiMP, batch: dict, cfg) -> torch.Tensor:
  """L_pre as `gimp_jax.objectives.gimp` computes it for the config block `cfg` (config.pretrain):
  rec_weight L_rec + tri_weight (L_tri on [CLS_img; CLS_ge] (+ on CLS_img with "pat+img")), the
  halves L2-normalised when `triplet_normalize`, + img_variance_weight x the variance hinge on
  CLS_img (the frozen encoder runs without a graph)."""
  cls_img, tokens = model.aggregator(batch["patches"], batch["mpm_mask"])
  rec = masked_l1(model.decoder(tokens), batch["patches"], batch["mpm_mask"])
  img, ge = cls_img.float(), model.encode_genes(batch["genes"])
  if cfg.triplet_normalize:
    img, ge = F.normalize(img, dim=-1, eps=1e-12), F.normalize(ge, dim=-1, eps=1e-12)
  terms = cfg.triplet_on.split("+")
  main = torch.cat([img, ge], dim=-1) if "pat" in terms else img
  loss = cfg.rec_weight * rec + cfg.tri_weight * triplet_loss(main, batch["label"], cfg.margin,
                                                              cfg.mining)
  if "pat" in terms and "img" in terms:
    loss = loss + cfg.tri_weight * triplet_loss(img, batch["label"], cfg.margin, cfg.mining)
  if cfg.img_variance_weight:
    loss = loss + cfg.img_variance_weight * variance_hinge(cls_img)
  return loss


def finetune_loss(model: GiMP, batch: dict) -> torch.Tensor:
  """Cross-entropy of the head on CLS_pat."""
  return F.cross_entropy(model(batch["patches"], batch["genes"]).float(), batch["label"])


def _autocast(dtype: str):
  if dtype == "bfloat16":
    return torch.autocast(device_type=_DEVICE.type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def device() -> torch.device:
  return _DEVICE


def make_train_step(model: GiMP, loss_fn, *, dtype: str, compile_mode: str | None,
                    lr: float, weight_decay: float, grad_clip: float):
  """step(batch) -> loss: forward, backward, clipping and AdamW on the trainable parameters.

  Args:
    model: the model (gene encoder frozen here).
    loss_fn: (model, batch) -> scalar loss.
    dtype: "float32" or "bfloat16" (autocast).
    compile_mode: None for eager, else a `torch.compile` mode ("default", "max-autotune", ...)
      applied to the forward + loss (AOTAutograd compiles its backward too).
    lr, weight_decay, grad_clip: AdamW and clipping settings.
  """
  model.gene_encoder.requires_grad_(False)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

  def forward(batch):
    with _autocast(dtype):
      return loss_fn(model, batch)
  forward = torch.compile(forward, mode=compile_mode) if compile_mode else forward

  def step(batch):
    opt.zero_grad(set_to_none=True)
    loss = forward(batch)
    loss.backward()
    if grad_clip:
      torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return loss.detach()
  return step


def make_forward(model: GiMP, *, dtype: str, compile_mode: str | None):
  """forward(patches [B, N, D], genes [B, G]) -> logits [B, C] in eval mode under no_grad."""
  model.eval()

  def forward(patches, genes):
    with torch.no_grad(), _autocast(dtype):
      return model(patches, genes)
  return torch.compile(forward, mode=compile_mode) if compile_mode else forward


def synchronize() -> None:
  if _DEVICE.type == "cuda":
    torch.cuda.synchronize()


def to_torch(batch: dict) -> dict:
  """The numeric arrays of a NumPy batch -> tensors on the device (bool stays bool, labels
  int64; string IDs are dropped, as `gimp_jax.train.loop.to_device` does)."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.dtype.kind in "biuf":
      t = torch.from_numpy(np.array(v))  # a copy: pipeline arrays may be read-only
      out[k] = (t.long() if k == "label" else t).to(_DEVICE)
  return out


def load_gimp_params(model: GiMP, flat: dict[str, np.ndarray]) -> None:
  """Copies gimp_jax parameters ({'aggregator/embed/kernel': array, ...}, see
  `gimp_jax.train.optim.flat_paths`) into the same-named PyTorch parameters.

  Linear kernels [in, out] are transposed; LayerNorm `scale` is `weight`; the Nyström output
  projection is `to_out.0`; the depthwise kernel [H, K] becomes [H, 1, K, 1].
  """
  modules = dict(model.named_modules())
  with torch.no_grad():
    for name, p in model.named_parameters():
      owner, _, leaf = name.rpartition(".")
      path = owner.replace(".", "/").replace("to_out/0", "to_out")
      module = modules.get(owner)
      if isinstance(module, nn.Conv2d):
        value = flat[path][:, None, :, None]
      elif isinstance(module, nn.LayerNorm):
        value = flat[f"{path}/{'scale' if leaf == 'weight' else 'bias'}"]
      elif isinstance(module, nn.Linear):
        value = flat[f"{path}/kernel"].T if leaf == "weight" else flat[f"{path}/bias"]
      else:
        value = flat[f"{path}/{leaf}" if path else leaf]
      if tuple(value.shape) != tuple(p.shape):
        raise ValueError(f"{name}: gimp_jax shape {value.shape} vs torch {tuple(p.shape)}")
      p.copy_(torch.from_numpy(np.array(value, np.float32)))
