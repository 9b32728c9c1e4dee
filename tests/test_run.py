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
