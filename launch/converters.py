"""The steps the one-time weight converters (`launch/convert_*.py`) share."""

from __future__ import annotations

import json
from typing import Any

from absl import flags
import numpy as np


def define_converter_flags(source_help: str, output: str, verify_flag: str,
                           verify_default: int, verify_help: str,
                           tolerance_help: str) -> None:
  """--source (required), --output, --<verify_flag> (0: skip), --tolerance."""
  flags.DEFINE_string("source", None, source_help, required=True)
  flags.DEFINE_string("output", output, "The .npz to write.")
  flags.DEFINE_integer(verify_flag, verify_default, f"{verify_help} (0: skip).")
  flags.DEFINE_float("tolerance", 1e-4, tolerance_help)


def import_torch():
  """The `torch` module, or ImportError saying how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the converter needs PyTorch (CPU is enough): pip "
                      "install torch") from e
  return torch


def save(path: str, params: dict[str, np.ndarray]) -> None:
  """Writes a converter's .npz and prints how much it holds."""
  np.savez(path, **params)
  print(f"wrote {path}: {len(params)} arrays, "
        f"{sum(v.size for v in params.values()):,} parameters")


def check_verification(report: dict[str, Any], reference: str,
                       tolerance: float) -> None:
  """Prints a converter's report; exits unless max_rel_diff <= tolerance.

  Raises:
    SystemExit: max_rel_diff > tolerance or NaN.
  """
  print(f"verification against {reference}:", json.dumps(report, indent=2))
  if not report["max_rel_diff"] <= tolerance:
    raise SystemExit(f"difference {report['max_rel_diff']:.3g} (relative) "
                     f"exceeds --tolerance={tolerance}")
