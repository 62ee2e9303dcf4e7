"""Local weight files of the evaluation networks (Inception-v3, LPIPS).

Nothing is downloaded at run time: each network reads a flat `.npz`
({name: array}) that a one-time converter wrote. A network module describes
its file with a `WeightsFile`: `resolve` picks the file (a flag, else an
environment variable), `load` reads it and checks every key and shape
against the network, and `skip` is what the evaluation records (and logs)
when the metric cannot run. `save` is the converters' writer.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import logging
import numpy as np


def resolve_path(path: str | None, env_var: str) -> str | None:
  """`path` if given, else $`env_var`, else None."""
  return path or os.environ.get(env_var) or None


def load_npz(path: str, expected: dict[str, tuple[int, ...]], *, what: str,
             how_to_get: str) -> dict[str, np.ndarray]:
  """Reads a converter's .npz as float32, checking every key and shape.

  Args:
    path: the .npz file.
    expected: {key: shape} of the network's parameters.
    what: what the file should be, for messages (e.g. 'an FID Inception-v3
      .npz from launch/convert_inception.py').
    how_to_get: how a user makes the file (appended to the not-found error).

  Raises:
    FileNotFoundError: no such file.
    ValueError: keys or shapes do not match `expected`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights not found: {path}. {how_to_get}")
  with np.load(path) as data:
    params = {k: np.asarray(data[k], np.float32) for k in data.files}
  missing = sorted(set(expected) - set(params))
  extra = sorted(set(params) - set(expected))
  wrong = sorted(k for k in set(expected) & set(params)
                 if params[k].shape != tuple(expected[k]))
  if missing or extra or wrong:
    raise ValueError(
        f"{path} is not {what}: {len(missing)} missing keys {missing[:3]}, "
        f"{len(extra)} unexpected {extra[:3]}, {len(wrong)} with other "
        f"shapes {wrong[:3]}")
  return params


def skip_message(metric: str, reason: str, how_to_get: str) -> str:
  """Logs and returns '<metric> skipped: <reason>. <how_to_get>.'"""
  message = f"{metric} skipped: {reason}. {how_to_get}."
  logging.warning(message)
  return message


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  """The local weights file of one evaluation network.

  Attributes:
    metric: what it computes, for messages ('FID/KID', 'LPIPS').
    env_var: the environment variable that names the file when no flag does.
    what: what the file is, for errors ('an LPIPS-VGG16 .npz from ...').
    how_to_get: the one-time commands that make it.
    expected_shapes: () -> {key: shape} of the network's parameters.
  """
  metric: str
  env_var: str
  what: str
  how_to_get: str
  expected_shapes: Callable[[], dict[str, tuple[int, ...]]]

  def resolve(self, path: str | None) -> str | None:
    return resolve_path(path, self.env_var)

  def load(self, path: str) -> dict[str, np.ndarray]:
    return load_npz(path, self.expected_shapes(), what=self.what,
                    how_to_get=self.how_to_get)

  def skip(self, reason: str) -> str:
    return skip_message(self.metric, reason, self.how_to_get)


def save(path: str, params: dict[str, np.ndarray]) -> None:
  """Writes a converter's .npz and says how much it holds."""
  np.savez(path, **params)
  print(f"wrote {path}: {len(params)} arrays, "
        f"{sum(v.size for v in params.values()):,} parameters")
