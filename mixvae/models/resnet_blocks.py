"""Pre-activation (ResNetV2) residual blocks of Section 3.4 / Fig. 3.

"BR" = normalization, then activation (`layers.norm_act`), before every
convolution. All convolutions have `features` channels and 'SAME' padding.
With 128 channels (any normalization but 'none'): Id-ResBlock 312,448
parameters, Conv-ResBlock 329,216, Conv-ResBlock-Trans 312,448.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixvae.models import layers


class _Block(nn.Module):
  """`features`: the channels of every convolution; `dtype`: compute dtype."""
  features: int
  norm: layers.NormSpec = layers.NormSpec()
  activation: str = "relu"
  dtype: Any = jnp.float32

  def _br(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    return layers.norm_act(x, self.norm, self.activation, train=train,
                           dtype=self.dtype, name=name)

  def _conv(self, kernel_size: int, name: str, strides: int = 1,
            transpose: bool = False) -> nn.Module:
    return (layers.conv_transpose if transpose else layers.conv)(
        self.features, kernel_size, strides=strides, dtype=self.dtype,
        name=name)

  def _triple(self, x: jax.Array, train: bool, last_stride: int) -> jax.Array:
    """triple = BR, 3x3 conv; BR, 3x3 conv; BR, 1x1 conv (`last_stride`)."""
    y = self._conv(3, "conv1")(self._br(x, train, "norm1"))
    y = self._conv(3, "conv2")(self._br(y, train, "norm2"))
    return self._conv(1, "conv3", last_stride)(self._br(y, train, "norm3"))


class IdResBlock(_Block):
  """Id-ResBlock: [B, H, W, features] -> x + triple(x), same shape."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.features:
      raise ValueError(
          f"Id-ResBlock with {self.features} features got an input with "
          f"{x.shape[-1]} channels; its identity shortcut needs them equal")
    return x.astype(self.dtype) + self._triple(x, train, last_stride=1)


class ConvResBlock(_Block):
  """Conv-ResBlock: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), features].

  triple(x) with stride 2 in its 1x1 conv, + (BR, 1x1 conv stride 2)(x).
  """

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    main = self._triple(x, train, last_stride=2)
    shortcut = self._conv(1, "shortcut_conv", 2)(
        self._br(x, train, "shortcut_norm"))
    return main + shortcut


class ConvResBlockTrans(_Block):
  """Conv-ResBlock-Trans: [B, H, W, C] -> [B, 2H, 2W, features].

  (BR, 1x1 conv; BR, 3x3 transposed conv stride 2)(x)
  + (BR, 3x3 transposed conv stride 2)(x).
  """

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = self._conv(1, "conv1")(self._br(x, train, "norm1"))
    main = self._conv(3, "conv2_trans", 2, transpose=True)(
        self._br(y, train, "norm2"))
    shortcut = self._conv(3, "shortcut_conv_trans", 2, transpose=True)(
        self._br(x, train, "shortcut_norm"))
    return main + shortcut
