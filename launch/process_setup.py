"""Set-up the `launch/` entry points share: multi-host flags, logging."""

from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import app
from absl import flags

from mixvae import errors

FLAGS = flags.FLAGS


def define_multihost_flags() -> None:
  """--multihost and the explicit cluster flags (for hosts JAX cannot detect)."""
  flags.DEFINE_bool(
      "multihost", os.environ.get("MIXVAE_MULTIHOST", "") == "1",
      "Call jax.distributed.initialize() first (TPU pods, multi-host GPU). "
      "Default from MIXVAE_MULTIHOST=1.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, "
                      "for --multihost where JAX cannot detect the cluster.")
  flags.DEFINE_integer("num_processes", None, "For --multihost without "
                       "cluster detection.")
  flags.DEFINE_integer("process_id", None, "For --multihost without cluster "
                       "detection.")


def initialize_distributed() -> None:
  """With --multihost, joins the cluster; call before anything touches JAX."""
  if not FLAGS.multihost:
    return
  import jax  # pylint: disable=g-import-not-at-top
  # Gloo gives CPU devices cross-process collectives (CPU-only clusters,
  # tests); TPUs and GPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def run(main) -> None:
  """`app.run(main)`; a `mixvae.errors.UserError` prints as one line,
  `error: <message>`, and exits with code 2 (any other error is a bug and
  keeps its traceback)."""
  def guarded(argv):
    try:
      return main(argv)
    except errors.UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  app.run(guarded)


def enable_float64_if_asked(config) -> None:
  """jax_enable_x64 for a config computing in float64, right after
  `initialize_distributed` (before any array exists); refused on TPUs."""
  if "float64" not in (config.model.dtype, config.discriminator.dtype):
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "tpu":
    raise app.UsageError(
        "model.dtype or discriminator.dtype is 'float64', which TPUs do not "
        "compute in: use 'float32' or 'bfloat16' on TPUs (float64 is a "
        "numerics reference for CPUs and GPUs)")
  jax.config.update("jax_enable_x64", True)


def _is_closed_loop(error: BaseException | None) -> bool:
  """The RuntimeError of a write callback of a failed save that lands after
  Orbax closed its event loop (harmless: the save already failed)."""
  return isinstance(error, RuntimeError) and "Event loop is closed" in str(
      error)


class _QuietLibraries(py_logging.Filter):
  """Drops Orbax's per-save INFO lines and its tracebacks of a failed write
  (`mixvae.checkpointing` reports those in one line), and the closed-loop
  errors of its write threads (logged by concurrent.futures); other warnings
  and errors still show."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    if record.name == "concurrent.futures":
      return not _is_closed_loop(error)
    if "/orbax/" not in record.pathname:
      return True
    return record.levelno >= py_logging.WARNING and not (
        error and errors.write_failure(error))


def quiet_library_logs() -> None:
  """Keeps the absl log readable, and TensorFlow's C++ logs quiet."""
  for name in ("absl", "concurrent.futures"):
    py_logging.getLogger(name).addFilter(_QuietLibraries())
  # TensorStore reports the closed-loop errors of its own write callbacks
  # through sys.unraisablehook.
  unraisablehook = sys.unraisablehook
  sys.unraisablehook = lambda info: (
      None if _is_closed_loop(info.exc_value) else unraisablehook(info))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
