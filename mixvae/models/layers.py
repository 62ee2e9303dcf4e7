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
import functools
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


_NHWC = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  """A stride-1 convolution whose kernel gradient is kh matrix products.

  XLA's CPU backend computes the kernel gradient as a convolution whose
  window spans the activations, at about a fifth of the forward
  convolution's FLOP rate; matrix products run at the forward rate or
  better (BENCHMARKS.md). The values and the input gradient are XLA's.

  Args:
    x: [B, H, W, Cin]; kernel: [kh, kw, Cin, Cout];
    padding: ((top, bottom), (left, right)).
  Returns:
    [B, Ho, Wo, Cout], Ho = H + top + bottom - kh + 1 (likewise Wo).
  """
  return _xla_conv(x, kernel, padding)


def _tap_conv_fwd(x, kernel, padding):
  return _xla_conv(x, kernel, padding), (x, kernel)


# `tap_conv`'s kernel gradient is summed over chunks of the batch whose input
# is at most this many bytes (at least one example), one chunk per iteration
# of a `lax.fori_loop`. A chunk's pads and shifted copies are then small
# buffers that malloc keeps and the loop reuses, where batch-sized ones are
# fresh pages, faulted in at every step (BENCHMARKS.md).
KERNEL_GRAD_CHUNK_BYTES = 2 * 2**20


def _kernel_grad(x, dy, kh, padding, acc_dtype):
  """`tap_conv(x, ., padding)`'s kernel gradient for x [B, H, W, Cin] and
  dY [B, Ho, Wo, Cout]: dK [kh, Cin, kw * Cout] in `acc_dtype`."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  b, _, wp, cin = xp.shape
  _, ho, wo, cout = dy.shape
  kw = wp - wo + 1
  # On pixel rows of width wp: X_i [b*ho*wp, Cin] is xp[:, i:i + ho]
  # flattened, D [b*ho*wp, Cout] is dY padded on the right to width wp, and
  # D moved down j matrix rows (zeros in) holds at pixel (h, w) dY's pixel
  # (h, w - j), zero for w < j (what wraps in is D's zero padding). So
  # dK[i, j] = X_i^T (D moved by j): one product per kernel row i, the kw
  # moved copies of D side by side.
  rows = b * ho * wp
  d = jnp.pad(dy, ((0, 0), (0, 0), (0, wp - wo), (0, 0))).reshape(rows, cout)
  shifted = jnp.concatenate(
      [jnp.pad(d[:rows - j], ((j, 0), (0, 0))) for j in range(kw)], axis=1)
  return jnp.stack([
      jnp.matmul(xp[:, i:i + ho].reshape(rows, cin).T, shifted,
                 preferred_element_type=acc_dtype) for i in range(kh)])


def _tap_conv_bwd(padding, residuals, dy):
  x, kernel = residuals
  (dx,) = jax.vjp(lambda x: _xla_conv(x, kernel, padding), x)[1](dy)
  kh, kw, cin, cout = kernel.shape
  b = x.shape[0]
  n = max([n for n in range(1, b + 1) if b % n == 0
           and n * x[0].nbytes <= KERNEL_GRAD_CHUNK_BYTES], default=1)
  acc_dtype = param_dtype(x.dtype)

  def add_chunk(c, dk):
    chunk = lambda a: jax.lax.dynamic_slice_in_dim(a, c * n, n)  # pylint: disable=unnecessary-lambda-assignment
    return dk + _kernel_grad(chunk(x), chunk(dy), kh, padding, acc_dtype)

  dk = jax.lax.fori_loop(0, b // n, add_chunk,
                         jnp.zeros((kh, cin, kw * cout), acc_dtype))
  dk = dk.reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3)
  return dx, dk.astype(kernel.dtype)


tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


# On CPUs, convolutions of at least this many FLOPs take `tap_conv` and
# `phase_conv_transpose`; smaller ones keep XLA's formulations, as fast at
# that size and quicker to compile (BENCHMARKS.md). cuDNN and the TPU compiler
# need neither, so other backends always keep XLA's.
CPU_REFORMULATION_MIN_FLOPS = 1e8


def _reformulate(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether a convolution of x [B, H, W, Cin] with kernel [kh, kw, Cin,
  Cout] at B*H*W positions is reformulated."""
  flops = 2 * (x.size // x.shape[-1]) * kernel.size
  return (jax.default_backend() == "cpu"
          and flops >= CPU_REFORMULATION_MIN_FLOPS)


def _params(module: nn.Module, x: jax.Array, k: int):
  """nn.Conv's / nn.ConvTranspose's kernel [k, k, Cin, features] and bias
  [features], cast with x to the compute dtype."""
  kernel = module.param("kernel", KERNEL_INIT,
                        (k, k, x.shape[-1], module.features),
                        param_dtype(module.dtype))
  bias = module.param("bias", nn.initializers.zeros, (module.features,),
                      param_dtype(module.dtype))
  return (jnp.asarray(a, module.dtype) for a in (x, kernel, bias))


class Conv(nn.Module):
  """Keras Conv2D, 'SAME', with nn.Conv's parameters. Odd kernels of stride
  1 are `tap_conv` where `_reformulate`; a 1x1 convolution of stride s is
  x[:, ::s, ::s] then one of stride 1 (no input dilation in its input
  gradient)."""
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.strides
    x, kernel, bias = _params(self, x, k)
    if k == 1 and s > 1:
      x, s = x[:, ::s, ::s], 1
    if s == 1 and k % 2 and _reformulate(x, kernel):
      return tap_conv(x, kernel, ((k // 2, k // 2),) * 2) + bias
    return jax.lax.conv_general_dilated(
        x, kernel, (s, s), "SAME", dimension_numbers=_NHWC) + bias


def conv(features: int, kernel_size: int, *, strides: int = 1, dtype: Any,
         name: str | None) -> Conv:
  """Keras Conv2D."""
  return Conv(features, kernel_size, strides, dtype=dtype, name=name)


def phase_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (2, 2), 'SAME')` of x [B, H, W, Cin] and
  a 3x3 kernel [3, 3, Cin, Cout] -> [B, 2H, 2W, Cout], as four stride-1
  convolutions of x interleaved, with no inserted zeros: output row 2i is
  kernel row 0 on input row i - 1 plus kernel row 2 on row i; output row
  2i + 1 is kernel row 1 on row i; likewise the columns."""
  two, one = (1, 0), (0, 0)  # Padding of a 2-tap (i - 1, i) / 1-tap (i) side.
  ee = tap_conv(x, kernel[::2, ::2], (two, two))
  eo = tap_conv(x, kernel[::2, 1:2], (two, one))
  oe = tap_conv(x, kernel[1:2, ::2], (one, two))
  oo = tap_conv(x, kernel[1:2, 1:2], (one, one))
  b, h, w, c = ee.shape
  even = jnp.stack([ee, eo], axis=3).reshape(b, h, 2 * w, c)
  odd = jnp.stack([oe, oo], axis=3).reshape(b, h, 2 * w, c)
  return jnp.stack([even, odd], axis=2).reshape(b, 2 * h, 2 * w, c)


class ConvTranspose(nn.Module):
  """Keras Conv2DTranspose, 'SAME' (H, W times `strides`), with
  nn.ConvTranspose's parameters. A 3x3 stride-2 one is
  `phase_conv_transpose` where `_reformulate`: XLA's CPU convolution with
  input dilation multiplies the inserted zeros (4x the work)."""
  features: int
  kernel_size: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.strides
    x, kernel, bias = _params(self, x, k)
    if (k, s) == (3, 2) and _reformulate(x, kernel):
      return phase_conv_transpose(x, kernel) + bias
    return jax.lax.conv_transpose(x, kernel, (s, s), "SAME",
                                  dimension_numbers=_NHWC) + bias


def conv_transpose(features: int, kernel_size: int, *, strides: int,
                   dtype: Any, name: str | None) -> ConvTranspose:
  """Keras Conv2DTranspose: H, W times `strides`."""
  return ConvTranspose(features, kernel_size, strides, dtype=dtype,
                       name=name)


def dense(features: int, *, dtype: Any, name: str | None = None) -> nn.Dense:
  """Keras Dense."""
  return nn.Dense(features, kernel_init=KERNEL_INIT, dtype=dtype,
                  param_dtype=param_dtype(dtype), name=name)
