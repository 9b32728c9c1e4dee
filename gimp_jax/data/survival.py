"""Survival outcomes of a cohort: the labels CSV's time and censorship columns, their checks, and
the discrete time bins of the NLL-surv head.

Columns, as MCAT/PORPOISE ship them or in the plain form:
  survival_months, censorship   (censorship 1 = censored, 0 = event)
  time, event                   (event 1 = observed, 0 = censored)
Times must be finite, >= 0 and within float32, the indicator 0 or 1; when both pairs are given they
must agree on every row.

Bins (MCAT's `pd.qcut` on the uncensored cases): the k - 1 inner cut points are the 1/k, ..., (k-1)/k
quantiles (linear interpolation) of the **training** cases' uncensored times; bins are [cut_{j-1},
cut_j) with the outer ones open, so every time, including val/test times beyond the training
range, falls in a bin. Nothing but the training split's times sets them.
"""

from collections.abc import Mapping, Sequence

from absl import logging
import numpy as np

from gimp_jax.errors import DataError

FORMS = (('survival_months', 'censorship', False), ('time', 'event', True))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def outcome_columns(columns: Sequence[str]) -> tuple[str, str, bool] | None:
  """(time column, indicator column, indicator is `event`) of a header, or None."""
  for time_col, flag_col, is_event in FORMS:
    if time_col in columns and flag_col in columns:
      return time_col, flag_col, is_event
  return None


def parse_outcome(row: Mapping[str, str], columns: tuple[str, str, bool], where: str
                  ) -> tuple[float, int] | str:
  """(time, censorship with 1 = censored) of one CSV row, or the problem as one line.

  Args:
    row: column -> stripped cell.
    columns: `outcome_columns` of the header.
    where: '<file>: line <n>: patient <id>' for the message.
  """
  out = _parse_pair(row, columns, where)
  other = next((f for f in FORMS if f[0] != columns[0] and f[0] in row and f[1] in row), None)
  if isinstance(out, str) or other is None:
    return out
  second = _parse_pair(row, other, where)
  if isinstance(second, str):
    return second
  if second != out:  # both pairs given: they must say the same
    a, b = FORMS
    return (f'{where}: {a[0]},{a[1]} and {b[0]},{b[1]} both given and they disagree '
            f'({row[a[0]]},{row[a[1]]} vs {row[b[0]]},{row[b[1]]}; {a[1]} 1 = censored, '
            f'{b[1]} 1 = observed): keep one pair')
  return out


def _parse_pair(row: Mapping[str, str], columns: tuple[str, str, bool], where: str
                ) -> tuple[float, int] | str:
  """`parse_outcome` from one pair of columns."""
  time_col, flag_col, is_event = columns
  raw_time, raw_flag = row[time_col], row[flag_col]
  try:
    time = float(raw_time)
  except ValueError:
    return f'{where}: {time_col}: {raw_time!r} is not a number' if raw_time else (
        f'{where}: {time_col}: missing')
  if not np.isfinite(time) or time < 0:
    return f'{where}: {time_col}: {raw_time!r} must be a finite time >= 0'
  if time > _FLOAT32_MAX:
    return (f'{where}: {time_col}: {raw_time!r} overflows float32 (largest {_FLOAT32_MAX:.4g}), '
            'the precision times are computed in; give times in months or days')
  if raw_flag not in ('0', '1', '0.0', '1.0'):
    return f'{where}: {flag_col}: {raw_flag!r} must be 0 or 1'
  flag = int(float(raw_flag))
  return time, (1 - flag) if is_event else flag


def fit_bins(times: np.ndarray, censorship: np.ndarray, train: np.ndarray, num_bins: int,
             where: str) -> np.ndarray:
  """Inner cut points [k - 1] from the uncensored training times (module docstring).

  Args:
    times: [P] follow-up times.
    censorship: [P] 1 = censored.
    train: indices of the training cases.
    num_bins: k >= 1.
    where: the labels file, for the message.

  Raises:
    DataError: no uncensored training case.
  """
  events = times[train][censorship[train] == 0]
  if events.size == 0:
    raise DataError(f'{where}: censorship: no event (uncensored case) among the {train.size} '
                    'training cases; the time bins cannot be fitted')
  return np.quantile(events, np.arange(1, num_bins) / num_bins)


def assign_bins(times: np.ndarray, cuts: np.ndarray) -> np.ndarray:
  """[P] int32 bin of each time: the number of cut points <= t (bins are [cut_{j-1}, cut_j))."""
  return np.searchsorted(cuts, times, side='right').astype(np.int32)


def bin_names(cuts: np.ndarray) -> tuple[str, ...]:
  """Readable bin names, e.g. ('<12.3', '12.3-25', '25-40.1', '>=40.1')."""
  if cuts.size == 0:
    return ('all',)
  c = [f'{x:.4g}' for x in cuts]
  return tuple([f'<{c[0]}'] + [f'{a}-{b}' for a, b in zip(c[:-1], c[1:])] + [f'>={c[-1]}'])


def split_problems(splits: Mapping[str, np.ndarray], censorship: np.ndarray, where: str
                   ) -> list[str]:
  """One line per non-empty split without an event (its C-index and bins are undefined)."""
  return [f'{where}: split {name}: no event among its {idx.size} cases (every case censored)'
          for name, idx in splits.items() if idx.size and not np.any(censorship[idx] == 0)]


def label_bins(times: np.ndarray, censorship: np.ndarray, splits: Mapping[str, np.ndarray],
               num_bins: int, splits_file: str, labels_file: str
               ) -> tuple[np.ndarray, tuple[str, ...]]:
  """Each case's time bin [P] (bins fitted on the training split) and the bin names.

  Raises:
    DataError: a split without an event (named after `splits_file`, or `labels_file`).
  """
  problems = split_problems(splits, censorship, splits_file or labels_file)
  if problems:
    raise DataError('\n'.join(problems))
  cuts = fit_bins(times, censorship, splits['train'], num_bins, labels_file)
  logging.info('survival: %d bins, cut points %s (training uncensored times)', num_bins,
               np.round(cuts, 3).tolist())
  return assign_bins(times, cuts), bin_names(cuts)
