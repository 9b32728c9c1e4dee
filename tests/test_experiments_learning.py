"""experiments/learning.py's survival path: the recipes' table (C-index beside the linear
reference, the Bayes-optimal row, paired differences) against NumPy / scipy on fabricated
outcomes; the one reader of every table's runs (`tables.read_result`); one tiny survival call end
to end, with its Bayes-optimal C-index recomputed from the generator's truth file."""

import csv
import json
import re

import numpy as np
import pytest
from scipy import stats

from experiments import learning
from experiments import tables

SEEDS = (0, 1, 2, 3)
RECIPE = "joint+modality_dropout+wd+snn+cox"  # no gene stage: the cheapest survival run


def _outcomes() -> dict:
  """Two recipes x 4 seeds of survival numbers, `cox` missing seed 3 (not run yet)."""
  rng = np.random.default_rng(0)
  out = {}
  for s in SEEDS:
    ref = {k: {"val_c_index": rng.uniform(0.55, 0.75), "test_c_index": rng.uniform(0.55, 0.75)}
           for k in ("slide", "genes", "both")}
    bayes = {"val_c_index": rng.uniform(0.7, 0.8), "test_c_index": rng.uniform(0.7, 0.8)}
    for name in ("paper", "cox"):
      if name == "cox" and s == 3:
        out[(name, s)] = {"ok": False, "error": tables.NOT_RUN}
        continue
      got = {"val_c_index": rng.uniform(0.5, 0.7), "test_c_index": rng.uniform(0.5, 0.7)}
      got.update({f"reference_{k}": ref["both"][k] for k in got})
      out[(name, s)] = {"ok": True, **got, "reference": ref, "bayes": bayes,
                        "fused": {"train_c_index_model": rng.uniform(0.8, 1.0)}}
  return out


def _cell(text: str, row_start: str) -> list[str]:
  row = next(line for line in text.splitlines() if line.startswith(row_start))
  return [c.strip() for c in row.strip("|").split("|")]


def test_survival_table_matches_numpy_and_scipy():
  outcomes = _outcomes()
  text = learning.markdown(["paper", "cox"], list(SEEDS), outcomes, "# t", "c_index")
  vals = lambda name, key: np.array([outcomes[(name, s)][key] for s in SEEDS
                                     if outcomes[(name, s)]["ok"]])
  # Mean ± sample std over the finished seeds, per recipe.
  row = _cell(text, "| cox |")
  assert row[1] == "3"
  x = vals("cox", "test_c_index")
  assert row[3] == f"{x.mean():.3f} ± {x.std(ddof=1):.3f}"
  # The reference per input and the Bayes-optimal row: one fit per seed (4 seeds, from `paper`).
  genes = np.array([outcomes[("paper", s)]["reference"]["genes"]["test_c_index"] for s in SEEDS])
  assert _cell(text, "| genes |")[2] == f"{genes.mean():.3f} ± {genes.std(ddof=1):.3f}"
  bayes = np.array([outcomes[("paper", s)]["bayes"]["val_c_index"] for s in SEEDS])
  assert _cell(text, "| Bayes-optimal")[1] == f"{bayes.mean():.3f} ± {bayes.std(ddof=1):.3f}"
  # Paired differences over the 3 shared seeds: scipy's paired t interval.
  paired = _cell(text, "| cox | test_c_index |")
  a, b = vals("cox", "test_c_index"), np.array([outcomes[("paper", s)]["test_c_index"]
                                                for s in SEEDS[:3]])
  assert paired[3] == "—"  # minus `mcat`: no mcat runs here
  for got, other in ((paired[2], b), (paired[4], vals("cox", "reference_test_c_index"))):
    ci = stats.ttest_rel(a, other).confidence_interval(0.95)
    mean, low, high, n = re.fullmatch(r"([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\] \((\d)\)",
                                      got).groups()
    np.testing.assert_allclose([float(mean), float(low), float(high)],
                               [np.mean(a - other), ci.low, ci.high], atol=5e-4)
    assert n == "3"
  assert "- `cox` seed 3: not run yet" in text


def test_read_result_takes_every_scalar_score(tmp_path):
  assert tables.read_result(str(tmp_path)) is None
  results = {"val_c_index": 0.61, "test_c_index": 0.58, "gene_only_val_c_index": 0.52,
             "reference_test_c_index": 0.66, "vs_reference_test_c_index": -0.08,
             "test_slide_only_c_index": 0.55, "val_metrics": {"c_index": 0.61},
             "reference": {"both": {"test_c_index": 0.66}}, "method": "gimp", "seed": 3,
             "splits": {"test": 60}, "stages": {"finetune": {"wall_s": 10.5},
                                                "test": {"wall_s": 2.0}}}
  (tmp_path / "results.json").write_text(json.dumps(results))
  got = tables.read_result(str(tmp_path))
  scalars = {k: v for k, v in results.items() if k.startswith(
      ("val_", "test_", "gene_only_", "reference_", "vs_reference_")) and isinstance(v, float)}
  assert {k: got[k] for k in scalars} == scalars and "val_metrics" not in got
  assert got["train_wall_s"] == 12.5 and got["test_cases"] == 60 and got["ok"]
  assert got["reference"] == results["reference"] and "seed" not in got


def test_learning_curves_pair_training_loss_with_validation(tmp_path):
  history = [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(4)]
  (tmp_path / "results.json").write_text(json.dumps(
      {"stages": {"gene_pretrain": {"history": history[:3]}, "finetune": {"history": history},
                  "test": {"wall_s": 1.0}}}))
  val = {"gene_pretrain": [0.6, 0.55, 0.5], "finetune": [0.5, 0.7, 0.7, 0.6]}
  rows = [{"stage": f"{k}_val", "step": 10 * (e + 1), "c_index": v} for k, vs in val.items()
          for e, v in enumerate(vs)]
  rows.insert(1, {"stage": "finetune_val", "step": 10, "c_index": 0.1})  # replaced on resume
  rows.insert(0, {"stage": "finetune", "step": 10, "loss": 3.0})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  got = learning.learning_curves(str(tmp_path), "c_index")
  assert sorted(got) == ["finetune", "gene_pretrain"]
  assert got["gene_pretrain"] == {"train_loss": [1.0, 0.5, 1 / 3], "val": [0.6, 0.55, 0.5],
                                  "best": 0}
  assert got["finetune"]["val"] == [0.5, 0.7, 0.7, 0.6] and got["finetune"]["best"] == 1


def _harrell(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
  """Harrell's C by the pair loop: i < j comparable when i has an event before j's time."""
  num = den = 0.0
  for i in range(time.size):
    for j in range(time.size):
      if event[i] and time[i] < time[j]:
        den += 1
        num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
  return num / den


def test_oracle_spread_is_harrells_c_over_random_subsets(tmp_path):
  rng = np.random.default_rng(1)
  n = 9
  time, cens, eta = rng.exponential(10, n), rng.integers(0, 2, n), rng.normal(size=n)
  cens[:2] = 0  # events in every subset of 8
  ids = [f"C{i}" for i in range(n)]
  (tmp_path / "truth.csv").write_text("case_id,eta\n" + "".join(
      f"{i},{e}\n" for i, e in zip(ids, eta)))
  (tmp_path / "labels.csv").write_text("case_id,slide_id,survival_months,censorship,label\n" +
                                       "".join(f"{i},{i}-{k},{t},{c},a\n" for i, t, c in
                                               zip(ids, time, cens) for k in range(2)))
  got = learning.oracle_spread(str(tmp_path / "truth.csv"), str(tmp_path / "labels.csv"), 8,
                               draws=20, seed=3)
  draw = np.random.default_rng(3)
  want = [_harrell(time[idx], cens[idx] == 0, eta[idx])
          for idx in (draw.choice(n, 8, replace=False) for _ in range(20))]
  np.testing.assert_allclose([got["mean"], got["std"]], [np.mean(want), np.std(want, ddof=1)],
                             rtol=1e-12)
  assert got["size"] == 8 and got["draws"] == 20


@pytest.mark.usefixtures("fast_compilation")
def test_survival_call_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # for the spawned worker process
  out = tmp_path / "learning"
  args = ["--task", "survival", "--out", str(out), "--size", "tiny", "--recipes", RECIPE,
          "--seeds", "0", "--synthetic.patients=30", "--synthetic.genes=96",
          "--synthetic.feature_dim=32", "--synthetic.min_patches=8",
          "--synthetic.max_patches=30", "--config.report.tsne=False"]
  learning.main(args)
  run = json.loads((out / "summary.json").read_text())["runs"]
  assert [(r["recipe"], r["seed"], r["ok"]) for r in run] == [(RECIPE, 0, True)]
  got = run[0]
  assert 0.0 <= got["test_c_index"] <= 1.0 and 0.0 <= got["fused"]["train_c_index_model"] <= 1.0
  assert got["reference_test_c_index"] == got["reference"]["both"]["test_c_index"]
  assert list(got["curves"]) == ["finetune"] and len(got["curves"]["finetune"]["val"]) == 2
  # The Bayes-optimal C-index: the generator's eta on the run's own test cases.
  from gimp_jax.data import cohort as cohort_lib  # pylint: disable=g-import-not-at-top
  workdir = out / "runs" / RECIPE / "seed_0"
  config = tables.make_config("gimp_no_pretrain", "tiny", 0, {
      k: str(out / "cohort" / v) for k, v in (("features_dir", "features"),
                                               ("expression", "expression.tsv"),
                                               ("labels", "labels.csv"))}, ["--config.task=survival"])
  cohort = cohort_lib.load_cohort(cohort_lib.CohortSpec.from_config(config))
  with open(out / "cohort" / "survival_truth.csv", encoding="utf-8") as f:
    eta = {r["case_id"]: float(r["eta"]) for r in csv.DictReader(f)}
  test = cohort.split("test")
  assert test.size == json.loads((workdir / "results.json").read_text())["splits"]["test"]
  want = _harrell(cohort.times[test], cohort.censorship[test] == 0,
                  np.array([eta[cohort.patients[i].patient_id] for i in test]))
  np.testing.assert_allclose(got["bayes"]["test_c_index"], want, rtol=1e-12)
  assert f"| {RECIPE} | 1 |" in (out / "learning.md").read_text()
