"""Orbax checkpoints of a run: the TrainState and the data-iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`; `data` holds the
iterator state and a CRC-32 of the state's arrays. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a run
killed at any moment (even mid-save) leaves only whole checkpoints behind and
resumes from the newest one; a damaged one is moved aside (`restore`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any
import zlib

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mixvae import errors
from mixvae import nested
from mixvae.train_state import TrainState

_CRC = "state_crc32"  # Key of the state's CRC-32 in the `data` item.


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
                   best: tuple[str, bool] | None = None,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager for `WORKDIR/checkpoints`, keeping the last K and,
  given `best` = (metric, larger is better), the best checkpoint saved with
  that metric (`save(..., metrics=)`)."""
  policy = None
  if best:
    name, larger_is_better = best
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(max_to_keep),
        # Sorted by the metric, the last n are kept.
        checkpoint_managers.BestN(
            get_metric_fn=lambda metrics: metrics[name], n=1,
            reverse=not larger_is_better,
            keep_checkpoints_without_metrics=False)])
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if policy else max_to_keep, preservation_policy=policy,
      create=not read_only, read_only=read_only,
      # Saves are decided by the train loop, not by an interval here.
      save_interval_steps=1)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: TrainState,
         data_state: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
  """Saves a host copy of the (unreplicated) state, the iterator state and a
  CRC-32 of the state's arrays (and `metrics`, for the best-checkpoint
  retention). Every process must call this."""
  host_state = jax.device_get(state)
  data = dict(nested.jsonable(data_state), **{_CRC: _crc32(host_state)})
  wait(manager)
  with _write_errors(manager):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state),
        data=ocp.args.JsonSave(data)), metrics=metrics, force=True)


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight. Raises errors.WriteError if it could not
  be written (e.g. a full disk), after removing its temporary folder."""
  with _write_errors(manager):
    manager.wait_until_finished()


@contextlib.contextmanager
def _write_errors(manager: ocp.CheckpointManager):
  """A failed write (errors.write_failure) becomes one errors.WriteError."""
  try:
    yield
  except (OSError, ValueError) as e:
    reason = errors.write_failure(e)
    if reason is None:
      raise
    raise errors.WriteError(_clean_up_failed_write(manager, reason)) from None


def _clean_up_failed_write(manager, reason: str) -> str:
  """Removes the partial folder of a failed save; returns the message."""
  directory = epath.Path(manager.directory)
  partial = sorted(p for p in directory.iterdir()
                   if ".orbax-checkpoint-tmp" in p.name)
  if jax.process_index() == 0:
    for path in partial:
      path.rmtree(missing_ok=True)
  manager.reload()
  latest = manager.latest_step()
  return (
      f"could not write the checkpoint of step "
      f"{', '.join(p.name.split('.')[0] for p in partial) or '?'} in "
      f"{directory}: {reason} (its partial folder was "
      "removed); " + ("no checkpoint is complete" if latest is None else
                      f"the newest complete checkpoint is step {latest}") +
      ". Free space (or choose another --workdir) and run the same command "
      "to resume.")


def restore(manager: ocp.CheckpointManager, abstract_state: TrainState,
            step: int | None = None, *, move_aside: bool = False
            ) -> tuple[TrainState, dict[str, Any]] | None:
  """(state, data_state) of `step`, or of the newest readable checkpoint.

  Args:
    manager: from `create_manager`.
    abstract_state: the shapes and dtypes to restore into.
    step: a saved step; None for the newest.
    move_aside: with `step=None`, a checkpoint that cannot be read (missing
      or damaged files, arrays that fail their CRC) is named in a warning,
      renamed to `<step>.unreadable-<time>` and the previous one is tried.

  Returns:
    None if there is no checkpoint.

  Raises:
    errors.MissingError: no checkpoint of `step`, or none readable.
    errors.ConfigError: the checkpoint's float dtypes differ from the
      config's.
  """
  if step is not None:
    if step not in manager.all_steps():
      raise errors.MissingError(
          f"no checkpoint for step {step} in {manager.directory}; saved "
          f"steps: {sorted(manager.all_steps())}")
    return _restore(manager, abstract_state, step)
  moved = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return _restore(manager, abstract_state, step)
    except errors.ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Damage, any kind.
      if not move_aside:
        raise
      moved.append(_move_aside(manager, step, e))
  if moved:
    raise errors.MissingError(
        f"no readable checkpoint in {manager.directory}: moved aside "
        f"{', '.join(moved)}; start again in a new --workdir (or move a "
        "good checkpoint back)")
  return None


def _restore(manager, abstract_state, step):
  _check_dtypes(manager, step, abstract_state)
  target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
  logging.info("Restoring checkpoint of step %d from %s", step,
               manager.directory)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      data=ocp.args.JsonRestore()))
  data = dict(restored.data)
  crc = data.pop(_CRC, None)
  if crc is not None and crc != _crc32(restored.state):
    raise ValueError("its arrays do not match the CRC-32 saved with them")
  return restored.state, data


def _crc32(tree) -> int:
  crc = 0
  for leaf in jax.tree.leaves(tree):
    crc = zlib.crc32(np.ascontiguousarray(leaf).tobytes(), crc)
  return crc


def _move_aside(manager, step: int, error: Exception) -> str:
  """Renames checkpoint `step` to `<step>.unreadable-<time>` (process 0)."""
  path = epath.Path(manager.directory) / str(step)
  aside = path.parent / f"{step}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
  reason = str(error).strip().splitlines()
  logging.warning("Checkpoint %d cannot be read (%s: %s); moving it to %s and "
                  "trying the previous one.", step, type(error).__name__,
                  reason[0][:300] if reason else "", aside)
  if jax.process_index() == 0:
    path.rename(aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"moved aside checkpoint {step}")
  manager.reload()
  return aside.name


def _float_dtypes(tree) -> list[str]:
  return sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(tree)
                 if np.issubdtype(np.dtype(x.dtype), np.floating)})


def _check_dtypes(manager: ocp.CheckpointManager, step: int,
                  abstract_state: TrainState) -> None:
  """A checkpoint restores only into the float dtypes it was saved in."""
  metadata = manager.item_metadata(step).state
  if metadata is None:
    raise ValueError("its state metadata cannot be read")
  saved = _float_dtypes(metadata)
  wanted = _float_dtypes(abstract_state)
  if saved != wanted:
    raise errors.ConfigError(
        f"the checkpoint of step {step} in {manager.directory} holds "
        f"{'/'.join(saved)} arrays but the config's state is "
        f"{'/'.join(wanted)}: resume with the model.dtype and "
        "discriminator.dtype it was trained with, or use a new workdir")
