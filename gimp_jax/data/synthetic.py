"""A synthetic image-omic cohort in the real input layouts: a fair test bed, not a toy.

`python -m gimp_jax.data.synthetic --out DIR --patients 120 --genes 2000 ...` writes exactly the
three inputs of a real run: `DIR/features/<slide_id>.h5` (CLAM layout), `DIR/expression.tsv` (UCSC
Xena layout, FPKM-like values, versioned Ensembl-like IDs, a `gene_name` column of symbols,
TCGA-like sample barcodes) and
`DIR/labels.csv` (`patient_id,slide_id,label`; some patients have two slides).

The generative model (all noise scales multiply by `difficulty`):
- Patient i has class y_i and a split of its class evidence between the modalities, w_i ~ U(0, 1):
  slide evidence v_i = w_i e_{y_i} + s z_i and gene evidence m_i = (1 - w_i) e_{y_i} + s z'_i in
  class space (z, z' ~ N(0, I_C), s = 0.28), so neither modality alone separates every patient but
  together they nearly do (Bayes accuracy for two classes ~0.84 per modality, ~0.98 combined).
- A slide is a 2D tissue region on a grid of 256-px patches (one blob or a few pieces), its patches
  listed x-major as CLAM does. Patch embeddings are a spatially smooth random field (8 smooth maps
  mixed into D dimensions) plus per-patch noise and a per-slide offset. One or a few contiguous
  tumour blobs (10-30% of the tissue, a minority) add a shared tumour direction and the class
  directions weighted by v_i; nothing else carries the class.
- Genes are log-normal FPKM-like values: a per-gene baseline, 10 noisy co-expression programmes,
  one module of co-expressed genes per class driven by m_i, and per-gene noise. A few patients
  also have a normal-tissue sample (`-11A`) without the class signal. Gene symbols: the first six
  genes and every other one after them carry real symbols of MCAT's six signatures, taken from each
  signature in turn (so MCAT's signature tokens exist at every size of 6 genes or more); the others
  are named `SYN<j>`. Symbols carry no signal of their own.

Survival mode (`--survival`): the same slides and genes, and the labels CSV in MCAT's columns
`case_id,slide_id,survival_months,censorship` (plus the class as an extra, ignored `label`). Each
case's log hazard is eta_i = beta (v_i + m_i) . (e_1 - e_0) / 2 (both modalities' evidence; for
C > 2 classes, e_1 - e_0 still), its event time is exponential with rate lambda_0 exp(eta_i)
(median 24 months at eta = 0), censoring is an independent exponential time (rate
`censor_rate` lambda_0) capped at 120 months (administrative censoring), and the observed time
is the earlier one. eta is what the generator knows and a model can at best recover from the
inputs (the slides and genes are generated from v_i and m_i), so Harrell's C-index of eta on a
split is the Bayes-optimal value to compare against; `survival_truth.csv` holds eta per case.

Rare-instance mode (`--signal rare`, `PRESETS['rare']`): the class sits in a few patches, where
attention MIL beats any mean of the patches. Neither the tumour blobs nor the genes carry the class
(v_i = m_i = 0). A patient of class 1 has, in each of its slides, a rare pattern in a fraction
f ~ U(`rare_min_fraction`, `rare_max_fraction`) of the patches (at least one): half of the slides
have it scattered, half in one to three small clusters; those patches add `rare_amp` along a unit
direction u orthogonal to the tissue field, the tumour direction and the class directions. Class 0
has no such patch. With `label_noise` = eps the pattern's presence is flipped against the class with
probability eps. Per slide, an offset of SD `slide_offset` per dimension (stain, site) and one of SD
`rare_offset` along u move the mean of a slide's patches along u by more than the rare patches move
it (0.005-0.03 `rare_amp`: 0.2-1.2 at the default 40 against an offset SD of 2), so a model of the
mean patch is near chance, while one rare patch stands `rare_amp` above its slide's others along u
(patch noise `_PATCH_NOISE` = 0.5 per dimension; in a random projection of the D = 1024 features
the pattern moves a patch by ~`rare_amp` / sqrt(D) = 1.25 against that noise's 0.5: it stands out,
without being a different tissue altogether).
The oracle that knows u scores a slide by how far its highest patch along u stands above the
slide's median (`oracle_statistic`); it detects the pattern whenever it is there, so the
Bayes-optimal AUC and accuracy are 1 - eps (`rare_bayes_auc`; checked against a Monte Carlo of the
generator in tests/test_synthetic.py). `rare_truth.csv` holds per slide the label, whether the
pattern is there, the oracle statistic and the indices of the rare patches.
"""

import argparse
from collections.abc import Sequence
import dataclasses
import os

import h5py
import numpy as np

from gimp_jax.data import signatures

PATCH_PX = 256
_EVIDENCE_NOISE = 0.28  # s: per-patient noise of each modality's class evidence
_TUMOUR_AMP = 3.0  # amplitude of the shared tumour direction in tumour patches
_CLASS_AMP = 25.0  # amplitude of the class directions in tumour patches. At 10 the class was
# weaker than the slide-level tissue field seen by a learned embedding: with 72 training bags every
# attention-MIL baseline stayed at chance (0.46-0.67 test, even after 40 epochs) while logistic
# regression on mean-pooled features reached 0.73. At 25 attention MIL learns it; the Bayes
# accuracy per modality (set by w and _EVIDENCE_NOISE) is unchanged.
_TISSUE_AMP = 1.0  # amplitude of the smooth tissue field
_PATCH_NOISE = 0.5  # per-patch, per-dimension noise
_TISSUE_MAPS = 8
_PROGRAMMES = 10
_MODULE_SHIFT = 1.5  # log2 units of a class module per unit of gene evidence
_GENE_NOISE = 0.5  # log2 units of per-gene noise


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Size and difficulty of the synthetic cohort (defaults: CPU demo, ~100 MB, a few seconds)."""
  patients: int = 120
  genes: int = 2000
  min_patches: int = 100
  max_patches: int = 300
  feature_dim: int = 1024
  classes: int = 2
  difficulty: float = 1.0
  seed: int = 0
  two_slide_fraction: float = 0.15
  normal_sample_fraction: float = 0.05
  survival: bool = False
  hazard_scale: float = 1.5  # beta of the survival mode's log hazard
  censor_rate: float = 0.5  # censoring rate over lambda_0 (about 30% of cases censored)
  slide_offset: float = 0.1  # per-slide, per-dimension offset ("stain", "site"), x difficulty
  signal: str = 'mean'  # 'mean': class evidence in tumour blobs and genes; 'rare': a rare pattern
  rare_min_fraction: float = 0.005  # 'rare': fraction of a positive slide's patches with the pattern
  rare_max_fraction: float = 0.03
  rare_amp: float = 40.0  # 'rare': the pattern's amplitude along its unit direction
  rare_offset: float = 2.0  # 'rare': SD of the per-slide offset along that direction ("stain")
  label_noise: float = 0.0  # 'rare': P(the pattern's presence disagrees with the class)


# Named cohorts (`--preset`): the fields they set; other fields keep their defaults or the caller's.
# rare: the class in 0.5-3% of 200-1,200 patches under a per-slide offset 5x the default, genes
# without signal (module docstring).
PRESETS = {'rare': {'signal': 'rare', 'min_patches': 200, 'max_patches': 1200,
                    'slide_offset': 0.5}}


def _smooth_maps(rng: np.random.Generator, size: int, scale: float, count: int) -> np.ndarray:
  """count unit-variance Gaussian-smoothed noise maps: [size, size, count]."""
  noise = rng.standard_normal((count, size, size))
  f = np.fft.fftfreq(size)
  kernel = np.exp(-2 * (np.pi * scale) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
  maps = np.fft.ifft2(np.fft.fft2(noise) * kernel).real
  maps -= maps.mean(axis=(1, 2), keepdims=True)
  maps /= maps.std(axis=(1, 2), keepdims=True) + 1e-12
  return maps.transpose(1, 2, 0)


def _tissue(rng: np.random.Generator, n: int) -> tuple[int, np.ndarray]:
  """A tissue region of exactly n grid cells: (grid size, cells [n, 2] as (x, y), x-major order)."""
  size = int(np.ceil(np.sqrt(n / 0.4))) + 4
  field = _smooth_maps(rng, size, size / 8, 1)[..., 0]
  yy, xx = np.mgrid[:size, :size]
  r2 = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2
  score = field - 3.0 * r2
  flat = np.argsort(-score, axis=None, kind='stable')[:n]
  y, x = np.unravel_index(flat, (size, size))
  order = np.lexsort((y, x))  # x-major, y fastest (CLAM's meshgrid(indexing='ij') order)
  return size, np.stack([x[order], y[order]], axis=1)


def _slide(rng: np.random.Generator, n: int, evidence: np.ndarray, basis: dict, cfg:
           SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
  """One slide: (features [n, D] float32, coords [n, 2] int32 level-0 pixels)."""
  size, cells = _tissue(rng, n)
  x, y = cells[:, 0], cells[:, 1]
  tissue = _smooth_maps(rng, size, 1.5, _TISSUE_MAPS)[y, x]  # [n, K]
  blob = _smooth_maps(rng, size, 2.0, 1)[y, x, 0]  # [n]
  frac = rng.uniform(0.1, 0.3)
  threshold = np.quantile(blob, 1 - frac)
  tumour = 1 / (1 + np.exp(-(blob - threshold) / 0.15))  # soft-edged blobs, ~frac of the patches
  noise = cfg.difficulty
  signal = _TUMOUR_AMP * basis['tumour'] + _CLASS_AMP * evidence @ basis['classes']  # [D]
  feats = (tissue @ basis['tissue'] + tumour[:, None] * signal[None]
           + noise * cfg.slide_offset * rng.standard_normal(cfg.feature_dim)[None]
           + noise * _PATCH_NOISE * rng.standard_normal((n, cfg.feature_dim)))
  origin = rng.integers(0, 40, size=2) * PATCH_PX
  coords = cells * PATCH_PX + origin
  return feats.astype(np.float32), coords.astype(np.int32)


def _rare_patches(rng: np.random.Generator, coords: np.ndarray, cfg: SyntheticConfig
                  ) -> np.ndarray:
  """Sorted indices of a slide's rare patches (module docstring): a fraction
  U(rare_min_fraction, rare_max_fraction) of the n = len(coords) patches, at least one, scattered
  or (half of the slides) grown around one to three random centres."""
  n = coords.shape[0]
  k = max(1, int(round(rng.uniform(cfg.rare_min_fraction, cfg.rare_max_fraction) * n)))
  if rng.uniform() < 0.5:
    return np.sort(rng.choice(n, size=k, replace=False))
  centres = coords[rng.choice(n, size=min(int(rng.integers(1, 4)), k), replace=False)]
  dist = np.min(np.linalg.norm(coords[:, None, :] - centres[None], axis=-1), axis=1)  # [n]
  return np.sort(np.argsort(dist, kind='stable')[:k])


def oracle_statistic(feats: np.ndarray, direction: np.ndarray) -> float:
  """How far a slide's highest patch stands above its median along the rare direction u:
  max_j z_j - median_j z_j with z = feats [n, D] @ u [D] (the per-slide offset cancels)."""
  z = feats.astype(np.float64) @ direction
  return float(z.max() - np.median(z))


def rare_bayes_auc(label_noise: float) -> float:
  """Bayes-optimal AUC (and accuracy) of the rare-instance cohort: the pattern is detected whenever
  it is there (its amplitude stands >= 8 patch-noise SDs above the slide, module docstring), so the
  best score is its presence, which agrees with the class with probability 1 - eps; for a binary
  score, AUC = P(s+ > s-) + P(s+ = s-) / 2 = (1 - eps)^2 + eps (1 - eps) = 1 - eps."""
  return 1.0 - label_noise


def _basis(rng: np.random.Generator, cfg: SyntheticConfig) -> dict:
  """Feature directions: orthonormal tumour + class directions, random tissue loadings [K, D]
  orthogonal to the tumour direction."""
  d, c = cfg.feature_dim, cfg.classes
  q = np.linalg.qr(rng.standard_normal((d, min(d, c + 1))))[0].T
  if q.shape[0] < c + 1:  # feature_dim <= classes: fall back to random unit vectors
    extra = rng.standard_normal((c + 1 - q.shape[0], d))
    q = np.concatenate([q, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
  tissue = rng.standard_normal((_TISSUE_MAPS, d)) * _TISSUE_AMP / np.sqrt(_TISSUE_MAPS)
  tissue -= np.outer(tissue @ q[0], q[0])  # tumour stands out from normal tissue
  basis = {'tumour': q[0], 'classes': q[1:c + 1], 'tissue': tissue}
  if cfg.signal == 'rare':  # u: orthogonal to the tissue field, the tumour and class directions
    others = np.concatenate([q[:c + 1], tissue])
    u = rng.standard_normal(d)
    u -= others.T @ np.linalg.lstsq(others.T, u, rcond=None)[0]
    basis['rare'] = u / np.linalg.norm(u)
  return basis


def _genes(rng: np.random.Generator, evidence: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
  """FPKM-like expression [S, G] from gene evidence [S, C] (module k shifts by evidence[:, k])."""
  s, g, c = evidence.shape[0], cfg.genes, cfg.classes
  base = rng.normal(2.5, 1.5, g)
  module_size = min(max(5, g // 40), g // c)
  genes = rng.permutation(g)
  modules = genes[:c * module_size].reshape(c, module_size)
  base[modules] = rng.uniform(3.0, 6.0, modules.shape)  # expressed well above zero
  loadings = rng.normal(0, 0.7, (_PROGRAMMES, g)) * (rng.uniform(size=(_PROGRAMMES, g)) < 0.05)
  log2 = (base[None] + rng.standard_normal((s, _PROGRAMMES)) @ loadings
          + cfg.difficulty * _GENE_NOISE * rng.standard_normal((s, g)))
  for k in range(c):
    log2[:, modules[k]] += _MODULE_SHIFT * evidence[:, k, None]
  return np.maximum(np.exp2(log2) - 1, 0)


def gene_symbols(num_genes: int) -> list[str]:
  """[G] symbols: gene j < 6 or j even takes the next unused symbol of the signatures in turn
  (skipping used-up ones; `SYN<j>` once all are); the others `SYN<j>` (module docstring)."""
  sigs = [symbols for _, symbols in signatures.mcat_signatures()]
  used, next_of, out, turn = set(), [0] * len(sigs), [], 0
  for j in range(num_genes):
    name = f'SYN{j}'
    if j < len(sigs) or j % 2 == 0:
      for k in [(turn + i) % len(sigs) for i in range(len(sigs))]:
        while next_of[k] < len(sigs[k]) and sigs[k][next_of[k]] in used:
          next_of[k] += 1
        if next_of[k] < len(sigs[k]):
          name = sigs[k][next_of[k]]
          used.add(name)
          break
      turn += 1
    out.append(name)
  return out


def make_cohort(out_dir: str, preset: str = '', **kwargs) -> dict[str, str]:
  """Writes a synthetic cohort; `preset` names a `PRESETS` entry, keyword arguments are
  `SyntheticConfig` fields (over the preset's).

  Returns:
    {'features_dir', 'expression', 'labels'}: the paths of the three inputs (and 'truth' in
    survival and rare-instance modes).
  """
  if preset and preset not in PRESETS:
    raise ValueError(f'unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}')
  cfg = SyntheticConfig(**{**PRESETS.get(preset, {}), **kwargs})
  rare = cfg.signal == 'rare'
  if not (cfg.patients >= cfg.classes >= 2 and cfg.genes >= cfg.classes and 1 <= cfg.min_patches
          <= cfg.max_patches and cfg.feature_dim >= 1 and cfg.difficulty >= 0
          and cfg.signal in ('mean', 'rare') and 0 <= cfg.label_noise <= 1
          and 0 <= cfg.rare_min_fraction <= cfg.rare_max_fraction <= 1
          and not (rare and (cfg.survival or cfg.classes != 2 or cfg.feature_dim < 12))):
    raise ValueError(f'invalid synthetic cohort settings: {cfg}')
  rng = np.random.default_rng(cfg.seed)
  features_dir = os.path.join(out_dir, 'features')
  os.makedirs(features_dir, exist_ok=True)
  basis = _basis(rng, cfg)
  labels = rng.permutation(np.arange(cfg.patients) % cfg.classes)
  onehot = np.eye(cfg.classes)[labels]
  w = rng.uniform(size=cfg.patients)[:, None]
  s = _EVIDENCE_NOISE * cfg.difficulty
  slide_ev = w * onehot + s * rng.standard_normal(onehot.shape)
  gene_ev = (1 - w) * onehot + s * rng.standard_normal(onehot.shape)
  if rare:  # the class is carried by the rare pattern alone
    slide_ev, gene_ev = np.zeros_like(slide_ev), np.zeros_like(gene_ev)
    pattern = (labels == 1) != (rng.uniform(size=cfg.patients) < cfg.label_noise)
    truth_rows = ['slide_id,label,pattern,oracle,rare_patches']
  ids = [f'TCGA-SY-{i:04d}' for i in range(cfg.patients)]
  names = [f'class_{k}' for k in range(cfg.classes)]
  num_slides = np.ones(cfg.patients, np.int64)
  num_slides[rng.permutation(cfg.patients)[:round(cfg.two_slide_fraction * cfg.patients)]] = 2
  rows = ['patient_id,slide_id,label']
  if cfg.survival:
    times, censored, eta = _survival_times(rng, slide_ev, gene_ev, cfg)
    rows = ['case_id,slide_id,survival_months,censorship,label']
  for i, pid in enumerate(ids):
    for k in range(num_slides[i]):
      slide_id = f'{pid}-01Z-00-DX{k + 1}'
      n = int(np.exp(rng.uniform(np.log(cfg.min_patches), np.log(cfg.max_patches + 1))))
      n = min(max(n, cfg.min_patches), cfg.max_patches)
      feats, coords = _slide(rng, n, slide_ev[i], basis, cfg)
      if rare:
        idx = _rare_patches(rng, coords, cfg) if pattern[i] else np.zeros(0, np.int64)
        u = basis['rare'].astype(np.float32)
        feats += np.float32(cfg.difficulty * cfg.rare_offset * rng.standard_normal()) * u
        feats[idx] += np.float32(cfg.rare_amp) * u
        truth_rows.append(f'{slide_id},{names[labels[i]]},{int(pattern[i])},'
                          f'{oracle_statistic(feats, basis["rare"]):.6f},'
                          + ' '.join(map(str, idx)))
      with h5py.File(os.path.join(features_dir, f'{slide_id}.h5'), 'w') as f:
        f.create_dataset('features', data=feats, chunks=(32, cfg.feature_dim),
                         maxshape=(None, cfg.feature_dim))
        f.create_dataset('coords', data=coords, chunks=(32, 2), maxshape=(None, 2))
      rows.append(f'{pid},{slide_id},{times[i]:.4f},{censored[i]},{names[labels[i]]}'
                  if cfg.survival else f'{pid},{slide_id},{names[labels[i]]}')
  normals = np.flatnonzero(rng.uniform(size=cfg.patients) < cfg.normal_sample_fraction)
  samples = [f'{p}-01A' for p in ids] + [f'{ids[i]}-11A' for i in normals]
  evidence = np.concatenate([gene_ev, np.zeros((normals.size, cfg.classes))])
  values = _genes(rng, evidence, cfg)
  order = rng.permutation(len(samples))
  gene_ids = [f'ENSG{10_000_000 + 17 * j:011d}.{1 + j % 9}' for j in range(cfg.genes)]
  symbols = gene_symbols(cfg.genes)
  lines = ['\t'.join(['Ensembl_ID', 'gene_name'] + [samples[k] for k in order])]
  for j, gid in enumerate(gene_ids):
    lines.append(f'{gid}\t{symbols[j]}\t' + '\t'.join(f'{v:.4g}' for v in values[order, j]))
  expression = os.path.join(out_dir, 'expression.tsv')
  with open(expression, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  labels_path = os.path.join(out_dir, 'labels.csv')
  with open(labels_path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(rows) + '\n')
  out = {'features_dir': features_dir, 'expression': expression, 'labels': labels_path}
  if rare:
    out['truth'] = os.path.join(out_dir, 'rare_truth.csv')
    with open(out['truth'], 'w', encoding='utf-8') as f:
      f.write('\n'.join(truth_rows) + '\n')
  if cfg.survival:
    out['truth'] = os.path.join(out_dir, 'survival_truth.csv')
    with open(out['truth'], 'w', encoding='utf-8') as f:
      f.write('case_id,eta\n' + ''.join(f'{p},{e:.6f}\n' for p, e in zip(ids, eta)))
  return out


def _survival_times(rng: np.random.Generator, slide_ev: np.ndarray, gene_ev: np.ndarray,
                    cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(observed months [P], censorship [P] 1 = censored, log hazard eta [P]) (module docstring)."""
  eta = cfg.hazard_scale * ((slide_ev + gene_ev) @ (np.eye(cfg.classes)[1] - np.eye(cfg.classes)[0])
                            ) / 2
  rate = np.log(2) / 24.0
  event_time = rng.exponential(1.0 / (rate * np.exp(eta)))
  censor_time = np.minimum(rng.exponential(1.0 / (cfg.censor_rate * rate), eta.size), 120.0)
  return (np.minimum(event_time, censor_time), (censor_time < event_time).astype(int), eta)


def main(argv: Sequence[str] | None = None) -> None:
  """Command line: writes a cohort and prints the paths; only the flags given override the preset."""
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                              argument_default=argparse.SUPPRESS)
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--preset', default='', choices=['', *sorted(PRESETS)],
                 help='named cohort (PRESETS); the other flags override its fields')
  defaults = SyntheticConfig()
  for field in dataclasses.fields(SyntheticConfig):
    default = getattr(defaults, field.name)
    if isinstance(default, bool):  # --survival / --no-survival
      p.add_argument(f'--{field.name}', action=argparse.BooleanOptionalAction,
                     help=f'default {default}')
    else:
      p.add_argument(f'--{field.name}', type=type(default), help=f'default {default}')
  args = vars(p.parse_args(argv))
  paths = make_cohort(args.pop('out'), args.pop('preset'), **args)
  for k, v in paths.items():
    print(f'{k}: {v}')


if __name__ == '__main__':
  main()
