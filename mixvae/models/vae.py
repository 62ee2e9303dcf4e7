"""The residual VAE of Section 3.4 / Fig. 3: Encoder, Sampler, Decoder, VAE.

Fig. 3 (a) Encoder, image [B, H, W, C] in [-1, 1] -> features
[B, H/2^S, W/2^S, bottleneck_channels] (S = num_stages):
  input LayerNorm over (H, W) per channel, with a learnable scale and bias of
  shape (H, W) (Keras `LayerNormalization(axis=[1, 2])`);
  3x3 conv to `width`;
  S stages of [`encoder_blocks` Id-ResBlocks, 1 Conv-ResBlock (down x2)];
  1x1 conv to `bottleneck_channels` (no normalization before it).
Fig. 3 (b) Sampler: flatten -> two separate linear Dense(d) heads, `mu` and
  `logvar` (= log sigma^2); then the reparametrization of Eq. 6,
  z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), drawn from the 'sample' RNG
  stream; the deterministic path (evaluation) returns z = mu.
Fig. 3 (c) Decoder, z [B, d] -> image [B, H, W, C]:
  Dense to (H/2^S) * (W/2^S) * bottleneck_channels, reshape;
  3x3 conv to `width`;
  S stages of [`decoder_blocks` Id-ResBlocks, 1 Conv-ResBlock-Trans (up x2)],
  the last Conv-ResBlock-Trans narrowing to C channels;
  1x1 conv (C -> C, no normalization before it); 'linear' output as in the
  reference code, or 'tanh'.

Presets (configs/celebahq.py; 256x256x3, width 128, 6 stages, 2 + 1 blocks,
bottleneck 64, d = 512):
  * `reference`: the released Keras model. Every normalization is 'affine'
    (the released BatchNorms never ran in training mode). Trainable
    parameters: encoder 5,867,584 + sampler 1,049,600 + decoder 4,040,556 =
    VAE 10,957,740, exactly the released model's minus its BatchNorms' moving
    statistics.
  * default (the paper): the same architecture with synchronized BatchNorm
    ('batch'): the same 10,957,740 trainable parameters plus 24,326 running
    statistics in 'batch_stats' (the reference's 10,982,066 in total).

The mu/logvar heads and the returned mu, logvar, z and images are float32
whatever the compute dtype, because the losses compute statistics in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mixvae.models import layers
from mixvae.models.resnet_blocks import ConvResBlock
from mixvae.models.resnet_blocks import ConvResBlockTrans
from mixvae.models.resnet_blocks import IdResBlock

# The RNG stream of the reparametrization (Eq. 6) and of `VAE.generate`:
# pass `rngs={'sample': key}` to `apply`.
SAMPLE_RNG = "sample"

INPUT_NORMS = ("layer", "none")
DECODER_OUTPUTS = ("linear", "tanh")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024


def reparametrize(mu: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """Eq. 6: z = mu + exp(logvar / 2) * eps, eps ~ N(0, I).

  Args:
    mu: posterior means [..., d].
    logvar: posterior log-variances log sigma^2, same shape as mu.
    key: a JAX PRNG key.

  Returns:
    z, same shape and dtype as mu.
  """
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  return mu + jnp.exp(0.5 * logvar) * eps


class VAEOutput(NamedTuple):
  """What `VAE.__call__` returns (all float32).

  Attributes:
    reconstruction: x_hat [B, H, W, C].
    z: the latent the reconstruction was decoded from [B, d] (a sample of
      Eq. 6, or mu on the deterministic path).
    mu: posterior means [B, d].
    logvar: posterior log-variances log sigma^2 [B, d].
  """
  reconstruction: jax.Array
  z: jax.Array
  mu: jax.Array
  logvar: jax.Array


def _stage(fn, remat: bool):
  """`fn(module, h, train)`, one encoder/decoder stage, optionally rematerialized.

  With `remat`, the stage's activations are not kept for the backward pass
  but recomputed from its input (`flax.linen.remat`, i.e. `jax.checkpoint`).
  Measured for the 256x256 model (BENCHMARKS.md): +31% FLOPs per step for
  -27% step memory, i.e. larger per-device batches.
  `train` is static (it selects Python control flow in the norms). The
  blocks are created under the calling module with the same names either
  way, so the parameters, their paths and counts are unchanged.
  """
  if not remat:
    return fn
  return nn.remat(fn, static_argnums=(2,))


class _ResidualStack(nn.Module):
  """What the encoder and the decoder share: S stages of residual blocks.

  Attributes:
    width: channels of the stem conv and of every residual block.
    num_stages: S, the number of down- (encoder) or up-sampling (decoder)
      blocks, each halving or doubling H and W.
    blocks: Id-ResBlocks before each of them.
    bottleneck_channels: channels at the bottom (the encoder's final 1x1
      conv, the decoder's reshaped Dense output).
    norm: the normalization of the residual blocks.
    activation: activation name.
    dtype: compute dtype.
    remat: rematerialize each stage in the backward pass (see `_stage`).
  """
  width: int = 128
  num_stages: int = 6
  blocks: int = 2
  bottleneck_channels: int = 64
  norm: layers.NormSpec = layers.NormSpec()
  activation: str = "relu"
  dtype: Any = jnp.float32
  remat: bool = False

  def _block_args(self) -> dict[str, Any]:
    """The keyword arguments every residual block of the stack takes."""
    return dict(norm=self.norm, activation=self.activation, dtype=self.dtype)


class Encoder(_ResidualStack):
  """Fig. 3 (a), the residual encoder (see the module docstring).

  Attributes (besides `_ResidualStack`'s):
    input_norm: 'layer' (LayerNorm over H, W per channel) or 'none'.
  """
  input_norm: str = "layer"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps images x [B, H, W, C] to features [B, H/2^S, W/2^S, bottleneck]."""
    factor = 2 ** self.num_stages
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f"the encoder needs images [B, H, W, C] with H and W divisible by "
          f"2**num_stages = {factor}; got shape {x.shape}")
    x = jnp.asarray(x, self.dtype)
    if self.input_norm == "layer":
      x = nn.LayerNorm(reduction_axes=(1, 2), feature_axes=(1, 2),
                       epsilon=self.norm.epsilon, dtype=self.dtype,
                       param_dtype=layers.PARAM_DTYPE, name="input_norm")(x)
    h = layers.conv(self.width, 3, dtype=self.dtype, name="stem_conv")(x)
    common = self._block_args()
    for s in range(self.num_stages):

      def stage(module, h, train, s=s):
        for b in range(module.blocks):
          h = IdResBlock(module.width, **common, name=f"stage{s}_id{b}")(
              h, train=train)
        return ConvResBlock(module.width, **common, name=f"stage{s}_down")(
            h, train=train)
      h = _stage(stage, self.remat)(self, h, train)
    return layers.conv(self.bottleneck_channels, 1, dtype=self.dtype,
                       name="bottleneck_conv")(h)


class Sampler(nn.Module):
  """Fig. 3 (b), the Gaussian sampler: the mu/logvar heads and Eq. 6.

  Its two Dense heads compute in float32 (they are small, and mu/logvar feed
  the KL terms).

  Attributes:
    latent_dim: d.
  """
  latent_dim: int = 512

  def setup(self):
    self.mu_head = layers.dense(self.latent_dim, dtype=jnp.float32)
    self.logvar_head = layers.dense(self.latent_dim, dtype=jnp.float32)

  def heads(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Maps encoder features [B, ...] to (mu, logvar), each [B, d] float32."""
    flat = features.reshape(features.shape[0], -1).astype(jnp.float32)
    return self.mu_head(flat), self.logvar_head(flat)

  def reparametrize(self, mu: jax.Array, logvar: jax.Array, *,
                    deterministic: bool = False) -> jax.Array:
    """Eq. 6 with a key from the 'sample' stream; returns mu if deterministic."""
    if deterministic:
      return mu
    return reparametrize(mu, logvar, self.make_rng(SAMPLE_RNG))

  def __call__(self, features: jax.Array, *, deterministic: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (z, mu, logvar), each [B, d] float32."""
    mu, logvar = self.heads(features)
    return self.reparametrize(mu, logvar, deterministic=deterministic), mu, logvar


class Decoder(_ResidualStack):
  """Fig. 3 (c), the residual decoder (see the module docstring).

  Attributes (besides `_ResidualStack`'s; `blocks` defaults to 1 here):
    resolution: output H = W.
    channels: output C.
    output: 'linear' (reference) or 'tanh'.
  """
  blocks: int = 1
  resolution: int = 256
  channels: int = 3
  output: str = "linear"

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps z [B, d] to images [B, H, W, C] (float32)."""
    bottom = self.resolution // 2 ** self.num_stages
    h = layers.dense(bottom * bottom * self.bottleneck_channels,
                     dtype=self.dtype, name="dense")(z.astype(self.dtype))
    h = h.reshape(z.shape[0], bottom, bottom, self.bottleneck_channels)
    h = layers.conv(self.width, 3, dtype=self.dtype, name="stem_conv")(h)
    common = self._block_args()
    for s in range(self.num_stages):

      def stage(module, h, train, s=s):
        for b in range(module.blocks):
          h = IdResBlock(module.width, **common, name=f"stage{s}_id{b}")(
              h, train=train)
        last = s == module.num_stages - 1
        return ConvResBlockTrans(module.channels if last else module.width,
                                 **common, name=f"stage{s}_up")(h, train=train)
      h = _stage(stage, self.remat)(self, h, train)
    h = layers.conv(self.channels, 1, dtype=self.dtype, name="output_conv")(h)
    if self.output == "tanh":
      h = jnp.tanh(h)
    return h.astype(jnp.float32)


class VAE(nn.Module):
  """The residual VAE (Fig. 3): Encoder + Sampler + Decoder.

  Parameters live under 'encoder', 'sampler' and 'decoder'. Call through
  `apply(variables, ..., method=...)`:

    mu, logvar = vae.apply(v, x, method='encode')
    z = vae.apply(v, mu, logvar, method='reparametrize', rngs={'sample': k})
    x_hat = vae.apply(v, z, method='decode')
    out = vae.apply(v, x, rngs={'sample': k})               # VAEOutput
    out, new_state = vae.apply(v, x, train=True, rngs={'sample': k},
                               mutable=['batch_stats'])       # with 'batch'
    images = vae.apply(v, 16, method='generate', rngs={'sample': k})

  `train` selects batch statistics (and their update) for 'batch'
  normalization; it changes nothing for the other normalizations.

  Attributes: see `build_vae` and the `config.model` fields.
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
    self.sampler = Sampler(latent_dim=self.latent_dim)
    self.decoder = Decoder(resolution=self.resolution, channels=self.channels,
                           blocks=self.decoder_blocks,
                           output=self.decoder_output, **common)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the images the model reads and writes."""
    return (self.resolution, self.resolution, self.channels)

  def encode(self, x: jax.Array, *, train: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """Images x [B, H, W, C] in [-1, 1] -> (mu, logvar), each [B, d] float32."""
    if tuple(x.shape[1:]) != self.image_shape:
      raise ValueError(f"the VAE was built for images [B, {self.resolution}, "
                       f"{self.resolution}, {self.channels}]; got {x.shape}")
    return self.sampler.heads(self.encoder(x, train=train))

  def reparametrize(self, mu: jax.Array, logvar: jax.Array, *,
                    deterministic: bool = False) -> jax.Array:
    """Eq. 6 from the 'sample' RNG stream; z = mu if deterministic. [B, d]."""
    return self.sampler.reparametrize(mu, logvar, deterministic=deterministic)

  def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Latents z [B, d] -> images [B, H, W, C] float32."""
    return self.decoder(z, train=train)

  def __call__(self, x: jax.Array, *, train: bool = False,
               deterministic: bool | None = None) -> VAEOutput:
    """Reconstructs x [B, H, W, C].

    Args:
      x: images in [-1, 1].
      train: batch statistics for 'batch' normalization.
      deterministic: decode z = mu instead of a sample (needs no 'sample'
        RNG). Defaults to `not train`: sample while training, posterior mean
        for evaluation.

    Returns:
      A `VAEOutput` (reconstruction, z, mu, logvar).
    """
    if deterministic is None:
      deterministic = not train
    mu, logvar = self.encode(x, train=train)
    z = self.reparametrize(mu, logvar, deterministic=deterministic)
    return VAEOutput(self.decode(z, train=train), z, mu, logvar)

  def generate(self, num_samples: int, *, train: bool = False) -> jax.Array:
    """Decodes `num_samples` z ~ N(0, I) (from the 'sample' stream).

    Returns:
      Images [num_samples, H, W, C] float32.
    """
    z = jax.random.normal(self.make_rng(SAMPLE_RNG),
                          (num_samples, self.latent_dim), jnp.float32)
    return self.decode(z, train=train)


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.model`, raising a ValueError that says what to change."""
  res = config.resolution
  _require(_is_int(res) and MIN_RESOLUTION <= res <= MAX_RESOLUTION
           and res & (res - 1) == 0,
           f"model.resolution={res!r} is not supported: use a power of two "
           f"from {MIN_RESOLUTION} to {MAX_RESOLUTION} (e.g. 256)")
  for field in ("channels", "width", "num_stages", "bottleneck_channels",
                "latent_dim", "norm_groups"):
    value = config[field]
    _require(_is_int(value) and value >= 1,
             f"model.{field}={value!r} must be a positive integer")
  for field in ("encoder_blocks", "decoder_blocks"):
    value = config[field]
    _require(_is_int(value) and value >= 0,
             f"model.{field}={value!r} must be an integer >= 0")
  _require(res // 2 ** config.num_stages >= 1,
           f"model.num_stages={config.num_stages} halves "
           f"model.resolution={res} below one pixel; use num_stages <= "
           f"{res.bit_length() - 1} (the bottom of the encoder is "
           "resolution / 2**num_stages pixels square)")
  _require(config.input_norm in INPUT_NORMS,
           f"model.input_norm={config.input_norm!r}: use one of "
           f"{list(INPUT_NORMS)}")
  _require(config.norm in layers.NORMS,
           f"model.norm={config.norm!r}: use one of {list(layers.NORMS)}")
  _require(0.0 <= config.batch_norm_momentum < 1.0,
           f"model.batch_norm_momentum={config.batch_norm_momentum!r} must be "
           "in [0, 1)")
  epsilon = layers.norm_spec_from_config(config, None).epsilon
  _require(epsilon > 0, f"model.norm_epsilon={epsilon!r} must be > 0")
  _require(config.activation in layers.ACTIVATIONS,
           f"model.activation={config.activation!r}: use one of "
           f"{sorted(layers.ACTIVATIONS)}")
  _require(config.decoder_output in DECODER_OUTPUTS,
           f"model.decoder_output={config.decoder_output!r}: use one of "
           f"{list(DECODER_OUTPUTS)}")
  _require(config.dtype in layers.DTYPES,
           f"model.dtype={config.dtype!r}: use one of {sorted(layers.DTYPES)} "
           "(the compute dtype; parameters always stay float32)")
  _require(isinstance(config.get("remat", False), bool),
           f"model.remat={config.get('remat')!r} must be True or False")


def build_vae(config: ml_collections.ConfigDict,
              axis_name: str | None = None) -> VAE:
  """Builds the VAE from `config.model` (validated first).

  Args:
    config: the `config.model` block of a config file.
    axis_name: for 'batch' normalization, the `pmap`/`shard_map` axis over
      which batch statistics are synchronized; None on one device.

  Returns:
    An unbound `VAE` module.
  """
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
      dtype=layers.compute_dtype(config.dtype),
      remat=bool(config.get("remat", False)))


def init_vae(vae: VAE, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
  """Initializes the VAE's variables ('params', and 'batch_stats' for 'batch').

  Wrap in `jax.eval_shape(functools.partial(init_vae, vae), rng)` to get the
  shapes without allocating anything.

  Args:
    vae: the module.
    rng: a PRNG key.
    batch_size: batch of the dummy input (the variables do not depend on it).

  Returns:
    The variables dict.
  """
  params_rng, sample_rng = jax.random.split(rng)
  x = jnp.zeros((batch_size, *vae.image_shape), jnp.float32)
  return vae.init({"params": params_rng, SAMPLE_RNG: sample_rng}, x,
                  train=False)
