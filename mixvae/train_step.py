"""One step of Algorithm 1 (VAE-GAN training), written per device.

  1: z ~ q(z|x)          encode, then sample (Eq. 6)
  2: x_hat ~ p(x|z)      decode
  3: r ~ p(r|x_hat)      PatchGAN realism logits
  5: gradient step on the generator loss (Eq. 22 as a loss to minimise)
  6: gradient step on the discriminator loss (Eq. 23)

`train_step` is mapped over the local devices with `jax.pmap(axis_name=...)`
(and is written with named-axis collectives only, so it also runs under
`jax.shard_map`). Every loss term is computed on the *global* batch (see
`mixvae.losses`), batch normalization statistics are synchronized over the
axis, and each example's sampling and dropout noise is keyed by (step, the
example's position in the global batch): the trajectory does not depend on
how the batch is split over devices or hosts.
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


def uses_discriminator(config: ml_collections.ConfigDict) -> bool:
  """Whether the adversarial terms are on (beta_4 > 0)."""
  return config.loss.beta_adversarial > 0


def _sum_over_devices(tree: Any, axis_name: str | None,
                      batch_like: jax.Array) -> Any:
  """Sums per-device gradients into the gradient of the global loss.

  The loss terms give each device its slice of the global gradient (see
  `mixvae.losses`), so the parameter gradient is their sum. Under
  `jax.shard_map` with varying-axes typing, gradients of replicated
  parameters arrive already summed (they are typed invariant); they are then
  left as they are.
  """
  if axis_name is None:
    return tree
  typed = axis_name in losses._varying_axes(batch_like)  # pylint: disable=protected-access

  def one(g):
    if typed and axis_name not in losses._varying_axes(g):  # pylint: disable=protected-access
      return g
    return jax.lax.psum(g, axis_name)
  return jax.tree.map(one, tree)


def _mean_over_devices(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def example_keys(step_key: jax.Array, stream: int,
                 index: jax.Array) -> jax.Array:
  """One PRNG key per example: fold (stream, global index) into the step key.

  Args:
    step_key: the key of this step.
    stream: which noise (sampling, or dropout of one discriminator pass).
    index: positions of this device's examples in the global batch, int [b].

  Returns:
    Keys [b] (raw uint32 key data [b, 2]).
  """
  key = jax.random.fold_in(step_key, stream)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def sample_latents(mu: jax.Array, logvar: jax.Array,
                   keys: jax.Array) -> jax.Array:
  """Eq. 6 with one key per example: z_i = mu_i + sigma_i * eps_i. [b, d]."""
  eps = jax.vmap(lambda k: jax.random.normal(k, mu.shape[1:], mu.dtype))(keys)
  return mu + jnp.exp(0.5 * logvar) * eps


def _generator_terms(config, mu, z, logvar, x, x_hat, fake_logits,
                     axis_name):
  """The terms of Eq. 22 (as losses) for the configured loss family."""
  lc = config.loss
  terms = {
      "l1": losses.l1_reconstruction(
          x, x_hat, axis_name=axis_name, pixel_reduction=lc.pixel_reduction,
          batch_reduction=lc.batch_reduction),
  }
  if lc.family == "mixture":
    terms["kl_global"] = losses.kl_global(
        mu, z, logvar=logvar, axis_name=axis_name,
        variance_source=lc.variance_source, eps=lc.kl_global_eps)
    terms["kl_individual"] = losses.kl_individual(
        logvar, axis_name=axis_name, batch_reduction=lc.batch_reduction)
  elif lc.family == "standard":
    terms["kl_standard"] = losses.kl_standard(
        mu, logvar, axis_name=axis_name, batch_reduction=lc.batch_reduction)
  else:
    raise ValueError(f"loss.family={lc.family!r}: use 'mixture' (the paper) "
                     "or 'standard' (Eq. 10: VAE, beta-VAE)")
  if fake_logits is not None:
    terms["generator_adversarial"] = losses.generator_adversarial(
        fake_logits, axis_name=axis_name, batch_reduction=lc.batch_reduction)
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
               discriminator: models.PatchGANDiscriminator,
               vae_tx: optax.GradientTransformation,
               disc_tx: optax.GradientTransformation,
               axis_name: str | None) -> tuple[TrainState, dict[str, Any]]:
  """One step of Algorithm 1 on this device's share of the global batch.

  Bind the keyword-only dependencies with `functools.partial`, then map:
  `jax.pmap(partial(train_step, config=..., ...), axis_name='batch',
  donate_argnums=(0,))`.

  Args:
    state: the replicated `TrainState`.
    batch: 'image' float32 [b, H, W, C] in [-1, 1] and 'index' int32 [b], the
      examples' positions in the global batch.
    config: the run config (`loss`, `training` blocks are read).
    vae: the VAE module, built with `axis_name`.
    discriminator: the PatchGAN module, built with `axis_name`.
    vae_tx: the generator optimizer.
    disc_tx: the discriminator optimizer.
    axis_name: the mapped axis, or None on one device.

  Returns:
    (new state, metrics): metrics are scalars of the global batch, the same
    on every device.
  """
  lc, tc = config.loss, config.training
  x, index = batch["image"], batch["index"]
  step_key = jax.random.fold_in(jnp.asarray(state.rng, jnp.uint32),
                                state.step)
  adversarial = uses_discriminator(config)
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
    z = sample_latents(mu, logvar, example_keys(step_key, _SAMPLE, index))
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
    terms = _generator_terms(config, mu, z, logvar, x, x_hat, fake_logits,
                             axis_name)
    if lc.inject_nan_at_step >= 0:  # For the tests of the non-finite guard.
      terms["l1"] = jnp.where(state.step == lc.inject_nan_at_step, jnp.nan,
                              terms["l1"])
    loss = sum(weights[k] * v * (adv_on if k == "generator_adversarial"
                                 else 1.0) for k, v in terms.items())
    return loss, (terms, mu, z, logvar, x_hat, new_stats)

  (g_loss, (terms, mu, z, logvar, x_hat, vae_stats)), vae_grads = (
      jax.value_and_grad(generator_loss, has_aux=True)(state.vae_params))
  vae_grads = _sum_over_devices(vae_grads, axis_name, x)
  updates, vae_opt_state = vae_tx.update(vae_grads, state.vae_opt_state,
                                         state.vae_params)
  vae_params = optax.apply_updates(state.vae_params, updates)
  decay = tc.ema_decay
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                            state.ema_params, vae_params)

  metrics = {f"loss/{k}": v for k, v in terms.items()}
  metrics["loss/generator"] = g_loss
  metrics["grad_norm/vae"] = optax.tree.norm(vae_grads)
  mu_bar, var_bar = jax.lax.stop_gradient(losses.mixture_moments(
      mu, z, logvar=logvar, axis_name=axis_name,
      variance_source=lc.variance_source))
  metrics["mixture/mu_bar_abs_mean"] = jnp.mean(jnp.abs(mu_bar))
  metrics["mixture/var_bar_mean"] = jnp.mean(var_bar)
  metrics["posterior/sigma_mean"] = _mean_over_devices(
      jnp.mean(jnp.exp(0.5 * logvar)), axis_name)
  all_finite = {k: jnp.isfinite(v) for k, v in terms.items()}
  all_finite["generator"] = jnp.isfinite(g_loss)

  disc_params, disc_stats = state.disc_params, state.disc_batch_stats
  disc_opt_state = state.disc_opt_state
  if adversarial:
    if tc.update_scheme == "alternating":
      # The discriminator sees the updated generator's output.
      x_fake = vae_forward(vae_params)[3]
    elif tc.update_scheme == "simultaneous":
      x_fake = x_hat  # The reference code: one forward pass for both.
    else:
      raise ValueError(f"training.update_scheme={tc.update_scheme!r}: use "
                       "'simultaneous' or 'alternating'")
    x_fake = jax.lax.stop_gradient(x_fake)

    def discriminator_loss(params):
      real_logits, stats = disc_apply(params, disc_stats, x, _DROPOUT_REAL)
      fake_logits, stats = disc_apply(params, stats, x_fake, _DROPOUT_FAKE)
      d_adv = losses.discriminator_adversarial(
          real_logits, fake_logits, axis_name=axis_name,
          batch_reduction=lc.batch_reduction)
      return lc.beta_adversarial * d_adv, (real_logits, fake_logits, stats)

    (d_loss, (real_logits, fake_logits, new_disc_stats)), disc_grads = (
        jax.value_and_grad(discriminator_loss, has_aux=True)(disc_params))
    disc_grads = _sum_over_devices(disc_grads, axis_name, x)

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
