"""The ViT patch encoders against PyTorch timm on the same weights, in one process.

  python -m experiments.bench.encoders --depth 2 --batch 4 \
      --json experiments/results/bench_encoders_cpu.json

For every preset (`gimp_jax.preprocess.encoders.PRESETS`), timm's model is built as TRIDENT builds
it (at `--depth` blocks, full width), its random weights are loaded into ours
(`encoders.from_state_dict`), and a batch of normalised inputs at the encoder's input size goes
through: ours jitted (float32, and bfloat16 compute when asked), timm in `torch.inference_mode()`
(float32; with `--torch_bf16`, also under CPU autocast). Repeats are interleaved
(`measure.interleaved`); a row gives patches/s from the median wall time, the median process CPU
time, the peak resident-set growth of one call (memory per batch), the first call (compilation for
ours), the largest difference from timm's float32 features, and ours / timm as a time ratio
(below 1: ours is faster). Writes `--json` and a Markdown table beside it.
"""

import json
import os
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch

from experiments.bench import measure
from gimp_jax.preprocess import encoders

# timm's calls in TRIDENT (`trident/patch_encoder_models/load.py`); CONCH's trunk from its own code.
TIMM = {
    'uni': ('vit_large_patch16_224', dict(init_values=1e-5)),
    'uni2_h': ('vit_giant_patch14_224', dict(
        patch_size=14, num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2,
        no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU,
        reg_tokens=8)),
    'conch_v1_5': ('vit_large_patch16_224', dict(init_values=1.0, img_size=448)),
    'virchow2': ('vit_huge_patch14_224', dict(
        init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, global_pool='',
        mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)),
    'phikon_v2': ('vit_large_patch16_224', dict(init_values=1e-5)),
    'h_optimus_0': ('vit_giant_patch14_reg4_dinov2', dict(img_size=224, init_values=1e-5)),
}

_ENCODERS = flags.DEFINE_list('encoders', list(TIMM), 'Presets to run.')
_DEPTH = flags.DEFINE_integer('depth', 2, 'Blocks (full width); 0 = the published depth.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Patches per call.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats per implementation.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Our compute dtypes.')
_TORCH_BF16 = flags.DEFINE_bool('torch_bf16', False, 'Also time timm under bfloat16 autocast.')
_JSON = flags.DEFINE_string('json', 'experiments/results/bench_encoders_cpu.json', 'Output path.')


class TorchConchHead(torch.nn.Module):
  """CONCH v1.5's AttentionalPooler (1 query, 8 heads) and ln_contrast, for timing beside timm."""

  def __init__(self):
    super().__init__()
    self.query = torch.nn.Parameter(torch.randn(1, 768))
    self.ln_q, self.ln_k = torch.nn.LayerNorm(768), torch.nn.LayerNorm(1024)
    self.to_q = torch.nn.Linear(768, 768, bias=False)
    self.to_kv = torch.nn.Linear(1024, 1536, bias=False)
    self.to_out = torch.nn.Linear(768, 768, bias=False)
    self.ln_contrast = torch.nn.LayerNorm(768)

  def forward(self, tokens):
    b = tokens.shape[0]
    q = self.to_q(self.ln_q(self.query)).view(1, 1, 8, 96).transpose(1, 2).expand(b, -1, -1, -1)
    k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
    k, v = (t.view(b, -1, 8, 96).transpose(1, 2) for t in (k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return self.ln_contrast(self.to_out(out.transpose(1, 2).reshape(b, 1, 768))[:, 0])


def torch_encoder(name: str, depth: int):
  """(forward on NCHW float32 -> features, the timm-named state dict) with random weights."""
  arch, kwargs = TIMM[name]
  model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True,
                            **dict(kwargs, **({'depth': depth} if depth else {}))).eval()
  if name == 'conch_v1_5':
    head = TorchConchHead().eval()
    state = {f'trunk.{k}': v for k, v in model.state_dict().items()}
    state.update({f'attn_pool_contrast.{k}': v for k, v in head.state_dict().items()
                  if not k.startswith('ln_contrast')})
    state.update({k: v for k, v in head.state_dict().items() if k.startswith('ln_contrast')})
    # CONCH's trunk holds a 14 x 14 grid and resamples it to 28 x 28 (DINO's bicubic) per call;
    # timm here holds the resampled grid, so only the blocks are timed on the torch side.
    cls, grid = model.pos_embed[:, :1], model.pos_embed[:, 1:].reshape(1, 28, 28, -1)
    grid14 = torch.nn.functional.interpolate(grid.permute(0, 3, 1, 2), size=(14, 14),
                                             mode='bilinear')
    state['trunk.pos_embed'] = torch.cat([cls, grid14.permute(0, 2, 3, 1).reshape(1, 196, -1)], 1)
    grid28 = torch.nn.functional.interpolate(grid14, scale_factor=(28.1 / 14, 28.1 / 14),
                                             mode='bicubic')
    with torch.no_grad():
      model.pos_embed.copy_(torch.cat([cls, grid28.permute(0, 2, 3, 1).reshape(1, 784, -1)], 1))
    return (lambda x: head(model.forward_features(x))), state
  if name == 'virchow2':
    def virchow2(x):
      tokens = model(x)
      return torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1)
    return virchow2, model.state_dict()
  return model, model.state_dict()


def bench_one(name: str) -> list[dict]:
  preset = encoders.PRESETS[name].with_depth(_DEPTH.value)
  forward, state = torch_encoder(name, _DEPTH.value)
  state = {k: v.detach().numpy() for k, v in state.items()}
  size = preset.input_size
  x = np.random.default_rng(0).standard_normal((_BATCH.value, size, size, 3)).astype(np.float32)
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  with torch.inference_mode():
    reference = forward(x_torch).float().numpy()
  runners = []
  for dtype in _DTYPES.value:
    model = encoders.from_state_dict(preset, state, dtype=jnp.dtype(dtype))
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, images, g=graphdef: nnx.merge(g, p)(images))
    x_dev = jnp.asarray(x)
    start = time.perf_counter()
    out = np.asarray(fn(params, x_dev))
    first = time.perf_counter() - start
    runners.append(measure.Runner(
        f'gimp_jax_{dtype}', lambda fn=fn, p=params, xd=x_dev: fn(p, xd).block_until_ready(),
        {'first_call_s': first, 'max_abs_diff': float(np.abs(out - reference).max())}))
  torch_dtypes = ['float32'] + (['bfloat16'] if _TORCH_BF16.value else [])
  for dtype in torch_dtypes:
    def run(dtype=dtype):
      with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16,
                                                  enabled=dtype == 'bfloat16'):
        return forward(x_torch)
    start = time.perf_counter()
    out = run().float().numpy()
    runners.append(measure.Runner(f'timm_{dtype}', run, {
        'first_call_s': time.perf_counter() - start,
        'max_abs_diff': float(np.abs(out - reference).max())}, framework='torch'))
  times = measure.interleaved(runners, _REPEATS.value)
  rows = []
  timm_wall = measure.summary(times['timm_float32']['wall_s'])['median']
  for r in runners:
    wall = measure.summary(times[r.name]['wall_s'])
    rows.append({
        'encoder': name, 'impl': r.name, 'depth': preset.vit.depth, 'width': preset.vit.embed_dim,
        'input': size, 'batch': _BATCH.value, 'wall_s': wall,
        'cpu_s': measure.summary(times[r.name]['cpu_s'])['median'],
        'patches_per_s': _BATCH.value / wall['median'],
        'peak_rss_increase_bytes': measure.peak_rss_increase(r.run),
        'ratio_to_timm_f32': wall['median'] / timm_wall, **r.info})
  return rows


def markdown(results: dict) -> str:
  lines = [f"Patch encoders, ours vs timm (same weights, same run). {results['machine']}; "
           f"load {results['load_before']} -> {results['load_after']}; depth "
           f"{results['depth']} (full width), batch {results['batch']}.", '',
           '| encoder | impl | input | patches/s | median s (p25-p75) | CPU s | ours/timm f32 '
           '| peak RSS +MiB | first call s | max abs diff vs timm f32 |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in results['rows']:
    mem = r['peak_rss_increase_bytes']
    lines.append(
        f"| {r['encoder']} | {r['impl']} | {r['input']} | {r['patches_per_s']:.2f} | "
        f"{r['wall_s']['median']:.3f} ({r['wall_s']['p25']:.3f}-{r['wall_s']['p75']:.3f}) | "
        f"{r['cpu_s']:.3f} | {r['ratio_to_timm_f32']:.2f} | "
        f"{'-' if mem is None else f'{mem / 2 ** 20:.0f}'} | {r['first_call_s']:.2f} | "
        f"{r['max_abs_diff']:.1e} |")
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  load_before = os.getloadavg()
  model = measure.cpu_model()
  rows = []
  for name in _ENCODERS.value:
    rows += bench_one(name)
    print(markdown({'machine': model, 'load_before': '', 'load_after': '', 'depth': _DEPTH.value,
                    'batch': _BATCH.value, 'rows': rows[-len(_DTYPES.value) - 1:]}), flush=True)
  results = {
      'machine': f'{model}, {os.cpu_count()} cores, jax {jax.__version__} '
                 f'({jax.default_backend()}), torch {torch.__version__} '
                 f'({torch.get_num_threads()} threads), timm {timm.__version__}',
      'load_before': ' '.join(f'{v:.2f}' for v in load_before),
      'load_after': ' '.join(f'{v:.2f}' for v in os.getloadavg()),
      'depth': _DEPTH.value, 'batch': _BATCH.value, 'rows': rows}
  if _JSON.value:
    os.makedirs(os.path.dirname(_JSON.value) or '.', exist_ok=True)
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
    with open(os.path.splitext(_JSON.value)[0] + '.md', 'w', encoding='utf-8') as f:
      f.write(markdown(results))
  print(markdown(results))


if __name__ == '__main__':
  app.run(main)
