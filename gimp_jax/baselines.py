"""The compared methods of GiMP's Tables 1 and 2, registered into `gimp_jax.methods`.

`methods.get` imports this module, so every name below is available after `import
gimp_jax.methods`. Builders map the config to a model; GiMP itself and its ablations are the
"gimp" method with other flags (configs/methods/).

| method     | model                                  | pre-training objective        |
|------------|----------------------------------------|-------------------------------|
| abmil      | models.mil.ABMIL                       | -                             |
| dsmil      | models.mil.DSMIL                       | - (fine-tune: 0.5 bag + 0.5 max) |
| clam_sb/mb | models.mil.CLAM                        | - (fine-tune: + instance loss)   |
| transmil   | models.mil.TransMIL                    | -                             |
| porpoise   | models.fusion.AttentionFusion          | -                             |
| pathomic   | models.fusion.AttentionFusion          | -                             |
| mcat       | models.fusion.MCAT                     | -                             |
| clip       | GiMP encoders + objectives.clip heads  | objectives.clip               |
| mgca       | GiMP encoders + objectives.mgca heads  | objectives.mgca               |
| refers     | GiMP encoders + objectives.refers heads| objectives.refers             |
| itm        | GiMP encoders + objectives.itm heads   | objectives.itm                |
"""

import jax
import ml_collections
from flax import nnx

from gimp_jax import methods
from gimp_jax.models import fusion, mil
from gimp_jax.objectives import clip, itm, mgca, refers
from gimp_jax.objectives import mil as mil_objectives
from gimp_jax.objectives import supervised


def _rngs(seed: int) -> nnx.Rngs:
  return nnx.Rngs(params=seed, dropout=seed + 1)


def build_abmil(config: ml_collections.ConfigDict, num_genes: int, num_classes: int, seed: int):
  del num_genes
  m = config.model
  return mil.ABMIL(config.data.feature_dim, m.dim, num_classes, dropout=m.head_dropout,
                   rngs=_rngs(seed))


def build_dsmil(config: ml_collections.ConfigDict, num_genes: int, num_classes: int, seed: int):
  del num_genes
  return mil.DSMIL(config.data.feature_dim, num_classes, rngs=_rngs(seed))


def _build_clam(multi_branch: bool):
  def build(config: ml_collections.ConfigDict, num_genes: int, num_classes: int, seed: int):
    del num_genes
    m = config.model
    return mil.CLAM(config.data.feature_dim, m.dim, num_classes, multi_branch=multi_branch,
                    dropout=m.head_dropout, rngs=_rngs(seed))
  return build


def build_transmil(config: ml_collections.ConfigDict, num_genes: int, num_classes: int,
                   seed: int):
  del num_genes
  m = config.model
  return mil.TransMIL(config.data.feature_dim, m.dim, num_classes, heads=m.heads,
                      num_landmarks=m.num_landmarks, dropout=m.attn_dropout, rngs=_rngs(seed))


def build_attention_fusion(config: ml_collections.ConfigDict, num_genes: int, num_classes: int,
                           seed: int):
  """PORPOISE and Pathomic Fusion: config.fusion (path_hidden, path_dim, snn_hidden, mode, scale,
  mmhid, dropout)."""
  f = config.fusion
  return fusion.AttentionFusion(
      config.data.feature_dim, num_genes, num_classes, path_hidden=f.path_hidden,
      path_dim=f.path_dim, snn_hidden=tuple(f.snn_hidden), fusion=f.mode, scale=f.scale,
      mmhid=f.mmhid, dropout=f.dropout, rngs=_rngs(seed))


def build_mcat(config: ml_collections.ConfigDict, num_genes: int, num_classes: int, seed: int):
  """config.mcat (dim, num_gene_groups, heads, depth, fusion, dropout)."""
  c = config.mcat
  return fusion.MCAT(config.data.feature_dim, num_genes, num_classes, dim=c.dim,
                     num_gene_groups=c.num_gene_groups, heads=c.heads, depth=c.depth,
                     fusion=c.fusion, dropout=c.dropout, rngs=_rngs(seed))


def predict_forward(model: nnx.Module, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Evaluation of the baselines: model.predict -> (logits [B, C], embedding [B, E])."""
  return model.predict(batch["patches"], batch.get("genes"), batch.get("patch_mask"))


def _supervised(build, finetune_loss=supervised.finetune_loss, uses_genes=False) -> methods.Method:
  return methods.Method(build=build, pretrain_loss=None, finetune_loss=finetune_loss,
                        forward=predict_forward, uses_genes=uses_genes)


def _pretrained(objective) -> methods.Method:
  return methods.Method(build=objective.build, pretrain_loss=objective.make_loss,
                        finetune_loss=supervised.finetune_loss, forward=methods.gimp_forward)


BASELINES: dict[str, methods.Method] = {
    "abmil": _supervised(build_abmil),
    "dsmil": _supervised(build_dsmil, mil_objectives.make_dsmil_loss),
    "clam_sb": _supervised(_build_clam(False), mil_objectives.make_clam_loss),
    "clam_mb": _supervised(_build_clam(True), mil_objectives.make_clam_loss),
    "transmil": _supervised(build_transmil),
    "porpoise": _supervised(build_attention_fusion, uses_genes=True),
    "pathomic": _supervised(build_attention_fusion, uses_genes=True),
    "mcat": _supervised(build_mcat, uses_genes=True),
    "clip": _pretrained(clip),
    "mgca": _pretrained(mgca),
    "refers": _pretrained(refers),
    "itm": _pretrained(itm),
}

for _name, _method in BASELINES.items():
  methods.register(_name, _method)
