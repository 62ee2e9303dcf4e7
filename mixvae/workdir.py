"""A run's directory: its lock and its config record.

  WORKDIR/run.lock               'PID HOST' of the run training in it
  WORKDIR/config.json            the config of the latest run segment
  WORKDIR/config_history/S.json  the config of the segment that started at S
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from absl import logging
from etils import epath
import ml_collections

from mixvae import config_utils
from mixvae import errors
from mixvae import nested

CONFIG_FILE = "config.json"
HISTORY_DIR = "config_history"
LOCK_FILE = "run.lock"
# Fields the saved state depends on (its shapes, or what it means): these
# cannot change when a run resumes. Everything else (step counts, logging,
# learning rates, loss weights, evaluation) can.
STATE_FIELDS = ("seed", "batch_size", "model.", "discriminator.", "data.",
                "loss.family", "uses a discriminator")
# Where the data is read from, and how fast: free to change (e.g. a copy of
# the prepared dataset in a bucket).
FREE_DATA_FIELDS = ("data.data_dir", "data.image_dir", "data.num_threads",
                    "data.num_parallel_calls", "data.prefetch",
                    "data.eval_batch_size")


def _flat(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  flat = nested.flatten(config, sep=".")
  flat["uses a discriminator"] = flat.get("loss.beta_adversarial", 0) > 0
  return flat


def check_resume(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Compares `config` with the saved one of a run with checkpoints.

  Raises:
    errors.ConfigError: listing every field the saved state depends on whose
      value changed (saved and new), and how to proceed.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return
  saved = _flat(config_utils.with_added_fields(json.loads(
      path.read_text())))
  new = _flat(config)
  changed = {k: (saved.get(k), new.get(k)) for k in set(saved) | set(new)
             if saved.get(k) != new.get(k)}
  fixed = sorted(k for k in changed if k.startswith(STATE_FIELDS)
                 and k not in FREE_DATA_FIELDS)
  if fixed:
    raise errors.ConfigError(
        f"the config differs from the one the checkpoints in {workdir} were "
        "trained with, in fields the saved state depends on: " + "; ".join(
            f"{k}: saved {changed[k][0]!r}, new {changed[k][1]!r}"
            for k in fixed) + ". Use a new --workdir, or resume with the "
        "saved values (the run's config is in " + os.fspath(path) + ")")
  for k in sorted(changed):
    logging.warning("Config changed on resume: %s: %r -> %r", k,
                    *changed[k])


def record_config(workdir: str, config: ml_collections.ConfigDict,
                  start_step: int) -> None:
  """Writes config.json and config_history/<start_step>.json."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  history = epath.Path(workdir) / HISTORY_DIR
  history.mkdir(parents=True, exist_ok=True)
  (history / f"{start_step}.json").write_text(text)
  (epath.Path(workdir) / CONFIG_FILE).write_text(text)


class Lock:
  """`WORKDIR/run.lock`, so that two runs never train in one workdir.

  Taken with an exclusive create; the lock of a process of this host that no
  longer runs (e.g. after kill -9) is taken over. URLs (gs://) are not
  locked.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._mine = f"{os.getpid()} {socket.gethostname()}"
    self._held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._mine)
    return True

  def __enter__(self) -> "Lock":
    if "://" in self.path:
      logging.warning("%s is not local: it is not locked against a second "
                      "run.", self.path)
      return self
    if not self._create():
      try:
        pid, host = open(self.path).read().split()
      except (OSError, ValueError):
        pid, host = "0", socket.gethostname()  # Half-written: stale.
      if host != socket.gethostname() or _alive(int(pid)):
        raise errors.UserError(
            f"{os.path.dirname(self.path)} is in use by the run of process "
            f"{pid} on {host} (lock {self.path}): stop that run, or use "
            "another --workdir")
      logging.warning("Taking over %s of process %s, which no longer runs.",
                      self.path, pid)
      os.remove(self.path)
      if not self._create():
        raise errors.UserError(f"another run took {self.path} just now")
    self._held = True
    return self

  def __exit__(self, *exc) -> None:
    if self._held:
      os.remove(self.path)
      self._held = False


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return pid > 0
