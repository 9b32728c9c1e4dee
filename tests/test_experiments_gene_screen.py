"""experiments/gene_stage_screen.py on a tiny cohort: the kept epoch's validation accuracy is the
accuracy of the stage's kept checkpoint recomputed here, and the linear row is a scikit-learn
logistic regression fitted here on the same split, at the penalty that scores best on validation."""

import argparse
import os

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from experiments import gene_stage_screen
from gimp_jax import preflight
from gimp_jax.models import build
from gimp_jax.data import synthetic
from gimp_jax.reference import C_GRID
from gimp_jax.train.state import restored


def test_screen_reports_the_kept_epoch_and_the_linear_model_on_the_same_split(tmp_path):
  paths = synthetic.make_cohort(str(tmp_path / "cohort"), patients=40, genes=96, min_patches=20,
                                max_patches=40, feature_dim=32, seed=0)
  out = tmp_path / "out"
  gene_stage_screen.main(["--out", str(out), "--cohort", os.path.dirname(paths["labels"]),
                          "--dropouts", "0,0.9", "--seeds", "0", "--size", "tiny"])
  table = (out / "screen.md").read_text()
  for p in (0.0, 0.9):
    workdir = str(out / f"p_{p}" / "seed_0")
    config = gene_stage_screen.config_for(argparse.Namespace(
        size="tiny", task="classification", cohort=os.path.dirname(paths["labels"]),
        config=["--config.data.prefetch=0"]), p, 0)
    assert config.model.gene_input_dropout == p and config.stages == ("gene_pretrain",)
    assert config.data.prefetch == 0  # the override applied last
    cohort = preflight.preflight(config, workdir)
    model = restored(build.build_gene_classifier(config.model, cohort.num_genes,
                                                 cohort.num_classes, config.seed),
                     workdir, "gene_pretrain_best").model(train=False)
    val = cohort.split("val")
    logits = np.asarray(jax.jit(lambda m, g: m(g))(model, cohort.genes[val]))
    kept = float(np.mean(logits.argmax(1) == cohort.labels[val]))
    got, _ = gene_stage_screen.kept_val(workdir, config)
    np.testing.assert_allclose(got, kept, atol=1e-9)
    assert f"- p {p}, seed 0: {kept:.3f}" in table
  train = cohort.split("train")
  x = np.asarray(cohort.genes, np.float64)
  scaler = StandardScaler().fit(x[train])
  keys = []
  for c in C_GRID:  # the reference's choice: best val accuracy, then AUC, then the smaller C
    fit = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x[train]),
                                                     cohort.labels[train])
    prob = fit.predict_proba(scaler.transform(x[val]))[:, 1]
    keys.append((np.mean((prob > 0.5) == cohort.labels[val]),
                 roc_auc_score(cohort.labels[val], prob), -c))
  assert f"linear {max(keys)[0]:.3f}" in table
