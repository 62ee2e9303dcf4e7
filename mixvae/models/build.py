"""Config blocks -> networks -> variables ('params', and 'batch_stats' for
'batch' normalization, synchronized over `axis_name`; None: one device)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mixvae.models import layers
from mixvae.models.discriminator import PatchGANDiscriminator
from mixvae.models.discriminator import validate_discriminator_config
from mixvae.models.vae import SAMPLE_RNG
from mixvae.models.vae import VAE
from mixvae.models.vae import validate_model_config


def build_vae(config: ml_collections.ConfigDict,
              axis_name: str | None = None) -> VAE:
  """The unbound VAE of `config.model` (validated first)."""
  validate_model_config(config)
  return VAE(
      resolution=config.resolution, channels=config.channels,
      width=config.width, num_stages=config.num_stages,
      encoder_blocks=config.encoder_blocks,
      decoder_blocks=config.decoder_blocks,
      bottleneck_channels=config.bottleneck_channels,
      latent_dim=config.latent_dim, input_norm=config.input_norm,
      norm=layers.norm_spec_from_config(config, axis_name),
      activation=config.activation, decoder_output=config.decoder_output,
      dtype=layers.compute_dtype(config.dtype), remat=config.remat)


def build_discriminator(config: ml_collections.ConfigDict,
                        axis_name: str | None = None) -> PatchGANDiscriminator:
  """The unbound PatchGAN of `config.discriminator` (validated first)."""
  validate_discriminator_config(config)
  return PatchGANDiscriminator(
      features=tuple(config.features), strides=tuple(config.strides),
      kernel_size=config.kernel_size,
      norm=layers.norm_spec_from_config(config, axis_name),
      final_norm=bool(config.final_norm),
      leaky_relu_slope=float(config.leaky_relu_slope),
      dropout=float(config.dropout), dtype=layers.compute_dtype(config.dtype))


def init_vae(vae: VAE, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
  """The VAE's variables (independent of the dummy input's `batch_size`)."""
  params_rng, sample_rng = jax.random.split(rng)
  x = jnp.zeros((batch_size, *vae.image_shape), jnp.float32)
  return vae.init({"params": params_rng, SAMPLE_RNG: sample_rng}, x,
                  train=False)


def init_discriminator(discriminator: PatchGANDiscriminator, rng: jax.Array,
                       image_shape: tuple[int, int, int],
                       batch_size: int = 1) -> dict[str, Any]:
  """The discriminator's variables for images [B, *image_shape] (H, W, C)."""
  x = jnp.zeros((batch_size, *image_shape), jnp.float32)
  return discriminator.init({"params": rng}, x, train=False)


def abstract_networks(config: ml_collections.ConfigDict, batch_size: int = 2
                      ) -> tuple[Any, Any, Any, Any]:
  """(vae, disc, vae_vars, disc_vars); the variables are ShapeDtypeStructs."""
  vae = build_vae(config.model)
  disc = build_discriminator(config.discriminator)
  key = jax.random.key(0)
  vae_vars = jax.eval_shape(
      functools.partial(init_vae, vae, batch_size=batch_size), key)
  disc_vars = jax.eval_shape(
      functools.partial(init_discriminator, disc, image_shape=vae.image_shape,
                        batch_size=batch_size), key)
  return vae, disc, vae_vars, disc_vars
