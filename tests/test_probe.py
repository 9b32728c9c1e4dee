"""The probe stage: few-shot logistic regression on frozen slide embeddings (TANGLE's protocol)."""

import json
import os

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from gimp_jax.configs import nsclc
from gimp_jax.configs.methods import tangle as tangle_config
from gimp_jax.data import synthetic
from gimp_jax import preflight
from gimp_jax.train import probe, run
from gimp_jax.train.state import restored


def _embeddings(seed=0, n=60, dim=6):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 2
  x = rng.normal(size=(n, dim)) + 1.2 * y[:, None]
  return x, y


def test_few_shot_is_deterministic_for_a_seed_and_all_matches_sklearn():
  x, y = _embeddings()
  ex, ey = _embeddings(1, 40)
  kw = dict(shots=(1, 5, 10, 25, 40), draws=4, num_classes=2, max_iter=1000)
  a = probe.few_shot(x, y, {"test": (ex, ey)}, seed=3, **kw)
  b = probe.few_shot(x, y, {"test": (ex, ey)}, seed=3, **kw)
  c = probe.few_shot(x, y, {"test": (ex, ey)}, seed=4, **kw)
  assert a == b
  assert a["5"]["test"]["auc"]["values"] != c["5"]["test"]["auc"]["values"]
  assert [a[k]["draws"] for k in ("1", "5", "10", "25", "40", "all")] == [4, 4, 4, 4, 0, 1]
  assert "fewer than 40" in a["40"]["skipped"]
  clf = LogisticRegression(max_iter=1000).fit(x, y)  # "all": one independent fit
  assert a["all"]["test"]["balanced_accuracy"]["mean"] == pytest.approx(
      balanced_accuracy_score(ey, clf.predict(ex)), abs=1e-12)
  assert a["all"]["test"]["auc"]["mean"] == pytest.approx(
      roc_auc_score(ey, clf.predict_proba(ex)[:, 1]), abs=1e-12)
  values = a["10"]["test"]["auc"]["values"]
  assert a["10"]["test"]["auc"]["mean"] == pytest.approx(np.mean(values))
  assert a["10"]["test"]["auc"]["std"] == pytest.approx(np.std(values))


def test_draw_shots_takes_k_distinct_patients_of_every_class():
  y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  idx = probe.draw_shots(y, 2, 3, np.random.default_rng(0))
  assert len(set(idx.tolist())) == 6 and np.bincount(y[idx]).tolist() == [2, 2, 2]
  assert probe.draw_shots(y, 3, 3, np.random.default_rng(0)) is None  # class 1 has 2


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  return synthetic.make_cohort(str(out), patients=16, genes=96, feature_dim=32, min_patches=8,
                               max_patches=30, seed=0)


def _config(c, paths):
  for key, value in paths.items():
    c.data[key] = value
  c.data.bucket_sizes = (64,)
  c.probe.shots = (1, 2)
  c.probe.draws = 3
  c.probe.max_iter = 500
  return c


def test_probe_stage_is_deterministic_and_reads_the_pretrained_encoder(cohort, tmp_path):
  config = _config(tangle_config.get_config("tiny"), cohort)
  config.pretrain.epochs = 1
  first = run.train_and_evaluate(config, str(tmp_path / "a"))["probe"]
  second = run.train_and_evaluate(config, str(tmp_path / "b"))["probe"]
  assert first == second and first["encoder"] == "pretrain"
  assert first["shots"]["1"]["draws"] == 3 and first["shots"]["all"]["draws"] == 1
  with open(tmp_path / "a" / probe.FILENAME, encoding="utf-8") as f:
    assert json.load(f) == first
  # The embeddings it probed are the pre-trained slide encoder's, in eval mode.
  r = run.Run(config, str(tmp_path / "a"), preflight.preflight(config, str(tmp_path / "a")))
  frozen = restored(r.build(), str(tmp_path / "a"), "pretrain").model(train=False)
  emb = probe.embed_slides(frozen, r.cohort, config.data.bucket_sizes)
  p = 0
  bag = r.cohort.bag(p).features(np.arange(r.cohort.patients[p].num_patches))
  np.testing.assert_allclose(emb[p], np.asarray(frozen.slide_encoder(bag[None]))[0], rtol=1e-4,
                             atol=1e-5)
  train = r.cohort.split("train")
  x, y = emb[train], r.cohort.labels[train]
  test = r.cohort.split("test")
  clf = LogisticRegression(max_iter=500).fit(x, y)
  assert first["shots"]["all"]["test"]["balanced_accuracy"]["mean"] == pytest.approx(
      balanced_accuracy_score(r.cohort.labels[test], clf.predict(emb[test])), abs=1e-12)


def test_probe_without_pretraining_uses_the_initial_gimp_aggregator(cohort, tmp_path,
                                                                   monkeypatch):
  config = _config(nsclc.get_config("tiny"), cohort)
  config.stages = ("probe",)
  results = run.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["probe"]["encoder"].startswith("initialisation")
  assert results["probe"]["embedding_dim"] == config.model.dim  # CLS_img, not CLS_pat
  assert os.path.exists(tmp_path / "run" / probe.FILENAME)
  # In a job of several processes the others compute the same probe and write nothing.
  (tmp_path / "process1").mkdir()
  other = run.Run(config, str(tmp_path / "process1"),
                  preflight.preflight(config, str(tmp_path / "run")))
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert probe.probe(other) == results["probe"]
  assert not os.listdir(tmp_path / "process1")


@pytest.mark.parametrize("config_name", ["tangle_rec", "intra"])
def test_tangle_baselines_pretrain_and_probe(config_name, cohort, tmp_path):
  from gimp_jax.configs.methods import intra, tangle_rec  # pylint: disable=g-import-not-at-top
  config = _config({"tangle_rec": tangle_rec, "intra": intra}[config_name].get_config("tiny"),
                   cohort)
  config.pretrain.epochs = 1
  results = run.train_and_evaluate(config, str(tmp_path))
  assert results["stages"]["pretrain"]["steps"] > 0
  assert np.isfinite(results["stages"]["pretrain"]["final_metrics"]["loss"])
  assert results["probe"]["encoder"] == "pretrain" and "test" in results["probe"]["shots"]["all"]
