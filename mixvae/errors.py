"""Errors in what a user gave (a config field, a path, a file).

The launchers print these as one line, `error: <message>`, and exit with
code 2; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Something the user gave is wrong; the message says how to fix it."""


class ConfigError(UserError, ValueError):
  """A config field (or config argument) has a value that cannot work."""


class MissingError(UserError, FileNotFoundError):
  """A path the user named, or that a run needs, does not exist."""


class DataError(UserError, IOError):
  """Data files that cannot be read as prepared (truncated, changed)."""


class WriteError(UserError, OSError):
  """A file of the run could not be written (e.g. the disk is full)."""


def write_failure(error: BaseException) -> str | None:
  """Why `error` is a failed file write (an OSError, or TensorStore's
  RESOURCE_EXHAUSTED, e.g. 'No space left on device'), or None if not."""
  text = str(error)
  if "No space left on device" in text:
    return "No space left on device"
  if isinstance(error, OSError):
    return error.strerror or text
  return text.splitlines()[0] if "RESOURCE_EXHAUSTED" in text else None
