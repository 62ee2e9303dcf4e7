"""Small building blocks shared by the VAE and the discriminator.

* `NormSpec` + `normalize`: the normalization factory. One config string picks
  the layer used everywhere a network normalizes ("BR" = norm, then ReLU):

  - 'batch': `flax.linen.BatchNorm`. With `axis_name` set and the model run
    under `jax.pmap` / `jax.shard_map` over that axis, the batch statistics are
    averaged across devices (synchronized BatchNorm). `train=True` normalizes
    with the batch statistics and updates the running averages in the
    'batch_stats' collection (pass `mutable=['batch_stats']`); `train=False`
    uses the running averages.
  - 'group': `flax.linen.GroupNorm` (see `group_count` for the group number).
  - 'affine': a learnable per-channel scale and shift, no statistics. This is
    what the released Keras model's BatchNorms effectively were: they were
    never called with `training=True`, so they only ever applied
    (x - 0) / sqrt(1 + eps) * gamma + beta with the initial moving statistics.
  - 'none': identity.

* `activation_fn`, `compute_dtype`: config strings to functions / dtypes.
* `conv`, `conv_transpose`, `dense`: Flax layers with the reference's kernel
  initializer (Keras' default Glorot-uniform, zero bias), float32 parameters
  and a configurable compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "group", "affine", "none")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}

# Keras' default kernel initializer, which the reference model used throughout.
KERNEL_INIT = nn.initializers.glorot_uniform()
PARAM_DTYPE = jnp.float32


def compute_dtype(name: str) -> Any:
  """Maps a config dtype string ('float32' | 'bfloat16') to a jnp dtype."""
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not supported; use one of "
                     f"{sorted(DTYPES)} (parameters always stay float32)")
  return DTYPES[name]


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """Maps a config activation string (e.g. 'relu') to a function."""
  if name not in ACTIVATIONS:
    raise ValueError(f"activation {name!r} is not supported; use one of "
                     f"{sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """Which normalization layer to build, and its settings (hashable).

  Attributes:
    kind: 'batch' | 'group' | 'affine' | 'none' (see the module docstring).
    groups: the requested number of groups for 'group' (see `group_count`).
    momentum: running-average momentum for 'batch' (Keras/Flax convention:
      new = momentum * old + (1 - momentum) * batch).
    epsilon: added to the variance for 'batch' and 'group'.
    axis_name: for 'batch', the mapped axis (`jax.pmap(axis_name=...)`) over
      which the batch statistics are averaged; None for one device.
  """
  kind: str = "batch"
  groups: int = 32
  momentum: float = 0.99
  epsilon: float = 1e-3
  axis_name: str | None = None

  def __post_init__(self):
    if self.kind not in NORMS:
      raise ValueError(f"norm {self.kind!r} is not supported; use one of "
                       f"{list(NORMS)}")


def norm_spec_from_config(config: Any, axis_name: str | None) -> NormSpec:
  """The NormSpec of a `config.model` or `config.discriminator` block.

  Reads `norm`, `norm_groups`, `batch_norm_momentum` and (if present)
  `norm_epsilon`.
  """
  return NormSpec(kind=config.norm, groups=config.norm_groups,
                  momentum=config.batch_norm_momentum,
                  epsilon=config.get("norm_epsilon", NormSpec.epsilon),
                  axis_name=axis_name)


def group_count(channels: int, groups: int) -> int:
  """The number of groups GroupNorm uses for `channels` channels.

  The largest divisor of `channels` that is at most `groups`, so a layer
  narrower than the requested group count (e.g. the 3-channel layers at the
  end of the decoder) still gets a valid GroupNorm (3 channels, 32 groups ->
  3 groups of one channel) instead of an error.

  Args:
    channels: number of channels C.
    groups: requested number of groups (>= 1).

  Returns:
    An integer g with 1 <= g <= groups and C % g == 0.
  """
  for g in range(min(groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1


class Affine(nn.Module):
  """A learnable per-channel scale and shift: y = x * scale + bias.

  The 'affine' normalization: the released model's inference-mode BatchNorm
  without its (constant) moving statistics. 2 * C parameters.

  Attributes:
    dtype: compute dtype.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Scales and shifts x [..., C] per channel; returns [..., C]."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), PARAM_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (c,), PARAM_DTYPE)
    x = jnp.asarray(x, self.dtype)
    return x * scale.astype(self.dtype) + bias.astype(self.dtype)


def normalize(x: jax.Array, spec: NormSpec, *, train: bool, dtype: Any,
              name: str) -> jax.Array:
  """Applies the normalization `spec` to x [B, H, W, C] (or [B, C]).

  Call from inside a `@nn.compact` method: the layer becomes a child of the
  calling module under `name` (nothing is created for 'none').

  Args:
    x: activations, channels last.
    spec: which normalization and its settings.
    train: 'batch' uses (and updates) batch statistics when True, the running
      averages when False. Ignored by the other kinds.
    dtype: compute dtype.
    name: the child module's name.

  Returns:
    The normalized activations, same shape as x.
  """
  if spec.kind == "batch":
    return nn.BatchNorm(
        use_running_average=not train, momentum=spec.momentum,
        epsilon=spec.epsilon, axis_name=spec.axis_name, dtype=dtype,
        param_dtype=PARAM_DTYPE, name=name)(x)
  if spec.kind == "group":
    return nn.GroupNorm(
        num_groups=group_count(x.shape[-1], spec.groups), epsilon=spec.epsilon,
        dtype=dtype, param_dtype=PARAM_DTYPE, name=name)(x)
  if spec.kind == "affine":
    return Affine(dtype=dtype, name=name)(x)
  return x  # 'none'


def norm_act(x: jax.Array, spec: NormSpec, activation: str, *, train: bool,
             dtype: Any, name: str) -> jax.Array:
  """"BR" of the pre-activation blocks: normalize, then the activation."""
  return activation_fn(activation)(
      normalize(x, spec, train=train, dtype=dtype, name=name))


def conv(features: int, kernel_size: int, *, strides: int = 1, dtype: Any,
         name: str) -> nn.Conv:
  """A 'SAME'-padded 2-D convolution with bias (Keras Conv2D defaults)."""
  return nn.Conv(features, (kernel_size, kernel_size),
                 strides=(strides, strides), padding="SAME",
                 kernel_init=KERNEL_INIT, dtype=dtype, param_dtype=PARAM_DTYPE,
                 name=name)


def conv_transpose(features: int, kernel_size: int, *, strides: int,
                   dtype: Any, name: str) -> nn.ConvTranspose:
  """A 'SAME'-padded transposed convolution: multiplies H, W by `strides`."""
  return nn.ConvTranspose(features, (kernel_size, kernel_size),
                          strides=(strides, strides), padding="SAME",
                          kernel_init=KERNEL_INIT, dtype=dtype,
                          param_dtype=PARAM_DTYPE, name=name)


def dense(features: int, *, dtype: Any, name: str | None = None) -> nn.Dense:
  """A fully connected layer with bias (Keras Dense defaults).

  Leave `name` None when assigning the layer to an attribute in `setup`.
  """
  return nn.Dense(features, kernel_init=KERNEL_INIT, dtype=dtype,
                  param_dtype=PARAM_DTYPE, name=name)
