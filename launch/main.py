r"""Trains the paper's VAE-GAN (or a baseline) in a work directory.

  python launch/main.py --config=configs/demo.py --workdir=workdirs/demo
  python launch/main.py --config=configs/celebahq.py --workdir=gs://b/run1 \
      --config.data.data_dir=gs://b/tfds

Starting again with the same --workdir resumes from its newest checkpoint.
On a multi-host TPU pod slice run the same command on every host with
--multihost (or MIXVAE_MULTIHOST=1).
"""

import logging as py_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: "
    "configs/celebahq.py:reference", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                    "events and images (local or gs://).")
flags.DEFINE_bool("multihost", os.environ.get("MIXVAE_MULTIHOST", "") == "1",
                  "Call jax.distributed.initialize() first (TPU pods, "
                  "multi-host GPU). Default from MIXVAE_MULTIHOST=1.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, "
                    "for --multihost where JAX cannot detect the cluster.")
flags.DEFINE_integer("num_processes", None, "For --multihost without "
                     "cluster detection.")
flags.DEFINE_integer("process_id", None, "For --multihost without cluster "
                     "detection.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Drops Orbax's per-save INFO lines; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or (
        "/orbax/" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  py_logging.getLogger("absl").addFilter(_QuietLibraries())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    # Before anything else touches JAX. Gloo gives CPU devices cross-process
    # collectives (CPU-only clusters, tests); TPUs and GPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  from mixvae import train  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d of %d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
