"""The one exception type gimp_jax raises for bad user input."""


class DataError(ValueError):
  """A problem with user-supplied data or configuration.

  The message names the file, the patient (or slide) and the field, so that the command line can
  print it as one line and exit with code 2.
  """
