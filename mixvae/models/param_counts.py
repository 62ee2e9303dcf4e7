"""Counting parameters of the models, part by part (works on `jax.eval_shape`
outputs, so nothing needs to be allocated)."""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import ml_collections

from mixvae.models import discriminator as discriminator_lib
from mixvae.models import vae as vae_lib

VAE_PARTS = ("encoder", "sampler", "decoder")


def abstract_networks(config: ml_collections.ConfigDict, batch_size: int = 2
                      ) -> tuple[Any, Any, Any, Any]:
  """(vae, discriminator, vae_variables, disc_variables) of a config.

  The variables are `jax.eval_shape` outputs (ShapeDtypeStructs): nothing is
  allocated, so this works for the full-size models on any machine.

  Args:
    config: a full config (its `model` and `discriminator`).
    batch_size: the batch of the abstract inputs of the initialization.
  """
  vae = vae_lib.build_vae(config.model)
  disc = discriminator_lib.build_discriminator(config.discriminator)
  key = jax.random.key(0)
  vae_vars = jax.eval_shape(
      functools.partial(vae_lib.init_vae, vae, batch_size=batch_size), key)
  disc_vars = jax.eval_shape(
      functools.partial(discriminator_lib.init_discriminator, disc,
                        image_shape=vae.image_shape, batch_size=batch_size),
      key)
  return vae, disc, vae_vars, disc_vars


def count(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  """The 'params' collection of a variables dict (or the params themselves)."""
  return variables["params"] if "params" in variables else variables


def trainable_param_counts(vae_variables: Mapping[str, Any] | None = None,
                           discriminator_variables: Mapping[str, Any] | None
                           = None) -> dict[str, int]:
  """Trainable parameters per part: encoder, sampler, decoder, discriminator.

  Only the 'params' collection counts; 'batch_stats' (running averages of
  'batch' normalization) are not trainable.

  Args:
    vae_variables: the VAE's variables (or its 'params'), e.g. from
      `jax.eval_shape(functools.partial(models.init_vae, vae), key)`.
    discriminator_variables: the discriminator's variables (or 'params').

  Returns:
    {'encoder': n, 'sampler': n, 'decoder': n} for the VAE and/or
    {'discriminator': n}, in that order.
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
