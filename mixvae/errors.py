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
