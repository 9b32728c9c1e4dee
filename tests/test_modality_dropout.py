"""Modality dropout: slide-only predictions from the learned missing-genes token; full-modality
predictions in eval mode unchanged by it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax import methods
from gimp_jax.configs import nsclc
from gimp_jax.configs.methods import mcat, pathomic, porpoise
from gimp_jax.data import synthetic
from gimp_jax.models.modality_dropout import ModalityDropout
from gimp_jax.train import transfer
from gimp_jax.train.state import create_state

CONFIGS = {"gimp": nsclc, "porpoise": porpoise, "pathomic": pathomic, "mcat": mcat}


def _build(name, rate):
  c = CONFIGS[name].get_config("tiny")
  c.model.modality_dropout = rate
  return methods.build(c, synthetic.gene_symbols(96), 2, 0)


def _inputs():
  rng = np.random.default_rng(0)
  patches = rng.normal(size=(3, 20, 32)).astype(np.float32)
  genes = rng.normal(size=(3, 96)).astype(np.float32)
  return jnp.asarray(patches), jnp.asarray(genes)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eval_with_expression_is_unchanged_and_slide_only_uses_the_token(name):
  with_token, without = _build(name, 0.5), _build(name, 0.0)
  assert with_token.missing_genes is not None and without.missing_genes is None
  # The same weights in both (the token is the only extra parameter), then eval mode.
  params, report = transfer.transfer_params(create_state(without).params,
                                            create_state(with_token).params,
                                            exclude=r"^missing_genes/")
  assert report["fresh"] == ["missing_genes/token"]
  token = np.random.default_rng(1).normal(size=with_token.missing_genes.token[...].shape)
  params["missing_genes"]["token"] = nnx_value(params["missing_genes"]["token"], token)
  model = create_state(with_token).replace(params=params).model(train=False)
  ref = create_state(without).model(train=False)
  patches, genes = _inputs()
  np.testing.assert_array_equal(np.asarray(model(patches, genes)[0]),
                                np.asarray(ref(patches, genes)[0]))
  # Patient 1 without expression (a NaN row): its logits are those of the token in place of the
  # gene embedding; the others' are untouched.
  missing = genes.at[1].set(jnp.nan)
  logits = np.asarray(model(patches, missing)[0])
  assert np.isfinite(logits).all()
  np.testing.assert_array_equal(logits[[0, 2]], np.asarray(ref(patches, genes)[0])[[0, 2]])
  other = missing.at[1].set(jnp.full((96,), jnp.nan))
  np.testing.assert_array_equal(logits, np.asarray(model(patches, other)[0]))
  assert not np.allclose(logits[1], np.asarray(ref(patches, genes)[0])[1])
  if name == "gimp":  # [CLS_img; token] through the head, computed by hand
    cls_img = model.aggregator(patches)[0][1:2]  # the batch: Nyström scales over it
    expected = model.head(jnp.concatenate([cls_img, jnp.asarray(token[None], jnp.float32)], -1))
    np.testing.assert_allclose(logits[1], np.asarray(expected)[0], rtol=1e-5, atol=1e-6)


def nnx_value(like, value):
  """`value` in the container type of the state leaf `like` (an nnx.Param state entry)."""
  return jax.tree_util.tree_map(lambda _: jnp.asarray(value, jnp.float32), like)


def test_training_mode_replaces_each_row_with_probability_p():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  drop = ModalityDropout((4,), 0.3, rngs=nnx.Rngs(params=0, dropout=1))
  emb = jnp.ones((20000, 4))
  out = np.asarray(drop(emb, jnp.ones(20000, bool)))
  replaced = np.all(out == 0.0, axis=1)  # the token starts at zero
  assert abs(replaced.mean() - 0.3) < 0.015
  assert np.all((out == 1.0).all(1) | replaced)
  drop.eval()
  np.testing.assert_array_equal(np.asarray(drop(emb, jnp.ones(20000, bool))), np.asarray(emb))
  present = np.arange(20000) % 2 == 0
  out = np.asarray(drop(emb, jnp.asarray(present)))
  np.testing.assert_array_equal(out[~present], 0.0)
  np.testing.assert_array_equal(out[present], 1.0)
