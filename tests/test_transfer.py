"""gimp_jax.train.transfer: exactly the selected leaves are copied (bit for bit, cast to the
destination dtype), the rest stay as initialised; the report names both sets; a missing or
misshapen source leaf, or a transfer that copies nothing, is an error."""

import logging

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gimp_jax.train import transfer
from gimp_jax.train.optim import flat_paths


class _Encoder(nnx.Module):
  def __init__(self, rngs, dtype=jnp.float32):
    self.fc1 = nnx.Linear(3, 4, param_dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(4, param_dtype=dtype, rngs=rngs)


class _GeneClassifier(nnx.Module):
  """The gene pre-training model: gene_encoder + a head."""

  def __init__(self, rngs, classes=2, dtype=jnp.float32):
    self.gene_encoder = _Encoder(rngs, dtype)
    self.head = nnx.Linear(4, classes, param_dtype=dtype, rngs=rngs)


class _Gimp(nnx.Module):
  """gene_encoder, an aggregator that holds a submodule also named gene_encoder, and a head."""

  def __init__(self, rngs, classes=2):
    self.gene_encoder = _Encoder(rngs)
    self.aggregator = nnx.Dict(embed=nnx.Linear(5, 4, rngs=rngs), gene_encoder=_Encoder(rngs))
    self.head = nnx.Linear(4, classes, rngs=rngs)


def _params(module):
  return nnx.state(module, nnx.Param)


def _np(tree):
  return {k: np.asarray(v) for k, v in flat_paths(tree).items()}


def _assert_bits(a, b, name):
  assert a.dtype == b.dtype and a.shape == b.shape, name
  np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8),
                                err_msg=name)


def test_gene_encoder_into_gimp_copies_exactly_the_top_level_gene_encoder():
  gene, gimp = _params(_GeneClassifier(nnx.Rngs(5))), _params(_Gimp(nnx.Rngs(0)))
  gene_np, gimp_np = _np(gene), _np(gimp)
  new, report = transfer.gene_encoder_into_gimp(gene, gimp)
  new_np = _np(new)
  want = {k for k in gimp_np if k.startswith("gene_encoder/")}
  assert want == {"gene_encoder/fc1/kernel", "gene_encoder/fc1/bias", "gene_encoder/norm/scale",
                  "gene_encoder/norm/bias"}
  assert set(report["copied"]) == want and set(report["fresh"]) == set(gimp_np) - want
  assert "aggregator/gene_encoder/fc1/kernel" in report["fresh"]  # the regex is anchored
  for k in gimp_np:
    _assert_bits(new_np[k], gene_np[k] if k in want else gimp_np[k], k)
  assert not np.array_equal(gene_np["gene_encoder/fc1/kernel"], gimp_np["gene_encoder/fc1/kernel"])
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(gimp)
  for k, v in _np(gene).items():  # the source is not modified
    _assert_bits(v, gene_np[k], k)


def test_pretrained_into_finetune_keeps_the_new_head_even_when_shapes_fit():
  pre, fine = _params(_Gimp(nnx.Rngs(1))), _params(_Gimp(nnx.Rngs(2)))
  pre_np, fine_np = _np(pre), _np(fine)
  new, report = transfer.pretrained_into_finetune(pre, fine)
  new_np = _np(new)
  assert set(report["fresh"]) == {"head/kernel", "head/bias"}
  assert set(report["copied"]) == set(fine_np) - {"head/kernel", "head/bias"}
  for k in fine_np:
    _assert_bits(new_np[k], fine_np[k] if k.startswith("head/") else pre_np[k], k)


def test_copied_leaves_take_the_destination_dtype():
  src = _params(_GeneClassifier(nnx.Rngs(3), dtype=jnp.bfloat16))
  dst = _params(_GeneClassifier(nnx.Rngs(4)))
  new, _ = transfer.transfer_params(src, dst, include=r"^gene_encoder/fc1/")
  got = _np(new)["gene_encoder/fc1/kernel"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, _np(src)["gene_encoder/fc1/kernel"].astype(np.float32))


def test_missing_misshapen_or_nothing_copied_is_an_error():
  two, three = _params(_GeneClassifier(nnx.Rngs(0))), _params(_GeneClassifier(nnx.Rngs(1), 3))
  with pytest.raises(ValueError, match=r"'head/kernel': shape \(4, 2\) in the previous stage, "
                     r"\(4, 3\) in this one"):
    transfer.transfer_params(two, three, include=r"/kernel$")
  gimp = _params(_Gimp(nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"'aggregator/embed/bias': the previous stage has no"):
    transfer.transfer_params(two, gimp, exclude=r"^head/")
  with pytest.raises(ValueError, match="copied nothing"):
    transfer.transfer_params(two, three, include=r"^no_such/")


def test_transfer_logs_counts_at_info_and_names_at_debug(caplog):
  caplog.set_level(logging.DEBUG)
  gene, gimp = _params(_GeneClassifier(nnx.Rngs(5))), _params(_Gimp(nnx.Rngs(0)))
  _, report = transfer.gene_encoder_into_gimp(gene, gimp)
  info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert info == [f"Transfer: {len(report['copied'])} parameters copied, "
                  f"{len(report['fresh'])} fresh."]
  debug = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
  assert all(name in debug for name in report["copied"] + report["fresh"])
