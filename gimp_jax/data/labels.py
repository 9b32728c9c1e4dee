"""The labels CSV: one row per slide, `patient_id,slide_id,label[,split][,expression_id]` (CLAM's
`case_id` is accepted for `patient_id`), or for `task="survival"` MCAT/PORPOISE's outcome columns
(`survival.FORMS`) in place of `label`. `read_labels` parses and checks every row; `group` gathers
a patient's rows (several slides) and checks that they agree."""

from collections.abc import Sequence
import csv
import dataclasses
import os

from gimp_jax.data import survival
from gimp_jax.errors import DataError

_SPLIT_NAMES = {'train': 'train', 'training': 'train', 'val': 'val', 'valid': 'val',
                'validation': 'val', 'test': 'test', 'testing': 'test'}


@dataclasses.dataclass(frozen=True)
class LabelRow:
  """One row of the labels CSV (`line` is its 1-based line number)."""
  line: int
  patient_id: str
  slide_id: str
  label: str
  split: str | None = None
  expression_id: str | None = None
  time: float | None = None
  censorship: int | None = None


def _plain_name(slide_id: str) -> bool:
  """Whether `features_dir/<slide_id>.h5` stays inside features_dir."""
  return (slide_id not in ('.', '..') and '/' not in slide_id and '\\' not in slide_id
          and os.sep not in slide_id and not os.path.isabs(slide_id))


def read_labels(path: str, task: str = 'classification', allow_unlabelled: bool = False
                ) -> list[LabelRow]:
  """Reads the labels CSV; DataError listing every malformed row (an empty label is one unless
  `allow_unlabelled`, `data.allow_missing`).

  For `task="survival"` the outcome columns (`survival.FORMS`) replace `label` (any `label`
  column is ignored) and each row's time and censorship are checked.
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: labels file not found')
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: Excel's "CSV UTF-8" BOM
      reader = csv.reader(f)
      header = next(reader, None)
      table = [(reader.line_num, r) for r in reader]
  except (UnicodeDecodeError, csv.Error) as e:
    raise DataError(f'{path}: not a readable CSV ({e})') from e
  if header is None:
    raise DataError(f'{path}: header: file is empty')
  cols = [h.strip().lower() for h in header]
  cols = ['patient_id' if c == 'case_id' else c for c in cols]
  required = ('patient_id', 'slide_id', 'label')
  outcome = None
  if task == 'survival':
    required = ('patient_id', 'slide_id')
    outcome = survival.outcome_columns(cols)
    if outcome is None:
      raise DataError(f'{path}: header: survival needs columns survival_months,censorship '
                      f'(1 = censored) or time,event (1 = observed) (got {header})')
  missing = [c for c in required if c not in cols]
  if missing:
    raise DataError(f'{path}: header: missing column(s) {", ".join(missing)} (got {header})')
  if len(set(cols)) != len(cols):
    raise DataError(f'{path}: header: duplicated column names {header}')
  rows, problems = [], []
  for line, r in table:
    if not any(x.strip() for x in r):
      continue
    if len(r) != len(cols):
      problems.append(f'{path}: line {line}: {len(r)} fields, the header has {len(cols)}')
      continue
    d = {c: x.strip() for c, x in zip(cols, r)}
    if any('\n' in x or '\r' in x for x in d.values()):  # a quote left open spans lines
      problems.append(f'{path}: line {line}: a field spans several lines (an unclosed quote?)')
      continue
    nul = [c for c, x in d.items() if '\0' in x]
    if nul:  # a binary or damaged file: "A\0" would become a class of its own
      problems.append(f'{path}: line {line}: patient {d["patient_id"].replace(chr(0), "")}: '
                      f'{nul[0]}: {d[nul[0]]!r} contains a NUL character (a damaged or binary '
                      'file?)')
      continue
    empty = [c for c in required if not d[c] and not (c == 'label' and allow_unlabelled)]
    if empty:
      problems.append(f'{path}: line {line}: patient {d["patient_id"] or "?"}: empty '
                      f'{", ".join(empty)}')
      continue
    if not _plain_name(d['slide_id']):
      problems.append(f'{path}: line {line}: patient {d["patient_id"]}: slide_id '
                      f'{d["slide_id"]!r} is not a file name inside features_dir (no folders, no '
                      '"..", not an absolute path)')
      continue
    split = None
    if 'split' in cols:
      split = _SPLIT_NAMES.get(d['split'].lower())
      if split is None:
        problems.append(f'{path}: line {line}: patient {d["patient_id"]}: split: {d["split"]!r} is '
                        'not train/val/test')
        continue
    time = censored = None
    if outcome is not None:
      parsed = survival.parse_outcome(d, outcome, f'{path}: line {line}: patient {d["patient_id"]}')
      if isinstance(parsed, str):
        problems.append(parsed)
        continue
      time, censored = parsed
    rows.append(LabelRow(line, d['patient_id'], d['slide_id'], d.get('label', '') if outcome is None
                         else '', split, d.get('expression_id') or None, time, censored))
  if problems:
    raise DataError('\n'.join(problems))
  if not rows:
    raise DataError(f'{path}: no label rows')
  return rows


def group(rows: list[LabelRow], path: str, class_names: Sequence[str]
           ) -> tuple[dict[str, list[LabelRow]], tuple[str, ...], list[str]]:
  """Groups rows by patient; returns (patient -> rows, class names, problems)."""
  problems = []
  by_patient: dict[str, list[LabelRow]] = {}
  seen_slides: dict[str, LabelRow] = {}
  for r in rows:
    if r.slide_id in seen_slides:
      problems.append(f'{path}: line {r.line}: patient {r.patient_id}: slide_id {r.slide_id} '
                      f'duplicated (first on line {seen_slides[r.slide_id].line})')
      continue
    seen_slides[r.slide_id] = r
    by_patient.setdefault(r.patient_id, []).append(r)
  for pid, rs in by_patient.items():
    for field in ('label', 'split', 'expression_id', 'time', 'censorship'):
      values = sorted({str(getattr(r, field)) for r in rs})
      if len(values) > 1:
        what = 'two splits' if field == 'split' else f'conflicting {field}s'
        problems.append(f'{path}: lines {", ".join(str(r.line) for r in rs)}: patient {pid}: '
                        f'{field}: {what} ({", ".join(values)})')
  if rows[0].time is not None:  # survival: the classes are the time bins, fitted later
    return by_patient, (), problems
  given = {r.label for r in rows} - {''}  # '' = unlabelled (allow_missing)
  names = tuple(class_names) or tuple(sorted(given))
  unknown = sorted(given - set(names))
  if unknown:
    problems.append(f'{path}: label: unknown value(s) {", ".join(unknown)} (classes: '
                    f'{", ".join(names)})')
  if len(names) < 2:
    problems.append(f'{path}: label: only one class ({", ".join(names)}); need at least two')
  return by_patient, names, problems
