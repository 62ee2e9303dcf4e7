"""`Trainer`: a run's networks, optimizers, initial state and mapped step.

  trainer = Trainer(config)                  # validates the config
  state = trainer.replicate(trainer.init_state())
  state, metrics = trainer.p_train_step(state, batch)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from mixvae import config_utils
from mixvae import models
from mixvae import replication
from mixvae import train_state as train_state_lib
from mixvae import train_step as train_step_lib
from mixvae.train_state import TrainState

AXIS = "batch"  # The pmap axis of the train step.


class Trainer:
  """The modules, optimizers and pmapped train step of a config.

  Attributes:
    config: the run config (validated); axis_name: the step's mapped axis.
    vae, discriminator: the networks, 'batch' norms synchronized over
      `axis_name`; no discriminator (None) when beta_4 = 0 (the baselines).
    vae_tx, disc_tx: their optimizers (disc_tx None without one).
  """

  def __init__(self, config: ml_collections.ConfigDict,
               axis_name: str | None = AXIS):
    config_utils.validate(config)
    self.config = config
    self.axis_name = axis_name
    self.vae = models.build_vae(config.model, axis_name=axis_name)
    vae_tx, disc_tx = train_state_lib.make_optimizers(config)
    self.vae_tx = vae_tx
    self.discriminator = self.disc_tx = None
    if config.loss.beta_adversarial > 0:
      self.discriminator = models.build_discriminator(
          config.discriminator, axis_name=axis_name)
      self.disc_tx = disc_tx

  def init_state(self) -> TrainState:
    """The initial state on the host, from `config.seed`."""
    key = jax.random.key(self.config.seed)
    vae_rng, disc_rng = jax.random.split(jax.random.fold_in(key, 1))
    vae_vars = models.init_vae(self.vae, vae_rng)
    disc_vars = disc_opt_state = {}
    if self.discriminator is not None:
      disc_vars = models.init_discriminator(self.discriminator, disc_rng,
                                            self.vae.image_shape)
      disc_opt_state = self.disc_tx.init(disc_vars["params"])
    vae_params = vae_vars["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(key),
        vae_params=vae_params,
        vae_batch_stats=vae_vars.get("batch_stats", {}),
        vae_opt_state=self.vae_tx.init(vae_params),
        disc_params=disc_vars.get("params", {}),
        disc_batch_stats=disc_vars.get("batch_stats", {}),
        disc_opt_state=disc_opt_state,
        ema_params=jax.tree.map(jnp.copy, vae_params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
        nonfinite_terms=jnp.zeros((), jnp.int32))

  def abstract_state(self) -> TrainState:
    """Shapes and dtypes of the state; allocates nothing."""
    return jax.eval_shape(self.init_state)

  @property
  def step_fn(self):
    """`train_step` of this config for one device of a `jax.pmap`."""
    return functools.partial(
        train_step_lib.train_step, config=self.config, vae=self.vae,
        discriminator=self.discriminator, vae_tx=self.vae_tx,
        disc_tx=self.disc_tx, axis_name=self.axis_name, mapping="pmap")

  def pmap_step(self, devices=None):
    """The pmapped step over `devices` (default: local); state donated."""
    return jax.pmap(self.step_fn, axis_name=self.axis_name, devices=devices,
                    donate_argnums=(0,))

  @functools.cached_property
  def p_train_step(self):
    return self.pmap_step()

  def replicate(self, state: TrainState, devices=None) -> TrainState:
    """`state` on every local device, sharded over the pmap axis."""
    return replication.replicate(state, devices, axis_name=self.axis_name)
