"""The residual VAE of Section 3.4 / Fig. 3.

mu, logvar, z, the images and the mu/logvar heads are float32 whatever the
compute dtype (the losses need it), float64 in the float64 mode.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mixvae.config_utils import require
from mixvae.models import layers
from mixvae.models.resnet_blocks import ConvResBlock
from mixvae.models.resnet_blocks import ConvResBlockTrans
from mixvae.models.resnet_blocks import IdResBlock

# The RNG stream of Eq. 6 and `VAE.generate`: `apply(..., rngs={'sample': k})`.
SAMPLE_RNG = "sample"

INPUT_NORMS = ("layer", "none")
DECODER_OUTPUTS = ("linear", "tanh")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024


def reparametrize(mu: jax.Array, logvar: jax.Array,
                  keys: jax.Array) -> jax.Array:
  """Eq. 6: z_i = mu_i + exp(logvar_i / 2) * eps_i, eps_i ~ N(0, I).

  mu, logvar = log sigma^2: [B, d]; eps_i from keys[i] alone ([B]), so z_i
  does not depend on the batch (or device) example i sits in.
  """
  eps = jax.vmap(lambda k: jax.random.normal(k, mu.shape[1:], mu.dtype))(keys)
  return mu + jnp.exp(0.5 * logvar) * eps


class VAEOutput(NamedTuple):
  """reconstruction x_hat [B, H, W, C]; z (Eq. 6, or mu), mu, logvar [B, d]."""
  reconstruction: jax.Array
  z: jax.Array
  mu: jax.Array
  logvar: jax.Array


class _ResidualStack(nn.Module):
  """S = `num_stages` stages, each `blocks` Id-ResBlocks then a resampling.

  `remat` recomputes each stage in the backward pass (256x256: +31% FLOPs,
  -27% step memory, BENCHMARKS.md).
  """
  width: int = 128
  num_stages: int = 6
  blocks: int = 2
  bottleneck_channels: int = 64
  norm: layers.NormSpec = layers.NormSpec()
  activation: str = "relu"
  dtype: Any = jnp.float32
  remat: bool = False

  def _stages(self, h: jax.Array, train: bool,
              resample: Callable[[nn.Module, int, dict], nn.Module]
              ) -> jax.Array:
    args = dict(norm=self.norm, activation=self.activation, dtype=self.dtype)
    for s in range(self.num_stages):

      def stage(module, h, train, s=s):
        for b in range(module.blocks):
          h = IdResBlock(module.width, **args, name=f"stage{s}_id{b}")(
              h, train=train)
        return resample(module, s, args)(h, train=train)
      # `train` (argument 2) is static: it selects Python control flow.
      h = (nn.remat(stage, static_argnums=(2,)) if self.remat else stage)(
          self, h, train)
    return h


class Encoder(_ResidualStack):
  """Fig. 3 (a): images [B, H, W, C] -> [B, H/2^S, W/2^S, bottleneck_channels].

  `input_norm` 'layer': LayerNorm over (H, W) per channel, scale and bias
  [H, W] (Keras `LayerNormalization(axis=[1, 2])`); 3x3 conv to `width`;
  stages ending in a Conv-ResBlock (down x2); 1x1 conv (no normalization
  before it).
  """
  input_norm: str = "layer"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    factor = 2 ** self.num_stages
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f"the encoder needs images [B, H, W, C] with H and W divisible by "
          f"2**num_stages = {factor}; got shape {x.shape}")
    x = jnp.asarray(x, self.dtype)
    if self.input_norm == "layer":
      x = nn.LayerNorm(reduction_axes=(1, 2), feature_axes=(1, 2),
                       epsilon=self.norm.epsilon, dtype=self.dtype,
                       param_dtype=layers.param_dtype(self.dtype),
                       name="input_norm")(x)
    h = layers.conv(self.width, 3, dtype=self.dtype, name="stem_conv")(x)
    h = self._stages(h, train, lambda m, s, args: ConvResBlock(
        m.width, **args, name=f"stage{s}_down"))
    return layers.conv(self.bottleneck_channels, 1, dtype=self.dtype,
                       name="bottleneck_conv")(h)


class Sampler(nn.Module):
  """Fig. 3 (b) heads: features [B, ...] -> (mu, logvar = log sigma^2) [B, d].

  Sampling (Eq. 6) is `reparametrize`.
  """
  latent_dim: int = 512
  dtype: Any = jnp.float32  # The heads compute in layers.param_dtype(dtype).

  @nn.compact
  def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    dtype = layers.param_dtype(self.dtype)
    flat = features.reshape(features.shape[0], -1).astype(dtype)
    mu = layers.dense(self.latent_dim, dtype=dtype, name="mu_head")
    logvar = layers.dense(self.latent_dim, dtype=dtype, name="logvar_head")
    return mu(flat), logvar(flat)


class Decoder(_ResidualStack):
  """Fig. 3 (c): z [B, d] -> images [B, H, W, C], H = W = `resolution`.

  Dense to [H/2^S, W/2^S, bottleneck_channels]; 3x3 conv to `width`; stages
  ending in a Conv-ResBlock-Trans (up x2), the last one to C channels; 1x1
  conv (no normalization before it); `output` 'linear' (reference) or 'tanh'.
  """
  blocks: int = 1
  resolution: int = 256
  channels: int = 3
  output: str = "linear"

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    bottom = self.resolution // 2 ** self.num_stages
    h = layers.dense(bottom * bottom * self.bottleneck_channels,
                     dtype=self.dtype, name="dense")(z.astype(self.dtype))
    h = h.reshape(z.shape[0], bottom, bottom, self.bottleneck_channels)
    h = layers.conv(self.width, 3, dtype=self.dtype, name="stem_conv")(h)
    h = self._stages(h, train, lambda m, s, args: ConvResBlockTrans(
        m.channels if s == m.num_stages - 1 else m.width, **args,
        name=f"stage{s}_up"))
    h = layers.conv(self.channels, 1, dtype=self.dtype, name="output_conv")(h)
    if self.output == "tanh":
      h = jnp.tanh(h)
    return h.astype(layers.param_dtype(self.dtype))


class VAE(nn.Module):
  """The residual VAE (Fig. 3): params under 'encoder', 'sampler', 'decoder'.

    mu, logvar = vae.apply(v, x, method='encode')
    z = vae.apply(v, mu, logvar, method='reparametrize', rngs={'sample': k})
    x_hat = vae.apply(v, z, method='decode')
    out = vae.apply(v, x, rngs={'sample': k})               # VAEOutput
    out, new_state = vae.apply(v, x, train=True, rngs={'sample': k},
                               mutable=['batch_stats'])       # with 'batch'
    images = vae.apply(v, 16, method='generate', rngs={'sample': k})

  `train` matters only for 'batch' normalization; attributes: `config.model`.
  """
  resolution: int = 256
  channels: int = 3
  width: int = 128
  num_stages: int = 6
  encoder_blocks: int = 2
  decoder_blocks: int = 1
  bottleneck_channels: int = 64
  latent_dim: int = 512
  input_norm: str = "layer"
  norm: layers.NormSpec = layers.NormSpec()
  activation: str = "relu"
  decoder_output: str = "linear"
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    common = dict(width=self.width, num_stages=self.num_stages,
                  bottleneck_channels=self.bottleneck_channels, norm=self.norm,
                  activation=self.activation, dtype=self.dtype,
                  remat=self.remat)
    self.encoder = Encoder(blocks=self.encoder_blocks,
                           input_norm=self.input_norm, **common)
    self.sampler = Sampler(latent_dim=self.latent_dim, dtype=self.dtype)
    self.decoder = Decoder(resolution=self.resolution, channels=self.channels,
                           blocks=self.decoder_blocks,
                           output=self.decoder_output, **common)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C)."""
    return (self.resolution, self.resolution, self.channels)

  def encode(self, x: jax.Array, *, train: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """Images x [B, H, W, C] in [-1, 1] -> (mu, logvar) [B, d]."""
    if tuple(x.shape[1:]) != self.image_shape:
      raise ValueError(f"the VAE was built for images [B, {self.resolution}, "
                       f"{self.resolution}, {self.channels}]; got {x.shape}")
    return self.sampler(self.encoder(x, train=train))

  def reparametrize(self, mu: jax.Array, logvar: jax.Array, *,
                    deterministic: bool = False) -> jax.Array:
    """Eq. 6 with B keys split from the 'sample' stream; mu if deterministic."""
    if deterministic:
      return mu
    keys = jax.random.split(self.make_rng(SAMPLE_RNG), mu.shape[0])
    return reparametrize(mu, logvar, keys)

  def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """z [B, d] -> images [B, H, W, C]."""
    return self.decoder(z, train=train)

  def __call__(self, x: jax.Array, *, train: bool = False,
               deterministic: bool | None = None) -> VAEOutput:
    """Reconstructs x [B, H, W, C]; z = mu if `deterministic` (`not train`)."""
    if deterministic is None:
      deterministic = not train
    mu, logvar = self.encode(x, train=train)
    z = self.reparametrize(mu, logvar, deterministic=deterministic)
    return VAEOutput(self.decode(z, train=train), z, mu, logvar)

  def generate(self, num_samples: int, *, train: bool = False) -> jax.Array:
    """Images [N, H, W, C] of N = `num_samples` z ~ N(0, I) ('sample')."""
    z = jax.random.normal(self.make_rng(SAMPLE_RNG),
                          (num_samples, self.latent_dim),
                          layers.param_dtype(self.dtype))
    return self.decode(z, train=train)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.model`, raising a ValueError that says what to change."""
  res = config.resolution
  require(_is_int(res) and MIN_RESOLUTION <= res <= MAX_RESOLUTION
          and res & (res - 1) == 0,
          f"model.resolution={res!r} is not supported: use a power of two "
          f"from {MIN_RESOLUTION} to {MAX_RESOLUTION} (e.g. 256)")
  for field in ("channels", "width", "num_stages", "bottleneck_channels",
                "latent_dim"):
    value = config[field]
    require(_is_int(value) and value >= 1,
            f"model.{field}={value!r} must be a positive integer")
  for field in ("encoder_blocks", "decoder_blocks"):
    value = config[field]
    require(_is_int(value) and value >= 0,
            f"model.{field}={value!r} must be an integer >= 0")
  require(res // 2 ** config.num_stages >= 1,
          f"model.num_stages={config.num_stages} halves "
          f"model.resolution={res} below one pixel; use num_stages <= "
          f"{res.bit_length() - 1} (the bottom of the encoder is "
          "resolution / 2**num_stages pixels square)")
  require(config.input_norm in INPUT_NORMS,
          f"model.input_norm={config.input_norm!r}: use one of "
          f"{list(INPUT_NORMS)}")
  layers.validate_norm_config(config, "model")
  require(config.activation in layers.ACTIVATIONS,
          f"model.activation={config.activation!r}: use one of "
          f"{sorted(layers.ACTIVATIONS)}")
  require(config.decoder_output in DECODER_OUTPUTS,
          f"model.decoder_output={config.decoder_output!r}: use one of "
          f"{list(DECODER_OUTPUTS)}")
  require(config.dtype in layers.DTYPES,
          f"model.dtype={config.dtype!r}: use one of {sorted(layers.DTYPES)} "
          "(the compute dtype; parameters are float32, float64 for float64)")
  require(isinstance(config.remat, bool),
          f"model.remat={config.remat!r} must be True or False")
