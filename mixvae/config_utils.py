"""Helpers shared by the config files in `configs/`.

Config files follow the `get_config(arg)` convention: `--config=file.py:arg`
passes the text after the colon as `arg`, e.g. `configs/celebahq.py:reference`
or `configs/celebahq.py:beta_vae,beta=4`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any

import ml_collections


def parse_arg(arg: str | None, *, variants: tuple[str, ...] = (),
              **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config argument such as `"beta_vae,beta=4"`.

  Bare words select variants (each must be one of `variants`); `key=value`
  pairs override `defaults`, with the value cast to the default's type.

  Args:
    arg: the text after `:` in `--config=file.py:arg`, or None.
    variants: the names a bare word may take.
    **defaults: every accepted `key=value` and its default value.

  Returns:
    A locked ConfigDict with a `variant` field (the bare word, or `''`) and one
    field per default.

  Raises:
    ValueError: for an unknown variant, an unknown key, or a value that does
      not parse as the default's type.
  """
  result = dict(defaults, variant="")
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" not in part:
      if part not in variants:
        raise ValueError(
            f"unknown config variant {part!r}; choose one of {sorted(variants)}"
            " (e.g. --config=configs/celebahq.py:reference)")
      if result["variant"]:
        raise ValueError(f"config variants {result['variant']!r} and {part!r} "
                         "were both given; pass at most one")
      result["variant"] = part
      continue
    key, value = (s.strip() for s in part.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; accepted: "
                       f"{sorted(defaults)}")
    result[key] = _cast(key, value, defaults[key])
  return ml_collections.ConfigDict(result)


def _cast(key: str, value: str, default: Any) -> Any:
  if isinstance(default, str):
    return value
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"config argument {key}={value!r} is not a valid "
                     f"{type(default).__name__}") from e
  if isinstance(default, bool) or default is None:
    return parsed
  if isinstance(default, float) and isinstance(parsed, int):
    parsed = float(parsed)
  if not isinstance(parsed, type(default)):
    raise ValueError(f"config argument {key}={value!r} should be a "
                     f"{type(default).__name__}")
  return parsed


def load_sibling_config(this_file: str, name: str, arg: str | None = None
                        ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file `name`.py next to `this_file`.

  Config files are loaded by path (not as a package), so one builds on
  another through this, e.g. `configs/demo.py` on `configs/celebahq.py`.
  The returned config is unlocked so the caller can change it, then lock it.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"mixvae_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.unlock()
  return config
