"""The PatchGAN discriminator of Section 3.3.

Instead of one realism score per image, a PatchGAN gives one logit per
support region: images [B, H, W, C] -> logits r [B, H/8, W/8, 1] with the
default strides (2, 2, 2, 1, 1, 1); in general H / prod(strides).

Layers (as in the released model): for each (features, stride) a
`kernel_size` x `kernel_size` 'SAME' conv, then a normalization; all but the
last are followed by LeakyReLU(`leaky_relu_slope`) and Dropout(`dropout`).
The released model also normalizes the logits (a BatchNorm after the last
conv; quirk 2 of the reference): `final_norm=True` keeps that, False gives
plain conv logits.

Presets (configs/celebahq.py): features (128, 128, 128, 64, 64, 1), strides
(2, 2, 2, 1, 1, 1), 3x3 kernels, LeakyReLU 0.3, dropout 0.25.
  * `reference`: 'affine' normalization (the released BatchNorms never ran
    in training mode, so they were a per-channel scale and shift) and dropout
    0 (the released dropout never fired, for the same reason): 411,075
    trainable parameters (410,049 conv + 1,026 affine).
  * default (the paper): synchronized 'batch' normalization, dropout 0.25
    and `final_norm=False` (a batch norm of the one-channel logit map would
    force its mean to 0 on every pass): 411,073 trainable parameters plus
    1,024 running statistics. With `final_norm=True` the counts are the
    reference's 411,075 + 1,026 = 412,101.

Dropout draws from the 'dropout' RNG stream and is active only when
`train=True`. The logits are returned in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mixvae.models import layers

DROPOUT_RNG = "dropout"


class PatchGANDiscriminator(nn.Module):
  """PatchGAN: images [B, H, W, C] -> realism logits [B, H/s, W/s, 1].

  s = prod(strides) (8 by default). See the module docstring.

  Attributes:
    features: output channels of each conv; the last must be 1.
    strides: stride of each conv (same length as `features`).
    kernel_size: square kernel size of every conv.
    norm: the normalization after each conv.
    final_norm: also normalize the logits (the reference does).
    leaky_relu_slope: negative slope of the LeakyReLUs.
    dropout: dropout rate after each hidden layer.
    dtype: compute dtype (parameters are float32; logits float32).
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
    """Scores images x [B, H, W, C] in [-1, 1].

    Args:
      x: real or generated images.
      train: batch statistics for 'batch' normalization, and dropout (needs
        `rngs={'dropout': key}`, or `example_keys`).
      example_keys: optional PRNG keys [B], one per example; dropout masks
        are then drawn per example from them instead of from the 'dropout'
        stream, so they do not depend on how a batch is split over devices.

    Returns:
      Logits [B, H/s, W/s, features[-1]] float32 (sigmoid = realism).
    """
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
        if self.dropout > 0 and example_keys is not None:
          if train:
            h = example_dropout(h, self.dropout, example_keys, layer=i)
        elif self.dropout > 0:
          h = nn.Dropout(self.dropout, deterministic=not train,
                         rng_collection=DROPOUT_RNG, name=f"dropout{i}")(h)
    return h.astype(jnp.float32)


def example_dropout(h: jax.Array, rate: float, example_keys: jax.Array, *,
                    layer: int) -> jax.Array:
  """Inverted dropout with one key per example (and per layer).

  Args:
    h: activations [B, ...].
    rate: the probability of dropping a unit.
    example_keys: PRNG keys [B].
    layer: folded into each key, so layers draw independent masks.

  Returns:
    h with dropped units zeroed and the kept ones scaled by 1 / (1 - rate).
  """
  def mask(key):
    return jax.random.bernoulli(jax.random.fold_in(key, layer), 1.0 - rate,
                                h.shape[1:])
  keep = jax.vmap(mask)(example_keys)
  return jnp.where(keep, h / (1.0 - rate), 0).astype(h.dtype)


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def validate_discriminator_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.discriminator`, raising a ValueError saying what to fix."""
  features, strides = tuple(config.features), tuple(config.strides)
  _require(len(features) >= 1 and len(features) == len(strides),
           f"discriminator.features={features} and discriminator.strides="
           f"{strides} must be non-empty and of the same length (one stride "
           "per conv)")
  _require(all(isinstance(f, int) and f >= 1 for f in features),
           f"discriminator.features={features} must be positive integers")
  _require(features[-1] == 1,
           f"discriminator.features={features} must end with 1: the PatchGAN "
           "gives one realism logit per support region")
  _require(all(isinstance(s, int) and s >= 1 for s in strides),
           f"discriminator.strides={strides} must be positive integers")
  _require(isinstance(config.kernel_size, int) and config.kernel_size >= 1,
           f"discriminator.kernel_size={config.kernel_size!r} must be a "
           "positive integer")
  _require(config.norm in layers.NORMS,
           f"discriminator.norm={config.norm!r}: use one of "
           f"{list(layers.NORMS)}")
  _require(isinstance(config.norm_groups, int) and config.norm_groups >= 1,
           f"discriminator.norm_groups={config.norm_groups!r} must be a "
           "positive integer")
  _require(0.0 <= config.batch_norm_momentum < 1.0,
           "discriminator.batch_norm_momentum="
           f"{config.batch_norm_momentum!r} must be in [0, 1)")
  epsilon = layers.norm_spec_from_config(config, None).epsilon
  _require(epsilon > 0, f"discriminator.norm_epsilon={epsilon!r} must be > 0")
  _require(config.leaky_relu_slope >= 0,
           f"discriminator.leaky_relu_slope={config.leaky_relu_slope!r} must "
           "be >= 0")
  _require(0.0 <= config.dropout < 1.0,
           f"discriminator.dropout={config.dropout!r} must be in [0, 1)")
  _require(config.dtype in layers.DTYPES,
           f"discriminator.dtype={config.dtype!r}: use one of "
           f"{sorted(layers.DTYPES)} (parameters always stay float32)")


def build_discriminator(config: ml_collections.ConfigDict,
                        axis_name: str | None = None) -> PatchGANDiscriminator:
  """Builds the PatchGAN from `config.discriminator` (validated first).

  Args:
    config: the `config.discriminator` block of a config file.
    axis_name: for 'batch' normalization, the mapped axis over which batch
      statistics are synchronized; None on one device.

  Returns:
    An unbound `PatchGANDiscriminator`.
  """
  validate_discriminator_config(config)
  return PatchGANDiscriminator(
      features=tuple(config.features), strides=tuple(config.strides),
      kernel_size=config.kernel_size,
      norm=layers.norm_spec_from_config(config, axis_name),
      final_norm=bool(config.final_norm),
      leaky_relu_slope=float(config.leaky_relu_slope),
      dropout=float(config.dropout), dtype=layers.compute_dtype(config.dtype))


def init_discriminator(discriminator: PatchGANDiscriminator, rng: jax.Array,
                       image_shape: tuple[int, int, int],
                       batch_size: int = 1) -> dict[str, Any]:
  """Initializes the discriminator's variables for images [B, *image_shape].

  Args:
    discriminator: the module.
    rng: a PRNG key.
    image_shape: (H, W, C).
    batch_size: batch of the dummy input (the variables do not depend on it).

  Returns:
    The variables dict ('params', and 'batch_stats' for 'batch').
  """
  x = jnp.zeros((batch_size, *image_shape), jnp.float32)
  return discriminator.init({"params": rng}, x, train=False)
