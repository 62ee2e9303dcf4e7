"""Helpers for the evaluation tests: a tiny run's workdir, written directly.

`write_run(workdir)` writes what training leaves behind (config.json and an
Orbax checkpoint) for the tiny `test` config without running a train step:
the state is the initial one, with the raw generator parameters moved away
from the EMA ones so that --params=ema and --params=raw differ.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

import train_helpers as th

CELEBAHQ = th.load_config_module(th.CELEBAHQ, "celebahq_config_for_eval")
STEP = 3


def test_config():
  return CELEBAHQ.get_config("test")


def write_run(workdir: os.PathLike, *, step: int = STEP, config=None) -> str:
  """Writes WORKDIR/config.json and WORKDIR/checkpoints/<step>/."""
  from mixvae import checkpointing  # pylint: disable=g-import-not-at-top
  from mixvae import train  # pylint: disable=g-import-not-at-top
  from mixvae import train_state  # pylint: disable=g-import-not-at-top
  config = config or test_config()
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, train.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  vae, disc, vae_tx, disc_tx = train.build(config)
  # Jitted: op-by-op initialization is slow on 8 simulated devices.
  state = jax.device_get(jax.jit(functools.partial(
      train_state.create_train_state, config, vae=vae, discriminator=disc,
      vae_tx=vae_tx, disc_tx=disc_tx))())
  state = state.replace(
      step=np.asarray(step, np.int32),
      vae_params=jax.tree.map(lambda x: np.asarray(x) * 1.01,
                              state.vae_params))
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  checkpointing.save(manager, step, state, {"step": np.int64(step)})
  manager.wait_until_finished()
  manager.close()
  return workdir
