"""Helpers for tests/test_train.py: launching runs, reading what they wrote.

Runs of `launch/main.py` (or of `tests/hooked_main.py`, the same with
test-only faults) are subprocesses on simulated CPU devices. They share a
persistent JAX compilation cache (one directory per test session), so after
the first run of a configuration the later ones skip most of the compile; a
cache-loaded program must behave exactly like a fresh one, which the
bit-exact resume tests check too.

Waits on subprocesses are bounded by `PATIENCE`, just under the suite's
per-test timeout: a slow machine gives a slow pass, not an error.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import glob
import importlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN = ROOT / "launch" / "main.py"
HOOKED_MAIN = ROOT / "tests" / "hooked_main.py"
CELEBAHQ = ROOT / "configs" / "celebahq.py"
TEST_CONFIG = f"--config={CELEBAHQ}:test"
# Seconds to wait for a subprocess: under pytest's --timeout (900 s).
PATIENCE = 840


def env(num_devices: int, cache_dir: str | None = None,
        **extra: str) -> dict[str, str]:
  """The environment of a launched run: `num_devices` simulated CPUs."""
  result = dict(os.environ, **extra)
  result.update(
      XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
      JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
      PYTHONUNBUFFERED="1")
  if cache_dir:
    # Every program, down to the small ones of the eager initialization
    # (which otherwise takes longer than loading the train step).
    result.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return result


def command(workdir: os.PathLike, flags: Sequence[str],
            config: str = TEST_CONFIG, hooks: dict[str, int] | None = None
            ) -> list[str]:
  """launch/main.py, or tests/hooked_main.py when `hooks` are given."""
  main = HOOKED_MAIN if hooks else MAIN
  return [sys.executable, str(main), config, f"--workdir={workdir}", *flags]


# Training processes that may run at once: the cores of the 2-core machine.
TRAINING_SLOTS = 2


@contextlib.contextmanager
def training_slot(tmp_path_factory, processes: int):
  """Holds `processes` of the TRAINING_SLOTS locks (flocks shared by all
  xdist workers of the session) for a test that starts that many training
  processes at once: all of them, taken in order, or any one that is free."""
  base = tmp_path_factory.getbasetemp().parent
  with contextlib.ExitStack() as stack:
    slots = [stack.enter_context(open(base / f"training_slot_{i}.lock", "a"))
             for i in range(TRAINING_SLOTS)]
    if processes >= TRAINING_SLOTS:
      for slot in slots:
        fcntl.flock(slot, fcntl.LOCK_EX)
    else:
      while not any(_try_lock(slot) for slot in slots):
        time.sleep(0.5)
    yield  # Closing the files releases the locks.


def _try_lock(file) -> bool:
  try:
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


def load_launch_module(name: str):
  """launch/<name>.py as a module (the launch scripts' shared set-up)."""
  launch_dir = os.fspath(ROOT / "launch")
  if launch_dir not in sys.path:
    sys.path.append(launch_dir)
  return importlib.import_module(name)


def _hook_env(hooks: dict[str, int] | None) -> dict[str, str]:
  return {f"MIXVAE_TEST_{k.upper()}": str(v) for k, v in (hooks or {}).items()}


def run(workdir: os.PathLike, flags: Sequence[str] = (), *,
        devices: int = 2, cache_dir: str | None = None,
        config: str = TEST_CONFIG, cwd: os.PathLike = ROOT,
        hooks: dict[str, int] | None = None) -> subprocess.CompletedProcess:
  """Runs launch/main.py to completion; stdout and stderr as text.

  `hooks`, e.g. {'kill_at_save': 20}: the test-only faults of
  tests/hooked_main.py.
  """
  return subprocess.run(command(workdir, flags, config, hooks), cwd=cwd,
                        env=env(devices, cache_dir, **_hook_env(hooks)),
                        capture_output=True, text=True, timeout=PATIENCE,
                        check=False)


class Background:
  """launch/main.py in the background, its output in a log file."""

  def __init__(self, workdir: os.PathLike, flags: Sequence[str] = (), *,
               devices: int = 2, cache_dir: str | None = None,
               log_path: os.PathLike | None = None,
               config: str = TEST_CONFIG,
               hooks: dict[str, int] | None = None):
    self.workdir = workdir
    self.log_path = pathlib.Path(log_path or f"{workdir}.log")
    self._log = open(self.log_path, "w")  # pylint: disable=consider-using-with
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        command(workdir, flags, config, hooks), cwd=ROOT,
        env=env(devices, cache_dir, **_hook_env(hooks)), stdout=self._log,
        stderr=subprocess.STDOUT)

  def output(self) -> str:
    if not self._log.closed:
      self._log.flush()
    return self.log_path.read_text()

  def wait(self, timeout: float = PATIENCE) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    finally:
      self._log.close()

  def kill(self) -> None:
    """Ends this run (only this process), e.g. after a failed test."""
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGKILL)
      self.proc.wait(timeout=60)
    self._log.close()


def wait_for(predicate: Callable[[], bool], *, timeout: float = PATIENCE,
             proc: subprocess.Popen | None = None, what: str = "condition",
             output: Callable[[], str] | None = None,
             interval: float = 0.02) -> None:
  """Polls `predicate` until true; fails early if `proc` exits first."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(
          f"process exited (rc {proc.returncode}) before {what}:\n"
          f"{output() if output else ''}"[-6000:])
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n"
                           f"{output() if output else ''}"[-6000:])
    time.sleep(interval)


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def checkpoint_steps(workdir: os.PathLike) -> list[int]:
  """The complete checkpoints (Orbax renames a finished one to its step)."""
  path = pathlib.Path(workdir) / "checkpoints"
  if not path.is_dir():
    return []
  return sorted(int(p.name) for p in path.iterdir()
                if p.is_dir() and p.name.isdigit())


def scalar_events(workdir: os.PathLike) -> list[tuple[str, int, float]]:
  """Every TensorBoard scalar event of a run: (tag, step, value), in order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  events = []
  paths = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  assert paths, f"no TensorBoard event files in {workdir}"
  for path in paths:
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.HasField("tensor"):
          array = tf.make_ndarray(value.tensor)
          if array.shape == () and np.issubdtype(array.dtype, np.number):
            events.append((value.tag, event.step, float(array)))
        elif value.HasField("simple_value"):
          events.append((value.tag, event.step, float(value.simple_value)))
  return events


def read_scalars(workdir: os.PathLike) -> dict[str, dict[int, float]]:
  """TensorBoard scalars of a run: {tag: {step: value}} (the last written)."""
  scalars = collections.defaultdict(dict)
  for tag, step, value in scalar_events(workdir):
    scalars[tag][step] = value
  return dict(scalars)


def restore(workdir: os.PathLike, abstract, step: int | None = None):
  """(TrainState, data_state) of a run's checkpoint (the newest by default)."""
  from mixvae import checkpointing  # pylint: disable=g-import-not-at-top
  manager = checkpointing.create_manager(os.fspath(workdir), max_to_keep=100,
                                         read_only=True)
  try:
    restored = checkpointing.restore(manager, abstract, step=step)
  finally:
    manager.close()
  assert restored is not None, f"no checkpoint in {workdir}"
  return restored


def assert_trees_equal(a, b, what: str = "state") -> None:
  """Bit-identical pytrees (same structure, dtypes and values)."""
  import jax  # pylint: disable=g-import-not-at-top
  paths_a = jax.tree_util.tree_flatten_with_path(a)
  paths_b = jax.tree_util.tree_flatten_with_path(b)
  assert paths_a[1] == paths_b[1], f"{what}: tree structures differ"
  differing = []
  for (path, x), (_, y) in zip(paths_a[0], paths_b[0]):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
        x, y, equal_nan=True):
      differing.append(jax.tree_util.keystr(path))
  assert not differing, (f"{what}: {len(differing)} of {len(paths_a[0])} "
                         f"leaves differ, e.g. {differing[:5]}")


def relative_distance(a, b, reference) -> float:
  """||a - b|| / ||b - reference|| over all leaves of the pytrees."""
  import jax  # pylint: disable=g-import-not-at-top
  diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y))**2))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  moved = sum(float(np.sum((np.asarray(y, np.float64) - np.asarray(r))**2))
              for y, r in zip(jax.tree.leaves(b), jax.tree.leaves(reference)))
  assert moved > 0, "the parameters did not move"
  return float(np.sqrt(diff / moved))
