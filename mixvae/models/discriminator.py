"""The PatchGAN discriminator of Section 3.3: one logit per support region."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mixvae.config_utils import require
from mixvae.models import layers

DROPOUT_RNG = "dropout"


class PatchGANDiscriminator(nn.Module):
  """PatchGAN: images [B, H, W, C] -> logits [B, H/s, W/s, 1] float32.

  s = prod(`strides`). Per (features, stride): a `kernel_size`^2 'SAME' conv
  and `norm`; all but the last then LeakyReLU(`leaky_relu_slope`) and
  Dropout(`dropout`, only when `train`). `final_norm` also normalizes the
  logits, as the released model does (quirk 2 of the reference; the default
  drops it, as 'batch' would force the logit map's mean to 0 on every pass).
  """
  features: tuple[int, ...] = (128, 128, 128, 64, 64, 1)
  strides: tuple[int, ...] = (2, 2, 2, 1, 1, 1)
  kernel_size: int = 3
  norm: layers.NormSpec = layers.NormSpec()
  final_norm: bool = True
  leaky_relu_slope: float = 0.3
  dropout: float = 0.25
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False,
               example_keys: jax.Array | None = None) -> jax.Array:
    """Scores x in [-1, 1]; sigmoid(logit) = realism. Dropout: the 'dropout'
    stream, or per example from `example_keys` [B] (layout-independent)."""
    if x.ndim != 4:
      raise ValueError(f"the discriminator needs images [B, H, W, C]; got "
                       f"shape {x.shape}")
    h = jnp.asarray(x, self.dtype)
    last = len(self.features) - 1
    for i, (f, s) in enumerate(zip(self.features, self.strides)):
      h = layers.conv(f, self.kernel_size, strides=s, dtype=self.dtype,
                      name=f"conv{i}")(h)
      if i < last or self.final_norm:
        h = layers.normalize(h, self.norm, train=train, dtype=self.dtype,
                             name=f"norm{i}")
      if i < last:
        h = nn.leaky_relu(h, negative_slope=self.leaky_relu_slope)
        if example_keys is None:  # nn.Dropout is the identity at rate 0.
          h = nn.Dropout(self.dropout, deterministic=not train,
                         rng_collection=DROPOUT_RNG, name=f"dropout{i}")(h)
        elif train and self.dropout > 0:
          h = example_dropout(h, self.dropout, example_keys, layer=i)
    return h.astype(layers.param_dtype(self.dtype))


def example_dropout(h: jax.Array, rate: float, example_keys: jax.Array, *,
                    layer: int) -> jax.Array:
  """Inverted dropout of h [B, ...]; mask i from fold_in(keys[i], layer)."""
  def mask(key):
    return jax.random.bernoulli(jax.random.fold_in(key, layer), 1.0 - rate,
                                h.shape[1:])
  keep = jax.vmap(mask)(example_keys)
  return jnp.where(keep, h / (1.0 - rate), 0).astype(h.dtype)


def validate_discriminator_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.discriminator`, raising a ValueError saying what to fix."""
  features, strides = tuple(config.features), tuple(config.strides)
  require(len(features) >= 1 and len(features) == len(strides),
          f"discriminator.features={features} and discriminator.strides="
          f"{strides} must be non-empty and of the same length (one stride "
          "per conv)")
  require(all(isinstance(f, int) and f >= 1 for f in features),
          f"discriminator.features={features} must be positive integers")
  require(features[-1] == 1,
          f"discriminator.features={features} must end with 1: the PatchGAN "
          "gives one realism logit per support region")
  require(all(isinstance(s, int) and s >= 1 for s in strides),
          f"discriminator.strides={strides} must be positive integers")
  require(isinstance(config.kernel_size, int) and config.kernel_size >= 1,
          f"discriminator.kernel_size={config.kernel_size!r} must be a "
          "positive integer")
  layers.validate_norm_config(config, "discriminator")
  require(config.leaky_relu_slope >= 0,
          f"discriminator.leaky_relu_slope={config.leaky_relu_slope!r} must "
          "be >= 0")
  require(0.0 <= config.dropout < 1.0,
          f"discriminator.dropout={config.dropout!r} must be in [0, 1)")
  require(config.dtype in layers.DTYPES,
          f"discriminator.dtype={config.dtype!r}: use one of "
          f"{sorted(layers.DTYPES)} (parameters are float32, float64 for "
          "float64)")
