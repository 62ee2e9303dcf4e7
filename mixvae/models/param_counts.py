"""Parameter counts part by part (also of `jax.eval_shape` outputs)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax

VAE_PARTS = ("encoder", "sampler", "decoder")


def count(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  """variables['params'], or `variables` if they are the params already."""
  return variables["params"] if "params" in variables else variables


def trainable_param_counts(vae_variables: Mapping[str, Any] | None = None,
                           discriminator_variables: Mapping[str, Any] | None
                           = None) -> dict[str, int]:
  """{'encoder', 'sampler', 'decoder'} and/or {'discriminator'}: n 'params'.

  Either argument may be the variables or just their 'params'.
  """
  counts = {}
  if vae_variables is not None:
    params = _params(vae_variables)
    unknown = set(params) - set(VAE_PARTS)
    if unknown:
      raise ValueError(f"VAE params have unexpected top-level parts "
                       f"{sorted(unknown)}; expected {list(VAE_PARTS)}")
    for part in VAE_PARTS:
      counts[part] = count(params.get(part, {}))
  if discriminator_variables is not None:
    counts["discriminator"] = count(_params(discriminator_variables))
  return counts


def non_trainable_count(variables: Mapping[str, Any]) -> int:
  """Scalars outside 'params' (e.g. 'batch_stats'); 0 for a bare params tree."""
  if "params" not in variables:
    return 0
  return sum(count(v) for k, v in variables.items() if k != "params")
