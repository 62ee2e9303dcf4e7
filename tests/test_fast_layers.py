"""The faster formulations of `mixvae.models.layers` against Flax's own:
same parameters (names, shapes, initial values), same outputs and gradients
to float32 round-off."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixvae.models import layers

RTOL, ATOL = 2e-5, 2e-5


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


@pytest.mark.parametrize("shape", [(2, 4, 4, 5), (1, 5, 3, 8), (3, 8, 8, 16)])
def test_phase_transposed_conv_equals_flax(shape):
  x = jax.random.normal(jax.random.PRNGKey(3), shape)
  kernel = jax.random.normal(jax.random.PRNGKey(4), (3, 3, shape[-1], 6))
  np.testing.assert_allclose(
      layers.phase_conv_transpose(x, kernel),
      jax.lax.conv_transpose(x, kernel, (2, 2), "SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC")),
      rtol=RTOL, atol=ATOL)
  assert jax.default_backend() == "cpu"  # The module takes the phase path.
  _compare(layers.conv_transpose(6, 3, strides=2, dtype=jnp.float32,
                                 name=None),
           nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding="SAME",
                            kernel_init=layers.KERNEL_INIT), x)


@pytest.mark.parametrize("kernel,stride", [(1, 2), (3, 1), (1, 1), (4, 2)])
@pytest.mark.parametrize("shape", [(2, 8, 8, 5), (1, 7, 5, 4)])
def test_conv_equals_flax(shape, kernel, stride):
  """1x1 stride 2: subsampled; stride 1: the CPU kernel gradient."""
  x = jax.random.normal(jax.random.PRNGKey(5), shape)
  _compare(layers.conv(6, kernel, strides=stride, dtype=jnp.float32,
                       name=None),
           nn.Conv(6, (kernel, kernel), strides=(stride, stride),
                   padding="SAME", kernel_init=layers.KERNEL_INIT), x)
