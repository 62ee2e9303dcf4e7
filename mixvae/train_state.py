"""The training state of Algorithm 1: both networks, their optimizers, the EMA.

`TrainState` is a plain pytree (a flax struct): everything a checkpoint must
hold to continue a run exactly, except the data-iterator state, which is
saved beside it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mixvae import models

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: the number of completed train steps, int32 [].
    rng: the run's base PRNG key data, uint32 [2]; the key of step s and
      example i is derived from it by folding in (s, i), so it never changes.
    vae_params: encoder, sampler and decoder parameters.
    vae_batch_stats: 'batch' normalization running statistics ({} otherwise).
    vae_opt_state: the generator optimizer's state.
    disc_params: the PatchGAN's parameters.
    disc_batch_stats: its running statistics ({} unless 'batch').
    disc_opt_state: the discriminator optimizer's state.
    ema_params: exponential moving average of `vae_params` (for evaluation).
    nonfinite_step: -1, or the first step whose loss terms were not finite.
    nonfinite_terms: bitmask of the terms that were not finite at that step
      (bit k = `LOSS_TERMS[k]` of `mixvae.train_step`).
  """
  step: jax.Array
  rng: jax.Array
  vae_params: PyTree
  vae_batch_stats: PyTree
  vae_opt_state: PyTree
  disc_params: PyTree
  disc_batch_stats: PyTree
  disc_opt_state: PyTree
  ema_params: PyTree
  nonfinite_step: jax.Array
  nonfinite_terms: jax.Array


def make_schedule(config: ml_collections.ConfigDict, learning_rate: float,
                  num_train_steps: int) -> optax.Schedule:
  """The learning-rate schedule of `config.optimizer`.

  'constant' (the paper and reference code), 'cosine' (to 0 at the last
  step) or 'warmup_cosine', each after `warmup_steps` of linear warm-up.
  """
  warmup = config.warmup_steps
  if config.schedule == "constant":
    main = optax.constant_schedule(learning_rate)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(
        learning_rate, max(num_train_steps - warmup, 1))
  else:
    raise ValueError(f"optimizer.schedule={config.schedule!r}: use 'constant' "
                     "or 'cosine'")
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, learning_rate: float,
                   num_train_steps: int) -> optax.GradientTransformation:
  """Adam as in the reference code (b1 0.5, b2 0.999, eps 1e-7), optional clip."""
  adam = optax.adam(make_schedule(config, learning_rate, num_train_steps),
                    b1=config.b1, b2=config.b2, eps=config.eps)
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam)
  return adam


def make_optimizers(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation,
                               optax.GradientTransformation]:
  """The generator (VAE) and discriminator optimizers."""
  opt = config.optimizer
  return (make_optimizer(opt, opt.learning_rate, config.num_train_steps),
          make_optimizer(opt, opt.disc_learning_rate, config.num_train_steps))


def create_train_state(config: ml_collections.ConfigDict, *,
                       vae: models.VAE,
                       discriminator: models.PatchGANDiscriminator,
                       vae_tx: optax.GradientTransformation,
                       disc_tx: optax.GradientTransformation) -> TrainState:
  """Initializes a `TrainState` on the host from `config.seed`.

  Wrap in `jax.eval_shape` for the shapes alone (e.g. to restore into).
  """
  rng = jax.random.PRNGKey(config.seed)
  vae_rng, disc_rng = jax.random.split(jax.random.fold_in(rng, 1))
  vae_vars = models.init_vae(vae, vae_rng)
  disc_vars = models.init_discriminator(discriminator, disc_rng,
                                        vae.image_shape)
  vae_params = vae_vars["params"]
  disc_params = disc_vars["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.key_data(rng) if _is_typed_key(rng) else rng,
      vae_params=vae_params,
      vae_batch_stats=vae_vars.get("batch_stats", {}),
      vae_opt_state=vae_tx.init(vae_params),
      disc_params=disc_params,
      disc_batch_stats=disc_vars.get("batch_stats", {}),
      disc_opt_state=disc_tx.init(disc_params),
      ema_params=jax.tree.map(jnp.copy, vae_params),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      nonfinite_terms=jnp.zeros((), jnp.int32),
  )


def _is_typed_key(key: jax.Array) -> bool:
  return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def abstract_train_state(config: ml_collections.ConfigDict, **kwargs
                         ) -> TrainState:
  """Shapes and dtypes of the state, without allocating it."""
  return jax.eval_shape(functools.partial(create_train_state, config,
                                          **kwargs))
