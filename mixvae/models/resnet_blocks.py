"""Pre-activation (ResNetV2) residual blocks of Section 3.4 / Fig. 3.

"BR" = normalization then activation (`layers.norm_act`); every convolution
is preceded by its own BR (pre-activation). The three blocks of the paper:

* Id-ResBlock (`IdResBlock`): keeps the shape.
    x + triple(x), triple = BR, 3x3 conv; BR, 3x3 conv; BR, 1x1 conv.
* Conv-ResBlock (`ConvResBlock`): halves H and W.
    main = triple with the stride 2 in its final 1x1 conv;
    shortcut = BR, 1x1 conv stride 2; output = main + shortcut.
* Conv-ResBlock-Trans (`ConvResBlockTrans`): doubles H and W.
    main = BR, 1x1 conv; BR, 3x3 transposed conv stride 2;
    shortcut = BR, 3x3 transposed conv stride 2; output = main + shortcut.

All convolutions have `features` output channels and 'SAME' padding. With 128
channels and 'affine' (or 'batch'/'group') normalization an Id-ResBlock has
312,448 parameters, a Conv-ResBlock 329,216 and a Conv-ResBlock-Trans 312,448,
as in the released model.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixvae.models import layers


class _Block(nn.Module):
  """Fields shared by the residual blocks.

  Attributes:
    features: output channels of every convolution in the block.
    norm: the normalization layer (`layers.NormSpec`).
    activation: activation name, e.g. 'relu'.
    dtype: compute dtype (parameters are float32).
  """
  features: int
  norm: layers.NormSpec = layers.NormSpec()
  activation: str = "relu"
  dtype: Any = jnp.float32

  def _br(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    return layers.norm_act(x, self.norm, self.activation, train=train,
                           dtype=self.dtype, name=name)

  def _conv(self, kernel_size: int, name: str, strides: int = 1) -> nn.Conv:
    return layers.conv(self.features, kernel_size, strides=strides,
                       dtype=self.dtype, name=name)

  def _triple(self, x: jax.Array, train: bool, last_stride: int) -> jax.Array:
    """BR, 3x3 conv; BR, 3x3 conv; BR, 1x1 conv (stride `last_stride`)."""
    y = self._conv(3, "conv1")(self._br(x, train, "norm1"))
    y = self._conv(3, "conv2")(self._br(y, train, "norm2"))
    return self._conv(1, "conv3", last_stride)(self._br(y, train, "norm3"))


class IdResBlock(_Block):
  """Id-ResBlock: identity shortcut, keeps [B, H, W, C] (needs C == features)."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps x [B, H, W, features] to [B, H, W, features]."""
    if x.shape[-1] != self.features:
      raise ValueError(
          f"Id-ResBlock with {self.features} features got an input with "
          f"{x.shape[-1]} channels; its identity shortcut needs them equal")
    return x.astype(self.dtype) + self._triple(x, train, last_stride=1)


class ConvResBlock(_Block):
  """Conv-ResBlock: downsamples x2, the stride in the final 1x1 convolution."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps x [B, H, W, C] to [B, ceil(H/2), ceil(W/2), features]."""
    main = self._triple(x, train, last_stride=2)
    shortcut = self._conv(1, "shortcut_conv", 2)(
        self._br(x, train, "shortcut_norm"))
    return main + shortcut


class ConvResBlockTrans(_Block):
  """Conv-ResBlock-Trans: upsamples x2 with stride-2 transposed convolutions."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps x [B, H, W, C] to [B, 2H, 2W, features]."""
    y = self._conv(1, "conv1")(self._br(x, train, "norm1"))
    main = layers.conv_transpose(self.features, 3, strides=2, dtype=self.dtype,
                                 name="conv2_trans")(self._br(y, train, "norm2"))
    shortcut = layers.conv_transpose(
        self.features, 3, strides=2, dtype=self.dtype,
        name="shortcut_conv_trans")(self._br(x, train, "shortcut_norm"))
    return main + shortcut
