"""Normalizations and layers shared by the VAE and the discriminator.

Normalizations (`NormSpec.kind`):
  'batch': BatchNorm; `train=True` uses and updates the batch statistics in
    'batch_stats' (`mutable=['batch_stats']`), averaged over `axis_name`
    under `jax.pmap` / `jax.shard_map` (synchronized BatchNorm).
  'group': GroupNorm with `group_count` groups.
  'affine': y = x * scale + bias per channel: the released Keras model's
    BatchNorms, never run with `training=True`, i.e. (x - 0) / sqrt(1 + eps)
    * gamma + beta.
  'none': identity.
Layers: Keras defaults (Glorot-uniform kernels, zero bias, 'SAME' padding),
compute `dtype`, parameters (and running statistics) in
`param_dtype(dtype)`: float32, or float64 for the float64 numerics mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixvae.config_utils import require

NORMS = ("batch", "group", "affine", "none")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float64": jnp.float64}
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}

KERNEL_INIT = nn.initializers.glorot_uniform()


def compute_dtype(name: str) -> Any:
  """'float32' | 'bfloat16' | 'float64' -> the jnp dtype."""
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not supported; use one of "
                     f"{sorted(DTYPES)}")
  return DTYPES[name]


def param_dtype(dtype: Any) -> Any:
  """Parameters, outputs and statistics: float32, or float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """'relu', ... -> the function."""
  if name not in ACTIVATIONS:
    raise ValueError(f"activation {name!r} is not supported; use one of "
                     f"{sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """A normalization (hashable) of the module docstring's `kind`.

  'batch': running = momentum * running + (1 - momentum) * batch.
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
  """The NormSpec of a `config.model` or `config.discriminator` block."""
  return NormSpec(kind=config.norm, groups=config.norm_groups,
                  momentum=config.batch_norm_momentum,
                  epsilon=config.norm_epsilon, axis_name=axis_name)


def validate_norm_config(config: Any, block: str) -> None:
  """Checks the normalization fields of `config.<block>` (ValueError)."""
  groups = config.norm_groups
  require(config.norm in NORMS,
          f"{block}.norm={config.norm!r}: use one of {list(NORMS)}")
  require(isinstance(groups, int) and not isinstance(groups, bool)
          and groups >= 1,
          f"{block}.norm_groups={groups!r} must be a positive integer")
  require(0.0 <= config.batch_norm_momentum < 1.0,
          f"{block}.batch_norm_momentum={config.batch_norm_momentum!r} must "
          "be in [0, 1)")
  require(config.norm_epsilon > 0,
          f"{block}.norm_epsilon={config.norm_epsilon!r} must be > 0")


def group_count(channels: int, groups: int) -> int:
  """The largest divisor of `channels` <= `groups` (3 for 3 channels, 32)."""
  for g in range(min(groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1


class Affine(nn.Module):
  """'affine': y = x * scale + bias, scale and bias [C]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,),
                       param_dtype(self.dtype))
    bias = self.param("bias", nn.initializers.zeros, (c,),
                      param_dtype(self.dtype))
    x = jnp.asarray(x, self.dtype)
    return x * scale.astype(self.dtype) + bias.astype(self.dtype)


def normalize(x: jax.Array, spec: NormSpec, *, train: bool, dtype: Any,
              name: str) -> jax.Array:
  """`spec` on x [..., C], as child `name` of the calling compact module."""
  if spec.kind == "batch":
    return nn.BatchNorm(
        use_running_average=not train, momentum=spec.momentum,
        epsilon=spec.epsilon, axis_name=spec.axis_name, dtype=dtype,
        param_dtype=param_dtype(dtype),
        force_float32_reductions=param_dtype(dtype) == jnp.float32,
        name=name)(x)
  if spec.kind == "group":
    return nn.GroupNorm(
        num_groups=group_count(x.shape[-1], spec.groups), epsilon=spec.epsilon,
        dtype=dtype, param_dtype=param_dtype(dtype), name=name)(x)
  if spec.kind == "affine":
    return Affine(dtype=dtype, name=name)(x)
  return x  # 'none'


def norm_act(x: jax.Array, spec: NormSpec, activation: str, *, train: bool,
             dtype: Any, name: str) -> jax.Array:
  """"BR": normalize, then the activation."""
  return activation_fn(activation)(
      normalize(x, spec, train=train, dtype=dtype, name=name))


def conv(features: int, kernel_size: int, *, strides: int = 1, dtype: Any,
         name: str) -> nn.Conv:
  """Keras Conv2D."""
  return nn.Conv(features, (kernel_size, kernel_size),
                 strides=(strides, strides), padding="SAME",
                 kernel_init=KERNEL_INIT, dtype=dtype,
                 param_dtype=param_dtype(dtype), name=name)


def conv_transpose(features: int, kernel_size: int, *, strides: int,
                   dtype: Any, name: str) -> nn.ConvTranspose:
  """Keras Conv2DTranspose: H, W times `strides`."""
  return nn.ConvTranspose(features, (kernel_size, kernel_size),
                          strides=(strides, strides), padding="SAME",
                          kernel_init=KERNEL_INIT, dtype=dtype,
                          param_dtype=param_dtype(dtype), name=name)


def dense(features: int, *, dtype: Any, name: str | None = None) -> nn.Dense:
  """Keras Dense."""
  return nn.Dense(features, kernel_init=KERNEL_INIT, dtype=dtype,
                  param_dtype=param_dtype(dtype), name=name)
