"""Every baseline loss against an independent NumPy computation, and each objective's train step."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax.configs.methods import biovil_clip, itm as itm_config, mgca as mgca_config
from gimp_jax.configs.methods import refers as refers_config
from gimp_jax.configs import nsclc
from gimp_jax import methods
from gimp_jax.objectives import clip, itm, mgca, mil, refers
from gimp_jax.train import optim, steps
from gimp_jax.train.state import train_state

RNG = np.random.default_rng(0)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- InfoNCE


def np_info_nce(a, b, tau, direction):
  n = len(a)
  a2b = np.mean([-np.log(np.exp(a[i] @ b[i] / tau) / sum(np.exp(a[i] @ b[j] / tau)
                                                        for j in range(n))) for i in range(n)])
  b2a = np.mean([-np.log(np.exp(a[i] @ b[i] / tau) / sum(np.exp(a[j] @ b[i] / tau)
                                                        for j in range(n))) for i in range(n)])
  return {"a2b": a2b, "b2a": b2a, "symmetric": 0.5 * (a2b + b2a)}[direction]


@pytest.mark.parametrize("direction", ["a2b", "b2a", "symmetric"])
def test_info_nce_matches_numpy(direction):
  a, b = unit(RNG.standard_normal((2, 5, 8)))
  got = clip.info_nce(jnp.asarray(a), jnp.asarray(b), 0.1, direction)
  np.testing.assert_allclose(float(got), np_info_nce(a, b, 0.1, direction), rtol=1e-5)


def test_info_nce_prefers_matched_pairs():
  a = unit(RNG.standard_normal((6, 8)))
  matched = float(clip.info_nce(jnp.asarray(a), jnp.asarray(a), 0.1))
  shuffled = float(clip.info_nce(jnp.asarray(a), jnp.asarray(a[::-1]), 0.1))
  assert matched < 0.1 < shuffled


# ----------------------------------------------------------------------------- MGCA


def np_sinkhorn(scores, eps, iters):
  """SwAV's distributed_sinkhorn written out on one device."""
  q = np.exp(scores / eps).T
  q /= q.sum()
  k, b = q.shape
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  q *= b
  return q.T


def test_sinkhorn_matches_numpy_and_balances_prototypes():
  scores = RNG.uniform(-1, 1, (12, 4))
  got = np.asarray(mgca.sinkhorn(jnp.asarray(scores), 0.05, 3))
  np.testing.assert_allclose(got, np_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
  many = np.asarray(mgca.sinkhorn(jnp.asarray(scores), 0.05, 50))
  np.testing.assert_allclose(many.sum(0), 12 / 4, rtol=1e-3)  # equal mass per prototype


def test_sinkhorn_has_no_gradient():
  g = jax.grad(lambda s: jnp.sum(mgca.sinkhorn(s) * jnp.arange(4.0)))(jnp.ones((3, 4)))
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_cpa_matches_numpy():
  v, t = unit(RNG.standard_normal((2, 6, 8)))
  protos = RNG.standard_normal((5, 8))
  c = unit(protos)
  q_v, q_t = np_sinkhorn(v @ c.T, 0.05, 3), np_sinkhorn(t @ c.T, 0.05, 3)
  lp_v, lp_t = np_log_softmax(v @ c.T / 0.2), np_log_softmax(t @ c.T / 0.2)
  want = 0.5 * (-(q_t * lp_v).sum(1).mean() - (q_v * lp_t).sum(1).mean())
  got = mgca.cpa_loss(jnp.asarray(v), jnp.asarray(t), jnp.asarray(protos))
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def np_attend(q, kv, kv_mask, tau):
  out = np.zeros_like(q)
  for j in range(len(q)):
    logits = np.array([q[j] @ kv[k] / tau if kv_mask[k] else -np.inf for k in range(len(kv))])
    w = np.exp(logits - logits.max())
    w /= w.sum()
    o = (w[:, None] * kv).sum(0)
    out[j] = o / np.linalg.norm(o)
  return out


def np_token_infonce(x, o, w, mask, tau):
  total = 0.0
  for b in range(len(x)):
    real = np.flatnonzero(mask[b])
    wb = np.where(mask[b], w[b], 0.0)
    wb = wb / wb.sum()
    for j in real:
      p1 = x[b, j] @ o[b, j] / tau - np.log(sum(np.exp(x[b, j] @ o[b, k] / tau) for k in real))
      p2 = o[b, j] @ x[b, j] / tau - np.log(sum(np.exp(o[b, j] @ x[b, k] / tau) for k in real))
      total += wb[j] * (p1 + p2)
  return -total / (2 * len(x))


def test_token_alignment_matches_numpy_with_padding():
  b, s, t, d = 2, 5, 4, 6
  r, z = unit(RNG.standard_normal((b, s, d))), unit(RNG.standard_normal((b, t, d)))
  r_mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  z_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  w_r, w_z = RNG.uniform(0.1, 1, (b, s)), RNG.uniform(0.1, 1, (b, t))
  o_img = np.stack([np_attend(r[i], z[i], z_mask[i], 0.1) for i in range(b)])
  o_gene = np.stack([np_attend(z[i], r[i], r_mask[i], 0.1) for i in range(b)])
  np.testing.assert_allclose(
      np.asarray(mgca.cross_attend(jnp.asarray(r), jnp.asarray(z), jnp.asarray(z_mask))),
      o_img, rtol=1e-4, atol=1e-6)
  want = 0.5 * (np_token_infonce(r, o_img, w_r, r_mask, 0.07)
                + np_token_infonce(z, o_gene, w_z, z_mask, 0.07))
  args = [jnp.asarray(a) for a in (r, r_mask, w_r, z, z_mask, w_z)]
  got = mgca.cta_loss(*args, temperature=0.07, attn_temperature=0.1)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  grads = jax.grad(lambda r: mgca.cta_loss(r, *args[1:]))(args[0])
  assert np.all(np.isfinite(np.asarray(grads)))
  np.testing.assert_array_equal(np.asarray(grads)[0, 4], 0.0)  # padded token: no gradient


def test_clipped_weights_match_numpy():
  att = RNG.uniform(0, 1, (2, 11))
  mask = np.ones((2, 11), bool)
  mask[1, 8:] = False
  want = np.zeros_like(att)
  for i in range(2):
    real = att[i, mask[i]]
    w = np.clip(real, np.percentile(real, 10), np.percentile(real, 90))
    want[i, mask[i]] = w / w.sum()
  got = mgca.clipped_weights(jnp.asarray(att), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- REFERS, ITM


def test_view_fusion_and_expression_loss_match_numpy():
  f = RNG.standard_normal((2, 3, 4))
  scores = RNG.standard_normal((2, 3))
  view_mask = np.array([[1, 1, 1], [1, 0, 1]], bool)
  fused, alpha = refers.fuse_views(jnp.asarray(f), jnp.asarray(scores), jnp.asarray(view_mask))
  for i in range(2):
    e = np.where(view_mask[i], np.exp(scores[i]), 0.0)
    a = e / e.sum()
    np.testing.assert_allclose(np.asarray(alpha[i]), a, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fused[i]), (a[:, None] * f[i]).reshape(-1), rtol=1e-5)
  pred, genes = RNG.standard_normal((2, 3, 7))
  np.testing.assert_allclose(float(refers.expression_loss(jnp.asarray(pred), jnp.asarray(genes))),
                             np.mean((pred - genes) ** 2), rtol=1e-5)


def test_split_views_is_contiguous():
  p = np.arange(2 * 7 * 1, dtype=np.float32).reshape(2, 7, 1)
  views = np.asarray(refers.split_views(jnp.asarray(p), 3))
  assert views.shape == (6, 2, 1)
  np.testing.assert_array_equal(views[:3, :, 0], [[0, 1], [2, 3], [4, 5]])
  np.testing.assert_array_equal(views[3:, :, 0], [[7, 8], [9, 10], [11, 12]])


def test_itm_bce_and_pairs_match_numpy():
  logits = RNG.standard_normal(8)
  targets = (RNG.uniform(size=8) < 0.5).astype(np.float32)
  p = 1 / (1 + np.exp(-logits))
  want = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
  np.testing.assert_allclose(float(itm.itm_bce(jnp.asarray(logits), jnp.asarray(targets))), want,
                             rtol=1e-5)
  partner, labels = itm.matching_pairs(4)
  np.testing.assert_array_equal(np.asarray(partner), [1, 2, 3, 0])
  np.testing.assert_array_equal(np.asarray(labels), 0.0)
  _, labels = itm.matching_pairs(1)
  np.testing.assert_array_equal(np.asarray(labels), [1.0])  # a patient paired with itself


# ----------------------------------------------------------------------------- CLAM, DSMIL


def np_svm(x, y, alpha=1.0, tau=1.0):
  z = x + alpha * (np.arange(len(x)) != y) - x[y]
  return tau * np.log(np.exp(z / tau).sum())


def np_ce(x, y):
  return -np_log_softmax(x)[y]


def test_smooth_top1_svm_matches_numpy():
  x = RNG.standard_normal((6, 3)) * 3
  y = RNG.integers(0, 3, 6)
  got = np.asarray(mil.smooth_top1_svm(jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(got, [np_svm(x[i], y[i]) for i in range(6)], rtol=1e-5)


def np_clam_instance(inst, att, mask, labels, k, kind, subtyping):
  fn = np_svm if kind == "svm" else np_ce
  total = []
  b, c = inst.shape[:2]
  for i in range(b):
    real = np.flatnonzero(mask[i])
    per = 0.0
    for cls in range(c):
      a = att[i, cls if att.shape[1] > 1 else 0, real]
      order = real[np.argsort(-a, kind="stable")]
      kk = min(k, len(real))
      top, bottom = order[:kk], order[::-1][:kk]
      if cls == labels[i]:
        vals = [fn(inst[i, cls, j], 1) for j in top] + [fn(inst[i, cls, j], 0) for j in bottom]
        per += np.mean(vals)
      elif subtyping:
        per += np.mean([fn(inst[i, cls, j], 0) for j in top])
    total.append(per / c if subtyping else per)
  return np.mean(total)


@pytest.mark.parametrize("kind,branches,subtyping",
                         list(itertools.product(["svm", "ce"], [1, 3], [True, False])))
def test_clam_instance_loss_matches_numpy(kind, branches, subtyping):
  b, c, n, k = 3, 3, 12, 4
  inst = RNG.standard_normal((b, c, n, 2))
  att = RNG.uniform(size=(b, branches, n))
  mask = np.ones((b, n), bool)
  mask[1, 9:] = False
  mask[2, 3:] = False  # fewer real patches than k: only the real ones count
  att[1, :, 9:] = 5.0  # large attention on padding must be ignored
  labels = np.array([0, 2, 1])
  got = mil.clam_instance_loss(jnp.asarray(inst), jnp.asarray(att), jnp.asarray(mask),
                               jnp.asarray(labels), k=k, loss=kind, subtyping=subtyping)
  want = np_clam_instance(inst, att, mask, labels, k, kind, subtyping)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


class _Streams:
  """A stand-in DSMIL model whose two streams return fixed logits."""

  def __init__(self, bag, mx):
    self.out = (jnp.asarray(bag), jnp.asarray(mx), None)

  def streams(self, patches, patch_mask):
    del patches, patch_mask
    return self.out


def test_dsmil_loss_matches_numpy():
  bag, mx = RNG.standard_normal((2, 4, 3))
  y = np.array([0, 2, 1, 1])
  want = np.mean([0.5 * np_ce(bag[i], y[i]) + 0.5 * np_ce(mx[i], y[i]) for i in range(4)])
  cfg = nsclc.get_config("tiny")
  loss_fn = mil.make_dsmil_loss(None, cfg.finetune, cfg.task, cfg.survival)
  got, _ = loss_fn(_Streams(bag, mx), {"patches": jnp.zeros((4, 1, 1)), "label": jnp.asarray(y)})
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ----------------------------------------------------------------------------- train steps


def _window_batch(cfg, b=4):
  rng = np.random.default_rng(1)
  labels = np.array([0, 1] * (b // 2), np.int32)
  patches = rng.standard_normal((b, cfg.pretrain.window, cfg.data.feature_dim)) + labels[:, None,
                                                                                        None]
  return {"patches": jnp.asarray(patches, jnp.float32),
          "mpm_mask": jnp.asarray(np.argsort(rng.random((b, cfg.pretrain.window)), axis=1)
                                  < cfg.pretrain.window // 2),
          "genes": jnp.asarray(rng.standard_normal((b, cfg.data.num_genes)), jnp.float32),
          "label": jnp.asarray(labels)}


@pytest.mark.parametrize("module", [biovil_clip, mgca_config, refers_config, itm_config])
def test_objective_steps_lower_the_loss_and_keep_the_gene_encoder_frozen(module):
  cfg = module.get_config("tiny")
  cfg.optim.learning_rate = 1e-3
  model = methods.build(cfg, [f"G{i}" for i in range(cfg.data.num_genes)], 2, 0)
  state = train_state(model, cfg.optim, steps_per_epoch=12, epochs=1, frozen=cfg.pretrain.frozen)
  before = {k: np.array(v) for k, v in optim.flat_paths(state.params).items()}  # state is donated
  # As the CLI's pre-training stage: the frozen encoder in eval mode (no gene input dropout).
  step = steps.make_train_step(methods.pretrain_loss(cfg), cfg.pretrain.frozen)
  batch = _window_batch(cfg)
  history = []
  for i in range(12):
    state, metrics = step(state, batch, jax.random.key(i))
    history.append(float(metrics["loss"]))
  assert np.all(np.isfinite(history))
  assert np.mean(history[-3:]) < np.mean(history[:3]), history
  after = optim.flat_paths(state.params)
  for k, v in before.items():
    if k.startswith("gene_encoder/"):
      np.testing.assert_array_equal(np.asarray(after[k]), v)
  assert any(k.startswith("objective/") and not np.array_equal(np.asarray(after[k]), v)
             for k, v in before.items())


# ----------------------------------------------------------------------------- GiMP's L_pre


def _np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_batch_hard(emb, labels, margin):
  d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
  vals = []
  for a in range(len(labels)):
    p = [d[a, j] for j in range(len(labels)) if j != a and labels[j] == labels[a]]
    q = [d[a, j] for j in range(len(labels)) if labels[j] != labels[a]]
    if p and q:
      vals.append(max(0.0, max(p) + margin - min(q)))
  return np.mean(vals) if vals else 0.0


@pytest.mark.parametrize("normalize,triplet_on,var_weight",
                         [(False, "pat", 0.0), (True, "pat", 0.0), (True, "pat+img", 0.5),
                          (False, "img", 0.0)])
def test_gimp_pretrain_loss_terms_match_numpy(normalize, triplet_on, var_weight):
  """L_pre = w_tri (L_tri(CLS_pat) [+ L_tri(CLS_img)]) + w_rec L_rec [+ w_var var(CLS_img)], each
  term recomputed in NumPy from the model's CLS tokens."""
  from gimp_jax.configs import nsclc  # pylint: disable=g-import-not-at-top
  from gimp_jax.models import build  # pylint: disable=g-import-not-at-top
  from gimp_jax.objectives import gimp as gimp_objective  # pylint: disable=g-import-not-at-top
  cfg = nsclc.get_config("tiny")
  cfg.pretrain.triplet_normalize = normalize
  cfg.pretrain.triplet_on = triplet_on
  cfg.pretrain.img_variance_weight = var_weight
  cfg.pretrain.tri_weight, cfg.pretrain.rec_weight = 2.0, 0.5
  cfg.pretrain.margin = 0.3
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  model.eval()
  rng = np.random.default_rng(0)
  labels = np.array([0, 1, 0, 1, 1, 0], np.int32)
  batch = {"patches": jnp.asarray(rng.standard_normal((6, 16, 32)), jnp.float32),
           "mpm_mask": jnp.asarray(np.argsort(rng.random((6, 16)), axis=1) < 8),
           "genes": jnp.asarray(rng.standard_normal((6, 96)), jnp.float32),
           "label": jnp.asarray(labels)}
  loss, metrics = gimp_objective.make_loss(cfg.pretrain)(model, batch)
  cls_img, tokens = model.aggregator(batch["patches"], mpm_mask=batch["mpm_mask"])
  img = np.asarray(cls_img, np.float64)
  ge = np.asarray(model.gene_encoder(batch["genes"]), np.float64)
  if normalize:
    img, ge = _np_unit(img), _np_unit(ge)
  rec = np.asarray(model.reconstruct(tokens), np.float64)
  m = np.asarray(batch["mpm_mask"])
  want_rec = np.abs(rec - np.asarray(batch["patches"]))[m].mean()
  main = np.concatenate([img, ge], -1) if "pat" in triplet_on else img
  want_tri = _np_batch_hard(main, labels, 0.3)
  want = 0.5 * want_rec + 2.0 * want_tri
  if triplet_on == "pat+img":
    want += 2.0 * _np_batch_hard(img, labels, 0.3)
  if var_weight:
    raw = np.asarray(cls_img, np.float64)
    want += var_weight * np.mean(np.maximum(0, 1 - np.sqrt(raw.var(0) + 1e-4)))
  np.testing.assert_allclose(float(metrics["rec_loss"]), want_rec, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["tri_loss"]), want_tri, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)
  assert ("gene_gap" in metrics) == ("pat" in triplet_on)
  assert float(metrics["tri_anchors"]) == 1.0  # three of each class: every case anchors
  none = dict(batch, label=jnp.asarray([0, 1, 2, 3, 4, 5], jnp.int32))  # no positive anywhere
  assert float(gimp_objective.make_loss(cfg.pretrain)(model, none)[1]["tri_anchors"]) == 0.0


def _padded_windows(cfg, lengths, seed=0):
  """Windows of L = cfg.pretrain.window patches: row j holds lengths[j] real patches, then padding
  (7.0, flagged by patch_mask), masked by `masking.sample_mpm` over its real patches."""
  from gimp_jax import masking  # pylint: disable=g-import-not-at-top
  window, dim = cfg.pretrain.window, cfg.data.feature_dim
  rng = np.random.default_rng(seed)
  patches = np.full((len(lengths), window, dim), 7.0, np.float32)
  mpm = np.zeros((len(lengths), window), bool)
  for j, n in enumerate(lengths):
    patches[j, :n] = rng.standard_normal((n, dim))
    mpm[j, :n] = masking.sample_mpm(rng, n, n, cfg.pretrain.mask_ratio)[1]
  labels = np.arange(len(lengths), dtype=np.int32) % 2
  return {"patches": jnp.asarray(patches), "mpm_mask": jnp.asarray(mpm),
          "patch_mask": jnp.asarray(np.arange(window)[None] < np.array(lengths)[:, None]),
          "genes": jnp.asarray(rng.standard_normal((len(lengths), cfg.data.num_genes)),
                               jnp.float32), "label": jnp.asarray(labels)}


def test_gimp_pretrain_loss_on_padded_short_windows_equals_every_position_decoded():
  """L_pre embeds the visible patches only and decodes the masked ones only (`masking.mpm_slots`):
  on a batch with a full window and short bags padded to L, L_rec equals NumPy's L1 over every
  masked real patch of the full decoder's output, CLS_img equals the aggregator's with a boolean
  mask, and the gradient of L_rec equals that of the every-position formulation."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from gimp_jax import losses, masking  # pylint: disable=g-import-not-at-top
  from gimp_jax.models import build  # pylint: disable=g-import-not-at-top
  from gimp_jax.objectives import gimp as gimp_objective  # pylint: disable=g-import-not-at-top
  cfg = nsclc.get_config("tiny")  # L = 64
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  model.eval()
  batch = _padded_windows(cfg, [64, 37, 5, 64])
  real_masked = batch["mpm_mask"] & batch["patch_mask"]

  def every_position(m):  # the formulation before mpm_slots: embed and decode all L positions
    cls, tokens = m.aggregator(batch["patches"], mpm_mask=batch["mpm_mask"],
                               patch_mask=batch["patch_mask"])
    return cls, m.reconstruct(tokens)

  new_loss = gimp_objective.make_loss(cfg.pretrain)  # jitted below: eager dispatch costs 5x
  _, metrics = nnx.jit(new_loss)(model, batch)
  cls_old, rec_full = nnx.jit(every_position)(model)
  want = np.abs(np.asarray(rec_full, np.float64) - np.asarray(batch["patches"]))[
      np.asarray(real_masked)].mean()
  np.testing.assert_allclose(float(metrics["rec_loss"]), want, rtol=1e-5)
  slots = masking.mpm_slots(batch["mpm_mask"], masking.num_masked(64, 0.5), batch["patch_mask"])
  cls_new, _ = nnx.jit(lambda m: m.aggregator(batch["patches"], mpm_mask=slots,
                                              patch_mask=batch["patch_mask"]))(model)
  np.testing.assert_allclose(np.asarray(cls_new), np.asarray(cls_old), rtol=1e-5, atol=1e-6)
  g_new = nnx.jit(nnx.grad(lambda m: new_loss(m, batch)[1]["rec_loss"]))(model)
  g_old = nnx.jit(nnx.grad(lambda m: losses.masked_l1(every_position(m)[1], batch["patches"],
                                                      real_masked)))(model)
  for a, b in zip(jax.tree_util.tree_leaves(g_new), jax.tree_util.tree_leaves(g_old)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_gimp_pretrain_loss_is_nan_for_a_mask_outside_the_static_bound():
  """A window with more than K = num_masked(L, ratio) masked patches cannot be decoded in K slots:
  L_rec is NaN (the loop's non-finite guard stops), not a loss over part of them."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from gimp_jax.models import build  # pylint: disable=g-import-not-at-top
  from gimp_jax.objectives import gimp as gimp_objective  # pylint: disable=g-import-not-at-top
  cfg = nsclc.get_config("tiny")
  model = build.build_gimp(cfg.model, cfg.data.feature_dim, cfg.data.num_genes, 2, seed=0,
                           dtype=cfg.compute_dtype)
  batch = _padded_windows(cfg, [64, 64])
  del batch["patch_mask"]
  loss_fn = nnx.jit(gimp_objective.make_loss(cfg.pretrain))  # one compile: eager is 5x slower
  _, metrics = loss_fn(model, batch)
  assert np.isfinite(float(metrics["rec_loss"]))
  batch["mpm_mask"] = batch["mpm_mask"].at[1].set(jnp.arange(64) < 33)
  loss, metrics = loss_fn(model, batch)
  assert np.isnan(float(metrics["rec_loss"])) and np.isnan(float(loss))
