"""launch/main.py with test-only faults, chosen by environment variables.

  MIXVAE_TEST_NAN_AT_STEP=N   the images of step N are NaN, so every loss
                              term of that step is non-finite;
  MIXVAE_TEST_KILL_AT_SAVE=N  the process SIGKILLs itself when the loop asks
                              to save step N (nothing of step N is written).

The shipped code and configs have no such hooks: this wraps the train step
and the checkpoint save from outside.
"""

import os
import pathlib
import runpy
import signal
import sys

import jax.numpy as jnp

from mixvae import checkpointing
from mixvae import train_step

MAIN = pathlib.Path(__file__).resolve().parents[1] / "launch" / "main.py"


def _int_env(name: str) -> int:
  return int(os.environ.get(f"MIXVAE_TEST_{name}", "-1"))


def install_hooks() -> None:
  nan_step, kill_step = _int_env("NAN_AT_STEP"), _int_env("KILL_AT_SAVE")
  if nan_step >= 0:
    step_fn = train_step.train_step

    def train_step_with_nan(state, batch, **kwargs):
      image = jnp.where(state.step == nan_step, jnp.nan, batch["image"])
      return step_fn(state, dict(batch, image=image), **kwargs)
    train_step.train_step = train_step_with_nan
  if kill_step >= 0:
    save = checkpointing.save

    def save_or_die(manager, step, *args, **kwargs):
      if step == kill_step:
        manager.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)
      return save(manager, step, *args, **kwargs)
    checkpointing.save = save_or_die


if __name__ == "__main__":
  install_hooks()
  sys.argv[0] = str(MAIN)
  sys.path.insert(0, str(MAIN.parent))  # As `python launch/main.py` has it.
  runpy.run_path(str(MAIN), run_name="__main__")
