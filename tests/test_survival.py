"""Survival: the losses and the risk against NumPy, the C-index against a NumPy Harrell's, the time
bins against pandas' qcut on the training cases only, the survival labels CSV and split files, and
the refusal of bad survival inputs."""

import os

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from gimp_jax import losses
from gimp_jax import metrics
from gimp_jax.data import cohort as ch
from gimp_jax.data import labels as labels_lib
from gimp_jax.data import splits as splits_lib
from gimp_jax.data import survival as surv_data
from gimp_jax.data import synthetic
from gimp_jax.errors import DataError
from gimp_jax.objectives import survival

RNG = np.random.default_rng(0)


def np_nll_surv(logits, y, c, alpha, eps=1e-7):
  """MCAT's `nll_loss` (utils/utils.py), written out in NumPy."""
  hazards = 1 / (1 + np.exp(-logits))
  s = np.cumprod(1 - hazards, axis=1)
  s_padded = np.concatenate([np.ones((len(y), 1)), s], 1)
  rows = np.arange(len(y))
  uncensored = -(1 - c) * (np.log(np.clip(s_padded[rows, y], eps, None))
                           + np.log(np.clip(hazards[rows, y], eps, None)))
  censored = -c * np.log(np.clip(s_padded[rows, y + 1], eps, None))
  return np.mean((1 - alpha) * (censored + uncensored) + alpha * uncensored)


def np_cox(r, t, c):
  """Breslow negative partial log-likelihood, a loop over the events."""
  terms = [r[i] - np.log(np.sum(np.exp(r[t >= t[i]]))) for i in range(len(r)) if c[i] == 0]
  return -np.mean(terms) if terms else 0.0


def np_harrell(t, c, risk):
  """Harrell's C: pairs (i, j) with i an event and t_i < t_j; risk ties count 1/2. Tied times:
  an event before a censored case at the same time is comparable (as scikit-survival)."""
  num = den = 0.0
  for i in range(len(t)):
    if c[i]:
      continue
    for j in range(len(t)):
      if t[i] < t[j] or (t[i] == t[j] and c[j] == 1 and i != j):
        den += 1
        num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
  return num / den


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_nll_surv_matches_numpy(alpha):
  logits = RNG.normal(0, 2, (16, 4))
  y = RNG.integers(0, 4, 16)
  c = RNG.integers(0, 2, 16)
  got = survival.nll_surv(jnp.asarray(logits), jnp.asarray(y), jnp.asarray(c), alpha)
  np.testing.assert_allclose(float(got), np_nll_surv(logits, y, c, alpha), rtol=1e-5)


def test_cox_matches_numpy_with_ties():
  r = RNG.normal(size=12)
  t = RNG.integers(1, 6, 12).astype(np.float32)  # many tied times
  c = RNG.integers(0, 2, 12)
  got = survival.cox_partial_likelihood(jnp.asarray(r), jnp.asarray(t), jnp.asarray(c))
  np.testing.assert_allclose(float(got), np_cox(r, t, c), rtol=1e-5)
  assert float(survival.cox_partial_likelihood(jnp.asarray(r), jnp.asarray(t),
                                               jnp.ones(12, jnp.int32))) == 0.0


def test_risk_is_minus_summed_survival():
  logits = RNG.normal(size=(5, 4))
  want = -np.cumprod(1 - 1 / (1 + np.exp(-logits)), 1).sum(1)
  np.testing.assert_allclose(survival.risk(logits), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(survival.risk(jnp.asarray(logits))), want, rtol=1e-5)
  np.testing.assert_allclose(survival.risk(logits, "cox"), logits[:, 0], rtol=1e-6)


def test_c_index_matches_numpy_with_ties_and_censoring():
  t = RNG.integers(1, 15, 60).astype(float)  # tied times
  c = (RNG.uniform(size=60) < 0.4).astype(int)
  risk = RNG.integers(0, 6, 60).astype(float)  # tied risks
  got = metrics.survival_metrics(t, c, risk)
  assert got["num_events"] == int((c == 0).sum()) and got["num_examples"] == 60
  np.testing.assert_allclose(got["c_index"], np_harrell(t, c, risk), rtol=1e-12)
  assert np.isnan(metrics.survival_metrics(t, np.ones(60), risk)["c_index"])


def test_bins_come_from_training_uncensored_times_only():
  t = RNG.exponential(20, 50)
  c = (RNG.uniform(size=50) < 0.3).astype(int)
  train = np.arange(30)
  cuts = surv_data.fit_bins(t, c, train, 4, "labels.csv")
  # pandas' qcut of the uncensored training times (MCAT's recipe): its inner edges.
  _, edges = pd.qcut(t[train][c[train] == 0], q=4, retbins=True)
  np.testing.assert_allclose(cuts, edges[1:-1], rtol=1e-12)
  t2 = t.copy()
  t2[30:] = RNG.exponential(200, 20)  # other val/test times: the same bins
  np.testing.assert_array_equal(surv_data.fit_bins(t2, c, train, 4, "labels.csv"), cuts)
  bins = surv_data.assign_bins(t, cuts)
  want = pd.cut(t, np.concatenate([[-np.inf], cuts, [np.inf]]), right=False, labels=False)
  np.testing.assert_array_equal(bins, want)
  with pytest.raises(DataError, match="censorship: no event"):
    surv_data.fit_bins(t, np.ones(50, int), train, 4, "labels.csv")


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory):
  out = tmp_path_factory.mktemp("surv")
  return synthetic.make_cohort(str(out), patients=20, genes=48, min_patches=10, max_patches=20,
                               feature_dim=8, seed=1, survival=True)


def _spec(paths, labels=None, **kw):
  return ch.CohortSpec(labels=labels or paths["labels"], features_dir=paths["features_dir"],
                       expression=paths["expression"], feature_dim=8, task="survival", **kw)


def test_mcat_and_time_event_columns_give_the_same_cohort(cohort_files, tmp_path):
  mcat = ch.load_cohort(_spec(cohort_files))
  df = pd.read_csv(cohort_files["labels"])
  plain = tmp_path / "plain.csv"
  df.rename(columns={"case_id": "patient_id", "survival_months": "time"}).assign(
      event=1 - df["censorship"]).drop(columns=["censorship", "label"]).to_csv(plain, index=False)
  other = ch.load_cohort(_spec(cohort_files, str(plain)))
  np.testing.assert_array_equal(mcat.censorship, other.censorship)
  np.testing.assert_allclose(mcat.times, other.times)
  first = df.groupby("case_id", sort=False).first()
  np.testing.assert_allclose(mcat.times, first.loc[[p.patient_id for p in mcat.patients],
                                                   "survival_months"], rtol=1e-6)
  # Labels are the time bins of the training cases' uncensored quantiles.
  train = mcat.split("train")
  cuts = np.quantile(mcat.times[train][mcat.censorship[train] == 0], [0.25, 0.5, 0.75])
  np.testing.assert_array_equal(mcat.labels, np.searchsorted(cuts, mcat.times, side="right"))
  assert mcat.task == "survival" and mcat.num_classes == 4


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_bad_survival_values_are_refused_one_line_each(cohort_files, tmp_path):
  df = pd.read_csv(cohort_files["labels"])
  df.loc[0, "survival_months"] = -1.0
  df.loc[5, "survival_months"] = np.nan
  df.loc[9, "censorship"] = 2
  bad = tmp_path / "bad.csv"
  df.to_csv(bad, index=False)
  with pytest.raises(DataError) as e:
    ch.load_cohort(_spec(cohort_files, str(bad)))
  lines = str(e.value).split("\n")
  assert len(lines) == 3, lines
  assert f"line 2: patient {df.case_id[0]}: survival_months: '-1.0' must be a finite time" in lines[0]
  assert f"line 7: patient {df.case_id[5]}: survival_months: missing" in lines[1]
  assert f"line 11: patient {df.case_id[9]}: censorship: '2' must be 0 or 1" in lines[2]
  no_columns = _write(tmp_path / "nocols.csv", "case_id,slide_id,label\nA,A1,x\n")
  with pytest.raises(DataError, match="header: survival needs columns survival_months,censorship"):
    labels_lib.read_labels(no_columns, "survival")


def test_split_files_unknown_case_and_no_events(cohort_files, tmp_path):
  ids = list(pd.read_csv(cohort_files["labels"]).drop_duplicates("case_id").case_id)
  d = tmp_path / "splits"
  d.mkdir()
  rows = "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(zip(ids[:15], ids[15:] + [""] * 10)))
  _write(d / "splits_0.csv", ",train,val\n" + rows + "15,TCGA-NOPE,\n")
  with pytest.raises(DataError, match=r"splits_0.csv: line 17: case TCGA-NOPE: train: not in the "
                     "cohort"):
    ch.load_cohort(_spec(cohort_files, splits_dir=str(d)))
  cohort = ch.load_cohort(_spec(cohort_files))
  censored = [p.patient_id for p, c in zip(cohort.patients, cohort.censorship) if c]
  events = [p.patient_id for p, c in zip(cohort.patients, cohort.censorship) if not c]
  _write(d / "splits_0.csv", ",train,val\n" + "".join(
      f"{i},{a},{b}\n" for i, (a, b) in enumerate(zip(events, censored[:2] + [""] * 20))))
  with pytest.raises(DataError, match=r"splits_0.csv: split test: no event among its 2 cases"):
    ch.load_cohort(_spec(cohort_files, splits_dir=str(d)))


def test_split_file_without_test_column_holds_out_val(cohort_files, tmp_path):
  ids = list(pd.read_csv(cohort_files["labels"]).drop_duplicates("case_id").case_id)
  path = _write(tmp_path / "splits_3.csv", ",train,val\n" + "".join(
      f"{i},{a},{b}\n" for i, (a, b) in enumerate(zip(ids[:16], ids[16:] + [""] * 12))))
  got = splits_lib.read_split_file(path, ids, np.zeros(20, int), (0.6, 0.2, 0.2), seed=0)
  names = {k: {ids[i] for i in v} for k, v in got.items()}
  assert names["test"] == set(ids[16:])  # the file's val column is the held-out fold
  assert names["train"] | names["val"] == set(ids[:16]) and not names["train"] & names["val"]
  assert len(names["val"]) == 4  # a quarter of the file's train cases (0.2 / (0.6 + 0.2))
  with pytest.raises(DataError, match="expected splits_0.csv"):
    splits_lib.count_split_files(str(tmp_path))  # splits_3 without 0..2


def test_triplet_on_uncensored_cases_equals_triplet_on_their_subset():
  emb = RNG.normal(size=(10, 6))
  labels = RNG.integers(0, 3, 10)
  use = RNG.uniform(size=10) < 0.6
  for mining in ("batch_hard", "batch_all"):
    got = losses.triplet_terms(jnp.asarray(emb), jnp.asarray(labels), 0.8, mining,
                               jnp.asarray(use))
    want = losses.triplet_terms(jnp.asarray(emb[use]), jnp.asarray(labels[use]), 0.8, mining)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_triplet_anchors_are_the_uncensored_cases_with_a_positive_and_a_negative():
  for seed in range(5):
    rng = np.random.default_rng(seed)
    labels, use = rng.integers(0, 4, 8), rng.uniform(size=8) < 0.4
    want = [bool(use[i] and any(use[j] and j != i and labels[j] == labels[i] for j in range(8))
                 and any(use[j] and labels[j] != labels[i] for j in range(8))) for i in range(8)]
    got = losses.triplet_anchors(jnp.asarray(labels), jnp.asarray(use))
    np.testing.assert_array_equal(np.asarray(got), want)


def test_synthetic_survival_mode(cohort_files):
  df = pd.read_csv(cohort_files["labels"]).drop_duplicates("case_id")
  truth = pd.read_csv(cohort_files["truth"]).set_index("case_id").loc[df.case_id]
  assert set(df.censorship) <= {0, 1} and (df.survival_months > 0).all()
  assert os.path.exists(cohort_files["truth"]) and len(truth) == 20
  big = synthetic._survival_times(  # pylint: disable=protected-access
      np.random.default_rng(0), np.eye(2)[np.arange(4000) % 2], np.zeros((4000, 2)),
      synthetic.SyntheticConfig(survival=True))
  times, censored, eta = big
  assert 0.15 < censored.mean() < 0.45
  # Higher eta, earlier events: the oracle C-index is well above chance.
  assert metrics.survival_metrics(times, censored, eta)["c_index"] > 0.6


@pytest.mark.parametrize("method", ["abmil", "dsmil", "clam_sb"])
def test_cox_head_is_one_log_risk_and_its_loss_is_the_partial_likelihood(method):
  import importlib  # pylint: disable=g-import-not-at-top
  from gimp_jax import methods  # pylint: disable=g-import-not-at-top
  cfg = importlib.import_module(f"gimp_jax.configs.methods.{method}").get_config("tiny")
  cfg.task, cfg.survival.loss = "survival", "cox"
  model = methods.build(cfg, [f"G{i}" for i in range(96)],
                        survival.num_outputs(cfg.task, cfg.survival, 4), 0)
  batch = {"patches": jnp.asarray(RNG.normal(size=(6, 12, 32)), jnp.float32),
           "patch_mask": jnp.ones((6, 12), bool), "genes": jnp.zeros((6, 96)),
           "label": jnp.asarray([0, 1, 2, 3, 1, 0]),
           "time": jnp.asarray([3.0, 5.0, 5.0, 8.0, 2.0, 9.0]),
           "censorship": jnp.asarray([0, 1, 0, 0, 0, 1])}
  model.eval()
  logits, _ = model(batch["patches"], batch["genes"], batch["patch_mask"])
  assert logits.shape == (6, 1)
  loss, _ = methods.finetune_loss(cfg)(model, batch)
  want = np_cox(np.asarray(logits[:, 0], np.float64), np.asarray(batch["time"]),
                np.asarray(batch["censorship"]))
  if method == "abmil":  # the bag loss alone
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  else:  # DSMIL averages two streams, CLAM adds its instance loss: finite and not the bag term
    assert np.isfinite(float(loss))


def np_log_rank(t, c, group):
  """Two-group log-rank test in NumPy: (O - E)^2 / V over the distinct event times -> p."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  o = e = v = 0.0
  for time in np.unique(t[c == 0]):
    at_risk = t >= time
    n, n1 = at_risk.sum(), (at_risk & group).sum()
    d = ((t == time) & (c == 0)).sum()
    d1 = ((t == time) & (c == 0) & group).sum()
    o, e = o + d1, e + d * n1 / n
    v += d * (n1 / n) * (1 - n1 / n) * (n - d) / max(n - 1, 1)
  return stats.chi2.sf((o - e) ** 2 / v, 1)


def test_survival_report_splits_test_cases_at_the_training_median(tmp_path):
  from gimp_jax.report import page  # pylint: disable=g-import-not-at-top
  n = 40
  t = RNG.exponential(10, n).round(1) + 0.1
  c = (RNG.uniform(size=n) < 0.3).astype(int)
  risk = -np.log(t) + RNG.normal(0, 0.5, n)
  pred = {"patient_id": np.asarray([f"P{i}" for i in range(n)]), "time": t, "censorship": c,
          "risk": risk, "label": np.zeros(n, int), "probs": np.full((n, 2), 0.5)}
  cutoff = 0.1
  md = page.write_report(str(tmp_path), results={"test_c_index": 0.7}, class_names=["a", "b"],
                         predictions={"test": pred}, survival_cutoff=cutoff)
  text = open(md, encoding="utf-8").read()
  row = next(line for line in text.splitlines() if line.startswith("| test | 40 |"))
  p_page = float(row.strip("| ").split("|")[-1])
  np.testing.assert_allclose(p_page, np_log_rank(t, c, risk > cutoff), rtol=1e-3)
  risks = pd.read_csv(tmp_path / "risk_test.csv")
  np.testing.assert_allclose(risks.risk, risk, rtol=1e-5)
  assert list(risks.group) == ["high" if r > cutoff else "low" for r in risk]
  for name in ("km_test.png", "risk.png", "report.html"):
    assert (tmp_path / name).exists(), name
