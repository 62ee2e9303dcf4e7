"""Local flat .npz weights ({name: array}) of Inception-v3 and LPIPS."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable
import zipfile

from absl import logging
import numpy as np

from mixvae import errors


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  """The local weights file of one evaluation network.

  Attributes:
    metric: what the network computes, for messages ('FID/KID', 'LPIPS').
    what: what the file is, for errors ('an LPIPS-VGG16 .npz from ...').
    how_to_get: the one-time commands that make the file.
    expected_shapes: () -> {key: shape} of the network's parameters.
  """
  metric: str
  env_var: str
  what: str
  how_to_get: str
  expected_shapes: Callable[[], dict[str, tuple[int, ...]]]

  def resolve(self, path: str | None) -> str | None:
    """`path` if given, else $`env_var`, else None."""
    return path or os.environ.get(self.env_var) or None

  def load(self, path: str) -> dict[str, np.ndarray]:
    """Reads the .npz as float32 {key: array}, checking every key and shape.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an .npz, or keys or shapes not `expected_shapes()`.
    """
    if not os.path.isfile(path):
      raise errors.MissingError(
          f"{self.metric} weights not found: {path}. {self.how_to_get}")
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile)
    try:
      data = np.load(path, allow_pickle=False)
      if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("it holds one array, not named arrays")
      with data:
        params = {k: np.asarray(data[k], np.float32) for k in data.files}
    except unreadable as e:
      reason = ("it is not a NumPy .npz: pass the converter's output, not "
                "its source" if "pickle" in str(e) else str(e))
      raise errors.ConfigError(f"{path} is not {self.what} ({reason}). "
                               f"{self.how_to_get}") from None
    expected = self.expected_shapes()
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    wrong = sorted(k for k in set(expected) & set(params)
                   if params[k].shape != tuple(expected[k]))
    if missing or extra or wrong:
      raise errors.ConfigError(
          f"{path} is not {self.what}: {len(missing)} missing keys "
          f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}, "
          f"{len(wrong)} with other shapes {wrong[:3]}")
    return params

  def skip(self, reason: str) -> str:
    """Logs and returns '<metric> skipped: <reason>. <how_to_get>.'"""
    message = f"{self.metric} skipped: {reason}. {self.how_to_get}."
    logging.warning(message)
    return message
