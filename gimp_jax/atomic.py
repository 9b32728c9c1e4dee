"""Files written whole or not at all, and never over something that is not ours to replace.

`write(path, fill)` writes through a new temporary file beside `path` (created exclusively, so a
leftover or planted name is never followed) and renames it over `path`: a kill or a full disk
never leaves half a file. The rename replaces whatever entry `path` is, so the target is checked
first (`problem`): only a missing path or a regular file is replaced; a symbolic link, a device
(`/dev/null`, `/dev/full`), a named pipe, a socket or a folder is refused with DataError.
"""

import os
import stat
from typing import Callable, IO

from gimp_jax.errors import DataError

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def problem(path: str) -> str | None:
  """Why `path` must not be replaced by a new file (one line naming it), or None when it is
  missing or a regular file."""
  try:
    mode = os.lstat(path).st_mode
  except FileNotFoundError:
    return None
  except OSError as e:
    return f"{path}: cannot be inspected ({e.strerror or e})"
  for test, kind in _KINDS:
    if test(mode):
      target = f" to {os.readlink(path)}" if stat.S_ISLNK(mode) else ""
      return (f"{path}: is {kind}{target}, not a regular file; refusing to replace it (give the "
              "path of a new or regular file)")
  return None if stat.S_ISREG(mode) else f"{path}: not a regular file; refusing to replace it"


def write(path: str, fill: Callable[[IO], None], newline: str | None = None,
          binary: bool = False) -> None:
  """Writes a text file (UTF-8), or a binary one, through a temporary file and a rename, after
  `problem`.

  Args:
    path: the file to write.
    fill: writes the content into the open temporary file.
    newline: as `open` (csv wants ''); text only.
    binary: open the temporary file in binary mode (e.g. for `np.savez`).

  Raises:
    DataError: `path` is not a file we may replace.
  """
  why = problem(path)
  if why:
    raise DataError(why)
  tmp = f"{path}.tmp-{os.getpid()}"
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with (os.fdopen(fd, "wb") if binary else
          os.fdopen(fd, "w", encoding="utf-8", newline=newline)) as f:
      fill(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:  # a full disk: no half temporary file left behind
    if os.path.lexists(tmp):
      os.remove(tmp)
