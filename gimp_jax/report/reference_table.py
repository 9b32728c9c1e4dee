"""The report's table of the penalised linear reference (`gimp_jax.reference`) beside the model."""

from collections.abc import Callable, Mapping
import re
from typing import Any

TEXT = ('What a statistician fits first, on the same train/val/test patients: the mean-pooled patch '
        'features (slide), the expression (genes) and both, standardised on train, the penalty '
        'chosen on validation, test scored once. A model below the "both" row learns less than a '
        'linear model. The stacked row blends this model with the "both" fit, the linear share w '
        'chosen on validation (`gimp_jax.stacking`): w near 1 means the model adds little to the '
        'linear model on validation.')


def rows(results: Mapping[str, Any], fmt: Callable[[Any], str]
         ) -> tuple[list[str], list[list[str]]] | None:
  """(header, rows): one row per input (slide, genes, both), the model's row and the model minus
  the 'both' row; one column per `<split>_<metric>` the reference scored. None without a
  reference in `results`. `fmt` formats a cell."""
  ref = results.get('reference')
  if not isinstance(ref, Mapping) or not isinstance(ref.get('both'), Mapping):
    return None
  cols = [k for k in ref['both'] if re.fullmatch(r'(val|test)_.+', k)]
  table = [[f'{ref.get("model", "linear")}, {name}'] + [fmt(ref[name].get(k, '')) for k in cols]
           for name in ('slide', 'genes', 'both') if isinstance(ref.get(name), Mapping)]
  table.append(['this model'] + [fmt(results.get(k, '')) for k in cols])
  table.append(['this model - linear, both'] + [fmt(results.get(f'vs_reference_{k}', ''))
                                                for k in cols])
  if 'stack_weight' in results:
    table.append([f'stacked, w = {results["stack_weight"]:.1f}']
                 + [fmt(results.get(f'stack_{k}', '')) for k in cols])
  return ['fit'] + cols, table
