"""Orbax checkpoints of a run: the TrainState and the data-iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a run
killed at any moment (even mid-save) leaves only whole checkpoints behind and
resumes from the newest one.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from mixvae import errors
from mixvae import nested
from mixvae.train_state import TrainState


def checkpoint_dir(workdir: str) -> epath.Path:
  """`WORKDIR/checkpoints`, made absolute for local paths.

  Orbax's tensorstore rejects relative local paths (e.g. from
  `--workdir=workdirs/demo`); URLs (gs://) stay as given.
  """
  workdir = os.fspath(workdir)
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  return epath.Path(workdir) / "checkpoints"


def create_manager(workdir: str, *, max_to_keep: int,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager for `WORKDIR/checkpoints`, keeping the last K."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      # Saves are decided by the train loop, not by an interval here.
      save_interval_steps=1)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: TrainState,
         data_state: dict[str, Any]) -> None:
  """Saves a host copy of the (unreplicated) state and the iterator state.

  Every process must call this (Orbax coordinates the hosts).
  """
  host_state = jax.device_get(state)
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(host_state),
      data=ocp.args.JsonSave(nested.jsonable(data_state))), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: TrainState,
            step: int | None = None
            ) -> tuple[TrainState, dict[str, Any]] | None:
  """Restores (state, data_state) from `step`, or the latest; None if none."""
  if step is None:
    step = manager.latest_step()
    if step is None:
      return None
  elif step not in manager.all_steps():
    raise FileNotFoundError(
        f"no checkpoint for step {step} in {manager.directory}; saved steps: "
        f"{sorted(manager.all_steps())}")
  _check_dtypes(manager, step, abstract_state)
  target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
  logging.info("Restoring checkpoint of step %d from %s", step,
               manager.directory)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      data=ocp.args.JsonRestore()))
  return restored.state, dict(restored.data)


def _float_dtypes(tree) -> list[str]:
  return sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(tree)
                 if np.issubdtype(np.dtype(x.dtype), np.floating)})


def _check_dtypes(manager: ocp.CheckpointManager, step: int,
                  abstract_state: TrainState) -> None:
  """A checkpoint restores only into the float dtypes it was saved in."""
  saved = _float_dtypes(manager.item_metadata(step).state)
  wanted = _float_dtypes(abstract_state)
  if saved != wanted:
    raise errors.ConfigError(
        f"the checkpoint of step {step} in {manager.directory} holds "
        f"{'/'.join(saved)} arrays but the config's state is "
        f"{'/'.join(wanted)}: resume with the model.dtype and "
        "discriminator.dtype it was trained with, or use a new workdir")
