"""The one exception type gimp_jax raises for bad user input, and how a full disk is recognised."""

import errno

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


class DataError(ValueError):
  """A problem with user-supplied data or configuration.

  The message names the file, the patient (or slide) and the field, so that the command line can
  print it as one line and exit with code 2.
  """


def _chain(error: BaseException):
  """The error and its causes (`raise ... from`, and the errors being handled when it was raised)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_full(error: BaseException) -> bool:
  """Whether the error, or one it came from, is a full disk or an exhausted quota (orbax and
  tensorstore wrap the OSError, or keep only its text)."""
  return any((isinstance(e, OSError) and e.errno in _DISK_FULL)
             or any(t in str(e) for t in _DISK_FULL_TEXT) for e in _chain(error))


def disk_full_message(error: BaseException, where: str = "") -> str:
  """One line: which file (else `where`) could not be written, and what to do."""
  path = next((e.filename for e in _chain(error) if isinstance(e, OSError) and e.filename), None)
  return (f"{path or where or 'the workdir'}: disk full (No space left on device); nothing half-written "
          "was kept: free some space and run the same command again to resume")
