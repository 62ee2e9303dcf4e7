"""Nested dicts (configs, results, iterator states): flat keys, plain JSON."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = "/",
            keep: Callable[[str], bool] = lambda key: True) -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a/b': 1}, leaving out sub-trees failing `keep`."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if not keep(name):
      continue
    if isinstance(value, Mapping) or hasattr(value, "items"):
      flat.update(flatten(value, f"{name}{sep}", sep, keep))
    else:
      flat[name] = value
  return flat


def jsonable(value: Any) -> Any:
  """NumPy values, tuples -> plain JSON, recursively; nan, inf as strings."""
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, Mapping):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else str(value)
  return value


def tuples(value: Any) -> Any:
  """JSON lists back to tuples (the tuple fields of a config), recursively."""
  if isinstance(value, dict):
    return {k: tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(tuples(v) for v in value)
  return value
