"""One step of Algorithm 1 (VAE-GAN training), written per device.

  1: z ~ q(z|x)          encode, then sample (Eq. 6)
  2: x_hat ~ p(x|z)      decode
  3: r ~ p(r|x_hat)      PatchGAN realism logits
  5: gradient step on the generator loss (Eq. 22 as a loss to minimise)
  6: gradient step on the discriminator loss (Eq. 23)

Named-axis collectives only (`jax.pmap`, or `jax.shard_map` with
`mapping='shard_map'`). Loss terms are of the global batch, BatchNorm
statistics are synchronized, and each example's noise is keyed by (step, its
position in the global batch): the trajectory does not depend on the layout.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mixvae import losses
from mixvae import models
from mixvae.train_state import TrainState

# The terms whose finiteness is tracked (bit k of TrainState.nonfinite_terms).
LOSS_TERMS = ("kl_global", "kl_individual", "kl_standard", "l1",
              "generator_adversarial", "generator", "discriminator")

# Streams folded into the step key, so each draws independent noise.
_SAMPLE, _DROPOUT_G, _DROPOUT_REAL, _DROPOUT_FAKE = range(4)


def _sum_over_devices(grads: Any, axis_name: str | None, mapping: str) -> Any:
  """Global-loss gradient from each device's slice (shard_map: summed)."""
  if axis_name is None or mapping == "shard_map":
    return grads
  return jax.lax.psum(grads, axis_name)


def _mean_over_devices(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def example_keys(step_key: jax.Array, stream: int,
                 index: jax.Array) -> jax.Array:
  """Keys [b]: (stream, global index [b]) folded into the step key."""
  key = jax.random.fold_in(step_key, stream)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def _generator_terms(lc, mu, z, logvar, x, x_hat, fake_logits, mapped):
  """The terms of Eq. 22 (as losses) of the loss family `lc.family`."""
  per_example = dict(mapped, batch_reduction=lc.batch_reduction)
  terms = {"l1": losses.l1_reconstruction(
      x, x_hat, pixel_reduction=lc.pixel_reduction, **per_example)}
  if lc.family == "mixture":
    terms["kl_global"] = losses.kl_global(
        mu, z, logvar=logvar, variance_source=lc.variance_source,
        eps=lc.kl_global_eps, **mapped)
    terms["kl_individual"] = losses.kl_individual(logvar, **per_example)
  else:
    terms["kl_standard"] = losses.kl_standard(mu, logvar, **per_example)
  if fake_logits is not None:
    terms["generator_adversarial"] = losses.generator_adversarial(
        fake_logits, **per_example)
  return terms


def generator_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
  """beta_1..beta_4 of Eq. 22 (and beta of Eq. 10) by term name."""
  lc = config.loss
  return {"kl_global": lc.beta_kl_global,
          "kl_individual": lc.beta_kl_individual,
          "kl_standard": lc.beta,
          "l1": lc.beta_reconstruction,
          "generator_adversarial": lc.beta_adversarial}


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               config: ml_collections.ConfigDict,
               vae: models.VAE,
               discriminator: models.PatchGANDiscriminator | None,
               vae_tx: optax.GradientTransformation,
               disc_tx: optax.GradientTransformation | None,
               axis_name: str | None,
               mapping: str = "pmap") -> tuple[TrainState, dict[str, Any]]:
  """One step of Algorithm 1 on this device's share of the global batch.

  Bind the keyword-only arguments with `functools.partial`, then map.

  Args:
    batch: 'image' [b, H, W, C] in [-1, 1] and 'index' int32 [b], the
      examples' positions in the global batch.
    vae, discriminator: built with `axis_name`; discriminator None for the
      baselines.
    mapping: 'pmap' or 'shard_map' (see `mixvae.losses`).

  Returns:
    (new state, metrics): global-batch scalars, the same on every device.
  """
  lc, tc = config.loss, config.training
  mapped = dict(axis_name=axis_name, mapping=mapping)
  x, index = batch["image"], batch["index"]
  step_key = jax.random.fold_in(jnp.asarray(state.rng, jnp.uint32),
                                state.step)
  adversarial = discriminator is not None
  adv_on = (state.step >= lc.disc_start_step).astype(jnp.float32)
  weights = generator_weights(config)

  def disc_apply(params, batch_stats, images, stream):
    variables = {"params": params, "batch_stats": batch_stats}
    logits, updates = discriminator.apply(
        variables, images, train=True,
        example_keys=example_keys(step_key, stream, index),
        mutable=["batch_stats"])
    return logits, updates.get("batch_stats", batch_stats)

  def vae_forward(params):
    variables = {"params": params, "batch_stats": state.vae_batch_stats}
    (mu, logvar), updates = vae.apply(variables, x, train=True,
                                      method="encode", mutable=["batch_stats"])
    z = models.reparametrize(mu, logvar,
                           example_keys(step_key, _SAMPLE, index))
    variables = {"params": params,
                 "batch_stats": updates.get("batch_stats", {})}
    x_hat, updates = vae.apply(variables, z, train=True, method="decode",
                               mutable=["batch_stats"])
    return mu, logvar, z, x_hat, updates.get("batch_stats", {})

  def generator_loss(params):
    mu, logvar, z, x_hat, new_stats = vae_forward(params)
    fake_logits = None
    if adversarial:
      fake_logits, _ = disc_apply(state.disc_params, state.disc_batch_stats,
                                  x_hat, _DROPOUT_G)
    terms = _generator_terms(lc, mu, z, logvar, x, x_hat, fake_logits,
                             mapped)
    loss = sum(weights[k] * v * (adv_on if k == "generator_adversarial"
                                 else 1.0) for k, v in terms.items())
    return loss, (terms, mu, z, logvar, x_hat, new_stats)

  (g_loss, (terms, mu, z, logvar, x_hat, vae_stats)), vae_grads = (
      jax.value_and_grad(generator_loss, has_aux=True)(state.vae_params))
  vae_grads = _sum_over_devices(vae_grads, axis_name, mapping)
  updates, vae_opt_state = vae_tx.update(vae_grads, state.vae_opt_state,
                                         state.vae_params)
  vae_params = optax.apply_updates(state.vae_params, updates)
  decay = tc.ema_decay  # 0: the EMA is the raw weights, exactly.
  ema_params = vae_params if not decay else jax.tree.map(
      lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, vae_params)

  metrics = {f"loss/{k}": v for k, v in terms.items()}
  metrics["loss/generator"] = g_loss
  metrics["grad_norm/vae"] = optax.tree.norm(vae_grads)
  mu_bar, var_bar = jax.lax.stop_gradient(losses.mixture_moments(
      mu, z, logvar=logvar, variance_source=lc.variance_source, **mapped))
  metrics["mixture/mu_bar_abs_mean"] = jnp.mean(jnp.abs(mu_bar))
  metrics["mixture/var_bar_mean"] = jnp.mean(var_bar)
  metrics["posterior/sigma_mean"] = _mean_over_devices(
      jnp.mean(jnp.exp(0.5 * logvar)), axis_name)
  all_finite = {k: jnp.isfinite(v) for k, v in terms.items()}
  all_finite["generator"] = jnp.isfinite(g_loss)

  disc_params, disc_stats = state.disc_params, state.disc_batch_stats
  disc_opt_state = state.disc_opt_state
  if adversarial:
    # 'alternating': the discriminator sees the updated generator's output;
    # 'simultaneous' (the reference code): one forward pass for both.
    x_fake = jax.lax.stop_gradient(vae_forward(vae_params)[3] if (
        tc.update_scheme == "alternating") else x_hat)

    def discriminator_loss(params):
      real_logits, stats = disc_apply(params, disc_stats, x, _DROPOUT_REAL)
      fake_logits, stats = disc_apply(params, stats, x_fake, _DROPOUT_FAKE)
      d_adv = losses.discriminator_adversarial(
          real_logits, fake_logits, batch_reduction=lc.batch_reduction,
          **mapped)
      return lc.beta_adversarial * d_adv, (real_logits, fake_logits, stats)

    (d_loss, (real_logits, fake_logits, new_disc_stats)), disc_grads = (
        jax.value_and_grad(discriminator_loss, has_aux=True)(disc_params))
    disc_grads = _sum_over_devices(disc_grads, axis_name, mapping)

    def update_disc(_):
      upd, opt = disc_tx.update(disc_grads, disc_opt_state, disc_params)
      return optax.apply_updates(disc_params, upd), new_disc_stats, opt

    # Before disc_start_step the discriminator is left untouched (its Adam
    # moments and step count too).
    disc_params, disc_stats, disc_opt_state = jax.lax.cond(
        adv_on > 0, update_disc,
        lambda _: (disc_params, disc_stats, disc_opt_state), None)
    metrics["loss/discriminator"] = d_loss
    metrics["grad_norm/disc"] = optax.tree.norm(disc_grads)
    metrics["disc/real_logit_mean"] = _mean_over_devices(
        jnp.mean(real_logits), axis_name)
    metrics["disc/fake_logit_mean"] = _mean_over_devices(
        jnp.mean(fake_logits), axis_name)
    all_finite["discriminator"] = jnp.isfinite(d_loss)

  bad = sum(jnp.where(all_finite[k], 0, 1 << LOSS_TERMS.index(k))
            for k in all_finite).astype(jnp.int32)
  first_bad = (state.nonfinite_step < 0) & (bad != 0)
  new_state = state.replace(
      step=state.step + 1,
      vae_params=vae_params, vae_batch_stats=vae_stats,
      vae_opt_state=vae_opt_state, ema_params=ema_params,
      disc_params=disc_params, disc_batch_stats=disc_stats,
      disc_opt_state=disc_opt_state,
      nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
      nonfinite_terms=jnp.where(first_bad, bad, state.nonfinite_terms))
  return new_state, metrics


def nonfinite_message(step: int, terms_mask: int) -> str:
  """Names the step and the loss terms that were not finite."""
  names = [k for i, k in enumerate(LOSS_TERMS) if terms_mask & (1 << i)]
  return (f"non-finite loss at step {step} in term(s) {', '.join(names)}; "
          "stopping. The last checkpoint holds the last good state: lower the "
          "learning rate or check the data and restart from it.")
