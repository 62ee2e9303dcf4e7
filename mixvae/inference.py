"""A trained VAE for other JAX code: encode, decode, sample, interpolate.

  model = inference.load("workdirs/demo")          # latest step, EMA params
  mu, logvar = model.encode(x)                     # x [n, H, W, C] in [-1, 1]
  samples = model.generate(jax.random.PRNGKey(0), 16, temperature=0.8)

Images are float32 [n, H, W, C] in the model's range [-1, 1] (a 'linear'
decoder can leave it: clip for display); latents are float32 [n, d].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mixvae import models


def slerp(z0: jax.Array, z1: jax.Array, t: jax.Array | float) -> jax.Array:
  """Spherical interpolation of z0, z1 [d] at t (scalar or [n]): [d] or [n, d].

  (sin((1 - t) w) z0 + sin(t w) z1) / sin w, cos w = z0.z1 / (|z0| |z1|);
  linear, (1 - t) z0 + t z1, where w < 1e-6 (parallel z0 and z1).
  """
  z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
  t = jnp.asarray(t, z0.dtype)[..., None]
  norms = jnp.linalg.norm(z0) * jnp.linalg.norm(z1)
  omega = jnp.arccos(jnp.clip(jnp.dot(z0, z1) / jnp.maximum(norms, 1e-12),
                              -1.0, 1.0))
  parallel = omega < 1e-6
  spherical = (jnp.sin((1 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / (
      jnp.where(parallel, 1.0, jnp.sin(omega)))
  return jnp.where(parallel, (1 - t) * z0 + t * z1, spherical)


class Model:
  """A VAE and its variables, with jitted encoder and decoder.

  `variables` may be replaced by others of the same shapes: the jitted
  programs take them as an argument, so nothing recompiles.
  """

  def __init__(self, vae: models.VAE, variables: dict[str, Any]):
    self.vae = vae
    self.variables = variables
    self.latent_dim = vae.latent_dim
    self.image_shape = vae.image_shape
    self._encode = jax.jit(lambda v, x: vae.apply(v, x, method="encode"))
    self._decode = jax.jit(lambda v, z: vae.apply(v, z, method="decode"))

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images x [n, H, W, C] in [-1, 1] -> (mu, logvar), each [n, d]."""
    return self._encode(self.variables, x)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents z [n, d] -> images [n, H, W, C]."""
    return self._decode(self.variables, z)

  def reconstruct(self, x: jax.Array) -> jax.Array:
    """decode(mu(x)), the posterior mean's image: [n, H, W, C]."""
    return self.decode(self.encode(x)[0])

  def generate(self, key: jax.Array, num_samples: int,
               temperature: float = 1.0) -> jax.Array:
    """Decoded z = T * eps, eps ~ N(0, I) from `key`: [num_samples, H, W, C]."""
    eps = jax.random.normal(key, (num_samples, self.latent_dim), jnp.float32)
    return self.decode(temperature * eps)

  def interpolate(self, x0: jax.Array, x1: jax.Array, num: int) -> jax.Array:
    """x0, x1 [H, W, C] -> decoded slerp(mu(x0), mu(x1), t) [num, H, W, C],
    t = k / (num - 1), k < num: both ends included."""
    mu, _ = self.encode(jnp.stack([x0, x1]))
    return self.decode(slerp(mu[0], mu[1], jnp.linspace(0.0, 1.0, num)))


def load(workdir: str, *, step: int | None = None, params: str = "ema"
         ) -> Model:
  """The VAE of a run (local or gs://) at `step` (None: the latest).

  `params`: 'ema' (the generator's EMA) or 'raw'. Raises as
  `evaluation.evaluate.load_run`.
  """
  # Here: `evaluate` brings in the data pipeline (TensorFlow); Model does not.
  from mixvae.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  run = evaluate.load_run(workdir, step=step, params=params)
  return Model(run.vae, run.variables)
