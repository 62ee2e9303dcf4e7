r"""Trains the paper's VAE-GAN (or a baseline) in a work directory.

  python launch/main.py --config=configs/demo.py --workdir=workdirs/demo
  python launch/main.py --config=configs/celebahq.py --workdir=gs://b/run1 \
      --config.data.data_dir=gs://b/tfds

Starting again with the same --workdir resumes from its newest checkpoint.
On a multi-host TPU pod slice run the same command on every host with
--multihost (or MIXVAE_MULTIHOST=1).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import process_setup

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: "
    "configs/celebahq.py:reference", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                    "events and images (local or gs://).")
process_setup.define_multihost_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  process_setup.quiet_library_logs()
  process_setup.initialize_distributed()  # Before anything touches JAX.
  process_setup.enable_float64_if_asked(FLAGS.config)
  import jax  # pylint: disable=g-import-not-at-top
  from mixvae import train  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d of %d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  process_setup.run(main)
