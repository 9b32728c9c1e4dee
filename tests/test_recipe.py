"""GiMP's default fine-tuning recipe (configs/nsclc.py RECIPE) against the paper's settings: the
default differs from `published` in exactly the recipe's fields, the baselines keep the paper's
settings, and the published presets stay reachable by name."""

import json

import pytest

from gimp_jax.configs import methods
from gimp_jax.configs import nsclc
from gimp_jax.report import run_facts

# The methods that are not GiMP's pipeline: they start from the paper's settings, unchanged.
BASELINES = ("abmil", "clam_sb", "clam_mb", "dsmil", "transmil", "gimp_image_only", "mcat",
             "pathomic", "porpoise", "tangle", "tangle_rec", "intra")


def _flat(config) -> dict:
  return {f"{block}.{k}": v for block, sub in config.items() if hasattr(sub, "items")
          for k, v in sub.items()} | {k: v for k, v in config.items() if not hasattr(v, "items")}


@pytest.mark.parametrize("size", ["paper", "cpu", "tiny"])
def test_default_is_the_paper_plus_exactly_the_recipe(size):
  default, paper = _flat(nsclc.get_config(size)), _flat(nsclc.published(size))
  changed = {k for k in default if default[k] != paper[k]}
  assert changed == set(nsclc.RECIPE)
  assert all(default[k] == v for k, v in nsclc.RECIPE.items())
  assert paper["model.modality_dropout"] == 0.0 and paper["optim.weight_decay"] == 1e-4
  assert paper["model.gene_input_dropout"] == 0.0


def test_the_report_lists_the_recipe_as_the_difference_from_the_paper():
  assert run_facts.config_diff(nsclc.get_config("paper")) == [
      f"{k}: {json.dumps(paper)} -> {json.dumps(new)}" for k, paper, new in
      sorted((k, _flat(nsclc.published())[k], v) for k, v in nsclc.RECIPE.items())]
  assert run_facts.config_diff(methods.get_config("gimp_published", "paper")) == []


def test_baselines_keep_the_paper_settings_and_gimp_without_pretraining_is_the_recipe():
  paper = _flat(nsclc.published("tiny"))
  for name in BASELINES:
    c = _flat(methods.get_config(name, "tiny"))
    assert {k: c[k] for k in nsclc.RECIPE} == {k: paper[k] for k in nsclc.RECIPE}, name
  default = methods.get_config("gimp_no_pretrain", "tiny")
  published = methods.get_config("gimp_no_pretrain_published", "tiny")
  assert default.stages == published.stages == ("gene_pretrain", "finetune", "test")
  assert default.finetune.frozen == published.finetune.frozen == r"^gene_encoder/"
  assert _flat(default) == _flat(published) | nsclc.RECIPE
  assert published.model.gene_input_dropout == 0.0
