"""The stage runner's pieces that are not a whole run: pre-training diagnostics and their
warnings, the per-stage records read back from metrics.jsonl."""

import json

from absl import logging
import ml_collections

from gimp_jax.train import loop, pretrain_stage


def _cfg():
  return ml_collections.ConfigDict({"margin": 0.8})


def test_diagnose_pretrain_warns_once_per_cause(monkeypatch):
  seen = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: seen.append(msg % args))
  meta = {"history": [{"tri_active": 0.0, "gene_gap": 12.5, "img_spread": 0.9}]}
  meta.update(pretrain_stage.diagnose_pretrain(_cfg(), 0, meta))
  assert meta["warned"] == ["triplet"] and len(seen) == 1
  assert "gene gap 12.5" in seen[0] and "margin of 0.8" in seen[0]
  meta["history"].append({"tri_active": 0.0, "gene_gap": 12.5, "img_spread": 0.01})
  meta.update(pretrain_stage.diagnose_pretrain(_cfg(), 1, meta))
  assert meta["warned"] == ["triplet", "collapse"] and len(seen) == 2
  assert "collapsed" in seen[1] and "img_variance_weight" in seen[1]
  meta["history"].append({"tri_active": 0.0, "img_spread": 0.01})
  meta.update(pretrain_stage.diagnose_pretrain(_cfg(), 2, meta))
  assert len(seen) == 2  # once each
  quiet = {"history": [{"tri_active": 0.25, "img_spread": 0.3}]}
  assert pretrain_stage.diagnose_pretrain(_cfg(), 0, quiet) == {"warned": []}


def test_stage_records_keep_the_last_record_of_each_step(tmp_path):
  rows = [{"stage": "pretrain", "step": 1, "loss": 3.0}, {"stage": "finetune", "step": 1,
                                                          "loss": 9.0},
          {"stage": "pretrain", "step": 2, "loss": 2.0},
          {"stage": "pretrain", "step": 2, "loss": 2.5}]  # step 2 again after a resume
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert loop.stage_records(str(tmp_path), "pretrain") == [(1, {"loss": 3.0}),
                                                              (2, {"loss": 2.5})]


def test_a_triplet_without_anchors_names_the_batch_not_the_margin(monkeypatch):
  """Survival pre-training with few uncensored cases per batch: L_tri = 0 because no batch holds an
  anchor; the warning says so and suggests only what is not already set."""
  seen = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: seen.append(msg % args))
  cfg = ml_collections.ConfigDict({"margin": 0.8, "batch_size": 8, "triplet_normalize": True,
                                   "triplet_on": "pat+img"})
  meta = {"history": [{"tri_active": 0.0, "tri_anchors": 0.0, "uncensored": 2.25,
                       "gene_gap": 0.0, "img_spread": 0.9}]}
  pretrain_stage.diagnose_pretrain(cfg, 3, meta)
  assert seen == [
      "pretrain epoch 3: L_tri had no anchor in any batch, so it sent no gradient: each batch of 8 "
      "windows held 2.25 uncensored cases on average (the survival triplet uses the uncensored "
      "cases only, their time bins as classes), too few for a triplet (two uncensored cases of "
      "one time bin and one of another). Raise pretrain.batch_size (now 8), or lower "
      "survival.num_bins."]
  seen.clear()  # anchors there, hinges satisfied: the defaults already on are not suggested
  meta = {"history": [{"tri_active": 0.0, "tri_anchors": 0.5, "gene_gap": 3.0,
                       "img_spread": 0.9}]}
  pretrain_stage.diagnose_pretrain(cfg, 0, meta)
  assert len(seen) == 1 and seen[0].endswith("no triplet gradient. Raise pretrain.margin (now "
                                             "0.8).")
