"""Helpers for the evaluation tests: a tiny run's workdir, launch scripts.

`write_run(workdir)` writes what training leaves behind (config.json and an
Orbax checkpoint) for the tiny `test` config without running a train step:
the state is the initial one, with the raw generator parameters moved away
from the EMA ones so that --params=ema and --params=raw differ.
`launch_script(name)` imports launch/<name>.py (the weight converters).
Test modules import the `workdir` fixture from here.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from configs import celebahq
import train_helpers as th

STEP = 3


def test_config():
  return celebahq.get_config("test")


def launch_script(name: str):
  """launch/<name>.py as a module (its flags are defined only when run)."""
  return th.load_launch_module(name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A fixture: `write_run` in a fresh folder, once per test module."""
  return write_run(tmp_path_factory.mktemp("run"))


def write_run(workdir: os.PathLike, *, step: int = STEP, config=None) -> str:
  """Writes WORKDIR/config.json and WORKDIR/checkpoints/<step>/."""
  from mixvae import checkpointing  # pylint: disable=g-import-not-at-top
  from mixvae import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from mixvae import trainer  # pylint: disable=g-import-not-at-top
  config = config or test_config()
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  # Jitted: op-by-op initialization is slow on 8 simulated devices.
  state = jax.device_get(jax.jit(trainer.Trainer(config).init_state)())
  state = state.replace(
      step=np.asarray(step, np.int32),
      vae_params=jax.tree.map(lambda x: np.asarray(x) * 1.01,
                              state.vae_params))
  manager = checkpointing.create_manager(workdir, max_to_keep=3)
  checkpointing.save(manager, step, state, {"step": np.int64(step)})
  manager.wait_until_finished()
  manager.close()
  return workdir
