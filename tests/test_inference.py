"""mixvae.inference: a restored run's encode, decode, reconstruct, generate
and interpolate (shapes, consistency, determinism), and slerp."""

import jax
import numpy as np
import pytest

import eval_helpers
from eval_helpers import workdir  # pylint: disable=unused-import
from mixvae import inference

N = 3


@pytest.fixture(scope="module")
def model(workdir):
  return inference.load(workdir)


@pytest.fixture(scope="module")
def images(model):
  return np.random.default_rng(0).uniform(
      -1, 1, (N,) + model.image_shape).astype(np.float32)


def test_slerp():
  a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  mid = inference.slerp(a, b, 0.5)
  np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)])
  np.testing.assert_allclose(inference.slerp(a, b, 0.0), a, atol=1e-12)
  np.testing.assert_allclose(inference.slerp(a, b, 1.0), b, atol=1e-12)
  np.testing.assert_allclose(inference.slerp(a, 2 * a, 0.5), 1.5 * a)
  path = inference.slerp(a, b, np.array([0.0, 0.5, 1.0]))
  assert path.shape == (3, 2)
  np.testing.assert_allclose(path, np.stack([a, mid, b]), atol=1e-7)
  # The norm is interpolated too: |slerp| stays 1 between unit vectors.
  np.testing.assert_allclose(np.linalg.norm(
      inference.slerp(a, b, np.linspace(0, 1, 7)), axis=1), 1.0, rtol=1e-6)


def test_encode_decode_reconstruct(model, images):
  assert model.image_shape == (32, 32, 3) and model.latent_dim == 16
  mu, logvar = model.encode(images)
  assert mu.shape == logvar.shape == (N, model.latent_dim)
  decoded = model.decode(mu)
  assert decoded.shape == (N, 32, 32, 3) and decoded.dtype == np.float32
  np.testing.assert_array_equal(model.reconstruct(images), decoded)
  run_vae = jax.jit(lambda v, x: model.vae.apply(v, x))(model.variables,
                                                        images)
  np.testing.assert_allclose(mu, run_vae.mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(decoded, run_vae.reconstruction, rtol=1e-5,
                             atol=1e-5)


def test_generate_is_decoded_scaled_noise_and_keyed(model):
  key = jax.random.PRNGKey(7)
  samples = model.generate(key, 4)
  assert samples.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(samples, model.generate(key, 4))
  assert np.abs(samples - model.generate(jax.random.PRNGKey(8), 4)).max() > 0
  eps = jax.random.normal(key, (4, model.latent_dim))
  np.testing.assert_allclose(model.generate(key, 4, temperature=0.5),
                             model.decode(0.5 * eps), rtol=1e-6, atol=1e-6)
  cold = np.asarray(model.generate(key, 4, temperature=0.0))
  np.testing.assert_allclose(cold, np.broadcast_to(cold[:1], cold.shape))


def test_interpolate_runs_between_the_posterior_means(model, images):
  path = model.interpolate(images[0], images[1], 5)
  assert path.shape == (5, 32, 32, 3)
  mu, _ = model.encode(images[:2])
  ends = model.decode(mu)
  np.testing.assert_allclose(path[0], ends[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(path[-1], ends[1], rtol=1e-5, atol=1e-5)
  middle = model.decode(inference.slerp(mu[0], mu[1], 0.5)[None])
  np.testing.assert_allclose(path[2], middle[0], rtol=1e-5, atol=1e-5)


def test_load_options(workdir, model, images):
  raw = inference.load(workdir, step=eval_helpers.STEP, params="raw")
  assert np.abs(raw.reconstruct(images) - model.reconstruct(images)).max() > 0
  with pytest.raises(FileNotFoundError, match="saved steps"):
    inference.load(workdir, step=99)
  with pytest.raises(ValueError, match="params"):
    inference.load(workdir, params="best")
