"""The CPU formulations of `mixvae.models.layers` against Flax's and XLA's
own: same parameters (names, shapes, initial values), same outputs and
gradients to float32 round-off."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixvae.models import layers

RTOL, ATOL = 2e-5, 2e-5
_NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(name="reformulate_all")
def _reformulate_all(monkeypatch):
  """Every convolution takes the CPU formulations, however small."""
  assert jax.default_backend() == "cpu"
  monkeypatch.setattr(layers, "CPU_REFORMULATION_MIN_FLOPS", 0)


def _compare(ours: nn.Module, flax_module: nn.Module, x: jax.Array):
  params = ours.init(jax.random.PRNGKey(0), x)
  flax_params = flax_module.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         flax_params)
  jax.tree.map(np.testing.assert_array_equal, params, flax_params)
  params = jax.tree.map(  # Non-zero biases.
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
      params)
  cotangent = jax.random.normal(jax.random.PRNGKey(2),
                                ours.apply(params, x).shape)

  def loss(module, p, inputs):
    return jnp.sum(module.apply(p, inputs) * cotangent)

  np.testing.assert_allclose(ours.apply(params, x),
                             flax_module.apply(params, x), rtol=RTOL,
                             atol=ATOL)
  grads = jax.grad(loss, argnums=(1, 2))(ours, params, x)
  expected = jax.grad(loss, argnums=(1, 2))(flax_module, params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL,
                                                       atol=ATOL * 10),
               grads, expected)


@pytest.mark.parametrize("shape,kernel_shape,padding", [
    ((2, 6, 7, 5), (3, 3), ((1, 1), (1, 1))),
    ((1, 5, 3, 8), (3, 3), ((0, 0), (2, 1))),
    ((2, 6, 7, 5), (2, 2), ((1, 0), (1, 0))),
    ((1, 5, 3, 8), (2, 1), ((1, 0), (0, 0))),
    ((2, 6, 7, 5), (1, 2), ((0, 0), (1, 0))),
    ((1, 5, 3, 8), (1, 1), ((0, 0), (0, 0)))])
@pytest.mark.parametrize("chunk_bytes", [2**20, 1])
def test_tap_conv_equals_xla(shape, kernel_shape, padding, chunk_bytes,
                             monkeypatch):
  """Values and both gradients; the kernel gradient is the tap products,
  summed over the whole batch at once or one example at a time."""
  monkeypatch.setattr(layers, "KERNEL_GRAD_CHUNK_BYTES", chunk_bytes)
  x = jax.random.normal(jax.random.PRNGKey(3), shape)
  kernel = jax.random.normal(jax.random.PRNGKey(4),
                             kernel_shape + (shape[-1], 6))

  def loss(conv, x, kernel):
    y = conv(x, kernel)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

  ours = lambda x, k: layers.tap_conv(x, k, padding)  # pylint: disable=unnecessary-lambda-assignment
  xla = lambda x, k: jax.lax.conv_general_dilated(  # pylint: disable=unnecessary-lambda-assignment
      x, k, (1, 1), padding, dimension_numbers=_NHWC)
  np.testing.assert_allclose(ours(x, kernel), xla(x, kernel), rtol=RTOL,
                             atol=ATOL)
  for got, want in zip(jax.grad(loss, argnums=(1, 2))(ours, x, kernel),
                       jax.grad(loss, argnums=(1, 2))(xla, x, kernel)):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(2, 4, 4, 5), (1, 5, 3, 8)])
def test_phase_transposed_conv_equals_flax(shape, reformulate_all):
  del reformulate_all
  x = jax.random.normal(jax.random.PRNGKey(3), shape)
  kernel = jax.random.normal(jax.random.PRNGKey(4), (3, 3, shape[-1], 6))
  np.testing.assert_allclose(
      layers.phase_conv_transpose(x, kernel),
      jax.lax.conv_transpose(x, kernel, (2, 2), "SAME",
                             dimension_numbers=_NHWC),
      rtol=RTOL, atol=ATOL)
  _compare(layers.conv_transpose(6, 3, strides=2, dtype=jnp.float32,
                                 name=None),
           nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding="SAME",
                            kernel_init=layers.KERNEL_INIT), x)


@pytest.mark.parametrize("shape,kernel,stride", [
    ((2, 8, 8, 5), 1, 2), ((1, 7, 5, 4), 1, 2), ((2, 8, 8, 5), 3, 1),
    ((1, 7, 5, 4), 3, 1), ((2, 8, 8, 5), 1, 1), ((1, 7, 5, 4), 4, 2)])
def test_conv_equals_flax(shape, kernel, stride, reformulate_all):
  """1x1 stride 2: subsampled; odd stride 1: `tap_conv`."""
  del reformulate_all
  x = jax.random.normal(jax.random.PRNGKey(5), shape)
  _compare(layers.conv(6, kernel, strides=stride, dtype=jnp.float32,
                       name=None),
           nn.Conv(6, (kernel, kernel), strides=(stride, stride),
                   padding="SAME", kernel_init=layers.KERNEL_INIT), x)


def test_only_large_convolutions_on_cpus_are_reformulated(monkeypatch):
  x = jnp.zeros((8, 64, 64, 128))
  kernel = jnp.zeros((3, 3, 128, 128))
  assert layers._reformulate(x, kernel)  # pylint: disable=protected-access
  assert not layers._reformulate(x[:, :4, :4, :16], kernel[..., :16, :16])  # pylint: disable=protected-access
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not layers._reformulate(x, kernel)  # pylint: disable=protected-access
