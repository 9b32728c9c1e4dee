"""The scripts of experiments/: the tables script resumes, reports failures and writes the third
table's rows; the paired difference of two methods against scipy's paired t-test (the library's
own tests never import experiments/)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from conftest import ROOT
from experiments import reference
from experiments import tables
from gimp_jax.data import synthetic


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=12, genes=96, feature_dim=32, min_patches=8,
                               max_patches=30, seed=0)


def test_tables_script_resumes_and_reports_failures(cohort, tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # for the spawned worker processes
  out = tmp_path / "tables"
  overrides = ["--config.report.tsne=False", "--config.report.heatmaps=0"]
  args = ["--out", str(out), "--methods", "abmil", "--seeds", "0", "--size", "tiny",
          "--features_dir", cohort["features_dir"], "--expression", cohort["expression"],
          "--labels", cohort["labels"]] + overrides
  tables.main(args)
  text = (out / "tables.md").read_text()
  row = next(line for line in text.splitlines() if "| ABMIL |" in line)
  assert " ± " in row and row.endswith("| 0.7737 | 1 |")
  done = out / "runs" / "abmil" / "seed_0" / "results.json"
  mtime = os.path.getmtime(done)
  summary = json.loads((out / "summary.json").read_text())
  assert [r["config"] for r in summary["runs"]] == ["abmil"] and summary["runs"][0]["ok"]

  # A second call skips the finished run; a failing run is reported, not fatal.
  broken = tables.make_config("dsmil", "tiny", 0, dict(cohort, labels=str(tmp_path / "no.csv")),
                              [])
  runs = {("abmil", 0): tables.make_config("abmil", "tiny", 0, cohort, overrides),
          ("dsmil", 0): broken}
  outcomes = tables.run_all(runs, str(out), workers=1)
  assert outcomes[("abmil", 0)]["skipped"] and os.path.getmtime(done) == mtime
  assert not outcomes[("dsmil", 0)]["ok"] and "no.csv" in outcomes[("dsmil", 0)]["error"]
  table = tables.markdown(["abmil", "dsmil"], {"abmil": "abmil", "dsmil": "dsmil"}, [0], outcomes,
                          "# t")
  assert "| DSMIL | — (1 failed) |" in table and "## Runs without a result" in table


def test_third_table_reports_each_seeds_mean_over_draws():
  shots = lambda v: {"shots": {k: {"test": {"balanced_accuracy": {"mean": v}, "auc": {"mean": v}}}
                               for k in ("1", "all")}}
  outcomes = {("tangle", 0): {"ok": True, "probe": shots(0.6)},
              ("tangle", 1): {"ok": True, "probe": shots(0.8)},
              ("intra", 0): {"ok": False, "error": tables.NOT_RUN},
              ("intra", 1): {"ok": False, "error": tables.NOT_RUN}}
  text = tables.probe_markdown(["tangle", "intra"], {"tangle": "tangle", "intra": "intra"}, [0, 1],
                               outcomes, "# t")
  assert "| TANGLE | 0.700 ± 0.141 | 0.700 ± 0.141 | 2 |" in text  # sample std of 0.6, 0.8
  assert "| Intra | — (2 not run yet) |" in text


def test_paired_difference_matches_scipy_ttest_rel():
  a = {0: 0.90, 1: 0.85, 2: 0.88, 3: 0.91, 4: 0.87, 7: 0.5}   # seed 7 has no partner: ignored
  b = {0: 0.88, 1: 0.86, 2: 0.84, 3: 0.90, 4: 0.83, 9: 0.1}
  got = reference.paired_difference(a, b)
  x, y = np.array([a[s] for s in range(5)]), np.array([b[s] for s in range(5)])
  ci = stats.ttest_rel(x, y).confidence_interval(0.95)
  assert got["n"] == 5 and sorted(got["per_seed"]) == [0, 1, 2, 3, 4]
  np.testing.assert_allclose(got["mean"], np.mean(x - y), rtol=1e-12)
  np.testing.assert_allclose(got["ci95"], (ci.low, ci.high), rtol=1e-10)
  assert reference.paired_difference({0: 1.0}, {0: 0.5})["ci95"] is None


def test_retest_queues_finished_runs_again(tmp_path):
  """A finished run (results.json written) is skipped, unless `retest` asks for its test stage
  again (`report_only` shows what would run: nothing, then the finished run)."""
  workdir = tables.run_dir(str(tmp_path), "abmil", 0)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"test_accuracy": 0.75, "stack_weight": 0.3, "stack_test_accuracy": 0.8}, f)
  runs = {("abmil", 0): None}
  done = tables.run_all(runs, str(tmp_path), 1, report_only=True)[("abmil", 0)]
  assert done["ok"] and done["skipped"] and done["stack_test_accuracy"] == 0.8
  again = tables.run_all(runs, str(tmp_path), 1, report_only=True, retest=True)[("abmil", 0)]
  assert not again["ok"] and again["error"] == tables.NOT_RUN


def _workers(pid: int) -> list[int]:
  """The multiprocessing worker processes whose parent is `pid` (from /proc; not its resource
  tracker)."""
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
          parent = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{entry}/cmdline", "rb") as f:
          if parent == pid and b"spawn_main" in f.read():
            out.append(int(entry))
      except (OSError, IndexError, ValueError):
        pass
  return out


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_sigterm_to_the_tables_script_stops_its_workers_and_keeps_their_checkpoints(
    cohort, tmp_path):
  """Killing the script (SIGTERM) stops the run in its worker process too: the worker saves a
  checkpoint, releases the workdir lock and exits, starting none of the queued runs; nothing keeps
  running."""
  out = tmp_path / "tables"
  args = [sys.executable, "-m", "experiments.tables", "--out", str(out), "--methods", "abmil",
          "--seeds", "0,1,2", "--size", "tiny", "--features_dir", cohort["features_dir"],
          "--expression", cohort["expression"], "--labels", cohort["labels"],
          "--config.finetune.epochs=100000", "--config.finetune.checkpoint_every=1000000",
          "--config.report.heatmaps=0"]
  proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = out / "runs" / "abmil" / "seed_0" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.5)
  workers = _workers(proc.pid)
  assert workers and metrics.stat().st_size > 0  # training, in a worker process
  proc.send_signal(signal.SIGTERM)
  text = proc.communicate(timeout=120)[0]
  assert proc.returncode == 128 + signal.SIGTERM, text
  assert "run the same command again to resume" in text
  assert not [p for p in workers if _alive(p)]
  workdir = out / "runs" / "abmil" / "seed_0"
  assert os.listdir(workdir / "checkpoints" / "finetune")  # saved on the stop, not on a schedule
  assert not (workdir / "run.lock").exists() and not (workdir / "results.json").exists()
  # The runs queued behind it (the pool hands its worker one beyond the running one) never start.
  assert not (out / "runs" / "abmil" / "seed_1").exists()
  assert not (out / "runs" / "abmil" / "seed_2").exists()


def test_needle_attention_on_rare_patches_against_numpy():
  """experiments.needle: a slide's share of attention on its rare patches, that share over the
  rare patches' share of the slide, and the rare fraction of its top-k patches."""
  from experiments import needle  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  scores = rng.uniform(size=200)
  rare = np.array([3, 50, 51, 199])
  scores[[3, 50, 51]] += 10.0  # three of the four rare patches on top; patch 199 is not
  got = needle.attention_on_rare(scores, rare)
  mass = scores[rare].sum() / scores.sum()
  assert got["rare_mass"] == pytest.approx(mass)
  assert got["rare_enrichment"] == pytest.approx(mass / (4 / 200))
  top4 = np.argsort(scores)[-4:]
  assert got["rare_top_hit"] == pytest.approx(len(set(top4) & set(rare)) / 4) == 0.75
