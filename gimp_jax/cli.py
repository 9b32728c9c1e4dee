"""What the command lines share: flag errors as one line, and the exit codes.

Exit codes: 0 done (also `--help`); 2 bad input or config (one line per problem, nothing run);
3 a NaN/Inf loss stopped training; 4 the disk is full (what was written before stays complete:
checkpoints, JSON files and the report are written through temporary names); 128 + signal number
after a stop on request (130 SIGINT, 143 SIGTERM).
"""

import logging as py_logging
import re
import sys

from absl import flags

from gimp_jax import errors

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_DISK_FULL = 4
_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")
# Loggers whose INFO lines a user cannot act on (orbax's per-checkpoint chatter, JAX's line about
# a TPU backend it did not find); their warnings and errors still pass.
_QUIET = ("orbax", "jax._src.xla_bridge", "absl.orbax")


def quiet_libraries(record) -> bool:
  """A logging filter (`absl.logging.get_absl_handler().addFilter`) that drops the INFO lines of
  `_QUIET` loggers; warnings and errors still pass."""
  return (record.levelno >= py_logging.WARNING or not record.name.startswith(_QUIET)
          and "orbax" not in record.pathname)


def fail(prog: str, message: str, code: int = EXIT_BAD_INPUT) -> None:
  """Prints `prog: error: message` to stderr and exits with `code`."""
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(code)


def _one_line(error: Exception, argv: list[str]) -> str:
  """A flag or config error as one line; an unknown config field names the flag and a close match."""
  text = str(error)
  field = re.search(r"\w+", text)
  if isinstance(error, (AttributeError, KeyError)) and field:
    guess = re.search(r"Did you mean \W*(\w+)\W* instead of \W*(\w+)", text)
    field = guess.group(2) if guess else field.group()
    given = next((a for a in argv if re.search(rf"\.{field}(=|$)", a)), f"--config...{field}")
    hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
    return f"{given}: unknown config field {field!r}{hint}"
  lines = [x.strip() for x in text.replace("\\n", "\n").splitlines() if x.strip()]
  if len(lines) > 1:  # config file errors carry a traceback or the paths tried
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines) or type(error).__name__


def flags_parser(prog: str):
  """An `app.run(flags_parser=...)` that turns flag and config errors into one line and exit 2,
  and makes `--help` exit 0."""
  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
      for name in ("config",):  # config files load lazily: load now, inside this guard
        if name in flags.FLAGS and flags.FLAGS[name].value is not None:
          flags.FLAGS[name].value.get("seed")
      return rest
    except SystemExit as e:  # absl prints the help and exits 1
      if any(a.split("=")[0] in _HELP for a in argv[1:]):
        sys.exit(0)
      raise
    except Exception as e:  # flags.Error, and what config files and ml_collections raise
      fail(prog, _one_line(e, argv))
  return parse


def exit_code(error: BaseException) -> int | None:
  """The exit code of an error the command lines report in one line, None for others."""
  if errors.disk_full(error):
    return EXIT_DISK_FULL
  if isinstance(error, errors.DataError):
    return EXIT_BAD_INPUT
  if isinstance(error, FloatingPointError):  # train.loop.NonFiniteLossError
    return EXIT_NON_FINITE
  return None


def message(error: BaseException, where: str = "") -> str:
  """The line printed for an error with an `exit_code` (`where`: the folder being written)."""
  if errors.disk_full(error):
    return errors.disk_full_message(error, where)
  return str(error)
