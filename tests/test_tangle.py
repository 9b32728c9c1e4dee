"""TANGLE, TANGLE-Rec and Intra: the losses against NumPy, the slide encoder's pooling, the patch
subsampling."""

import numpy as np
import pytest

from gimp_jax import masking
from gimp_jax.configs.methods import tangle as tangle_config
from gimp_jax import methods


def _np_info_nce_symmetric(a, b, tau):
  """0.5 (CE(rows of a b^T / tau) + CE(rows of b a^T / tau)) with targets on the diagonal, after
  L2 normalisation (mahmoodlab/TANGLE's InfoNCE with symmetric=True), in float64."""
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)

  def ce(logits):
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(np.diag(logp))
  return 0.5 * (ce(a @ b.T / tau) + ce(b @ a.T / tau))


def _model_and_batch(method, num_genes=24, batch=5, tokens=12):
  config = tangle_config.get_config("tiny", method=method)
  config.data.feature_dim = 16
  config.model.dim = 8
  model = methods.build(config, [f"G{i}" for i in range(num_genes)], 2, 0)
  model.eval()  # no dropout: the loss is then a function of the embeddings alone
  rng = np.random.default_rng(0)
  views = 2 if method == "intra" else 1
  batch = {"patches": rng.normal(size=(batch, views * tokens, 16)).astype(np.float32),
           "genes": rng.normal(size=(batch, num_genes)).astype(np.float32),
           "label": np.arange(batch) % 2}
  return config, model, batch


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_tangle_loss_is_symmetric_info_nce_of_slide_and_expression(tau):
  config, model, batch = _model_and_batch("tangle")
  config.tangle.temperature = tau
  loss, metrics = methods.pretrain_loss(config)(model, batch)
  s = np.asarray(model.slide_encoder(batch["patches"]), np.float64)
  e = np.asarray(model.expression_encoder(batch["genes"]), np.float64)
  np.testing.assert_allclose(float(loss), _np_info_nce_symmetric(s, e, tau), rtol=2e-4)
  sn, en = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (s, e))
  np.testing.assert_allclose(float(metrics["match_accuracy"]),
                             np.mean((sn @ en.T).argmax(1) == np.arange(5)), rtol=1e-6)


def test_tangle_rec_loss_is_mse_of_the_predicted_expression():
  config, model, batch = _model_and_batch("tangle_rec")
  assert model.expression_encoder is None and model.expression_decoder is not None
  loss, _ = methods.pretrain_loss(config)(model, batch)
  pred = np.asarray(model.expression_decoder(model.slide_encoder(batch["patches"])), np.float64)
  np.testing.assert_allclose(float(loss), np.mean((pred - batch["genes"]) ** 2), rtol=1e-5)


def test_intra_contrasts_the_two_halves_of_the_window():
  config, model, batch = _model_and_batch("intra")
  assert model.expression_encoder is None and model.expression_decoder is None
  loss, _ = methods.pretrain_loss(config)(model, batch)
  p = batch["patches"]
  a = np.asarray(model.slide_encoder(p[:, :12]), np.float64)
  b = np.asarray(model.slide_encoder(p[:, 12:]), np.float64)
  np.testing.assert_allclose(float(loss), _np_info_nce_symmetric(a, b, config.tangle.temperature),
                             rtol=2e-4)
  assert config.pretrain.window == 2 * config.tangle.n_tokens


def test_slide_encoder_is_gated_attention_pooling_that_ignores_padding():
  _, model, batch = _model_and_batch("tangle")
  enc = model.slide_encoder
  p = batch["patches"][:1, :7]
  emb, attn = enc(p, return_attention=True)
  h = np.asarray(enc.pre(p), np.float64)[0]                     # [7, dim]
  at = enc.attention
  a = np.tanh(h @ np.asarray(at.attention_a.kernel[...]) + np.asarray(at.attention_a.bias[...]))
  g = 1 / (1 + np.exp(-(h @ np.asarray(at.attention_b.kernel[...])
                        + np.asarray(at.attention_b.bias[...]))))
  score = ((a * g) @ np.asarray(at.attention_c.kernel[...]))[:, 0] + float(
      at.attention_c.bias[...][0])
  w = np.exp(score - score.max())
  w /= w.sum()
  np.testing.assert_allclose(np.asarray(attn)[0], w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(emb)[0], w @ h, rtol=1e-4, atol=1e-5)
  padded = np.concatenate([p, np.full((1, 5, 16), 9.0, np.float32)], axis=1)
  mask = np.arange(12)[None] < 7
  np.testing.assert_allclose(np.asarray(enc(padded, mask)), np.asarray(emb), rtol=1e-5, atol=1e-6)
  logits, out = model(padded, None, mask)
  assert logits.shape == (1, 2) and np.allclose(out, emb, atol=1e-6)


def test_uniform_patch_subsampling_draws_with_replacement_over_the_whole_bag():
  rows = masking.sample_uniform(np.random.default_rng(3), 10, 4000)
  assert rows.shape == (4000,) and rows.min() == 0 and rows.max() == 9
  assert np.all(np.diff(rows) >= 0)
  counts = np.bincount(rows, minlength=10)
  assert counts.min() > 300  # uniform: ~400 each
  again = masking.sample_uniform(np.random.default_rng(3), 10, 4000)
  np.testing.assert_array_equal(rows, again)
  short = masking.sample_uniform(np.random.default_rng(0), 3, 50)
  assert set(short.tolist()) == {0, 1, 2}  # a bag shorter than the draw: repeats


def test_uniform_pretrain_batches_read_the_drawn_rows(tmp_path):
  from gimp_jax.data import cohort as cohort_lib  # pylint: disable=g-import-not-at-top
  from gimp_jax.data import pipeline, synthetic  # pylint: disable=g-import-not-at-top
  paths = synthetic.make_cohort(str(tmp_path), patients=6, genes=20, feature_dim=8, min_patches=5,
                                max_patches=9, seed=0)
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec(**paths, feature_dim=8))
  order = pipeline.epoch_order(cohort.split("train"), 1, 0)
  batch = next(pipeline.pretrain_batches(cohort, "train", batch_size=2, window=40, ratio=0.5,
                                         seed=1, epoch=0, prefetch=0, sampling="uniform"))
  for position in range(2):
    rng = masking.window_rng(1, 0, position)
    masking.sample_mpm(rng, cohort.bag_sizes[order[position]], 40, 0.5)  # drawn first, as there
    rows = masking.sample_uniform(rng, cohort.bag_sizes[order[position]], 40)
    np.testing.assert_array_equal(batch["patches"][position],
                                  cohort.bag(order[position]).features(rows))
