"""The training state of Algorithm 1 and the two Adam optimizers."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """All a checkpoint holds to resume exactly, except the data position.

  Attributes:
    step: completed train steps, int32 [].
    rng: base PRNG key data, uint32 [2], constant; step s and example i fold
      in (s, i).
    vae_batch_stats, disc_batch_stats: running statistics ({} unless 'batch').
    disc_params, disc_opt_state: {} without a discriminator.
    ema_params: EMA of `vae_params` (for evaluation).
    nonfinite_step: -1, or the first step whose loss terms were not finite.
    nonfinite_terms: their bitmask, bit k = `train_step.LOSS_TERMS[k]`.
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
  """'constant' (the paper) or 'cosine' (to 0 at the last step), each after
  `config.warmup_steps` of linear warm-up from 0."""
  warmup = config.warmup_steps
  if config.schedule == "constant":
    main = optax.constant_schedule(learning_rate)
  else:
    main = optax.cosine_decay_schedule(
        learning_rate, max(num_train_steps - warmup, 1))
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup), main], [warmup])


def scale_by_adam_keras(b1: float, b2: float,
                        eps: float) -> optax.GradientTransformation:
  """Adam's direction in Keras's form, sqrt(1 - b2^t) / (1 - b1^t) * m /
  (sqrt(v) + eps) at step t >= 1 (m, v: the uncorrected moments), i.e. optax's
  form with eps / sqrt(1 - b2^t). State: `optax.scale_by_adam`'s."""
  adam = optax.scale_by_adam(b1, b2)

  def update(grads, state, params=None):
    del params
    _, state = adam.update(grads, state)  # Only the moments and the count.
    t = state.count.astype(jnp.float32)
    scale = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    return jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps),
                        state.mu, state.nu), state

  return optax.GradientTransformation(adam.init, update)


def make_optimizer(config: ml_collections.ConfigDict, learning_rate: float,
                   num_train_steps: int) -> optax.GradientTransformation:
  """Adam as in the reference code (b1 0.5, b2 0.999, eps 1e-7), eps in
  optax's or Keras's form (`config.eps_form`, same state); optional clipping
  by the global norm."""
  schedule = make_schedule(config, learning_rate, num_train_steps)
  adam = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps) if (
      config.eps_form == "optax") else optax.chain(
          scale_by_adam_keras(config.b1, config.b2, config.eps),
          optax.scale_by_learning_rate(schedule))
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
