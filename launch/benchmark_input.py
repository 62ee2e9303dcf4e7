r"""Measures how many training images per second the input pipeline delivers.

  python launch/benchmark_input.py --config=configs/celebahq.py \
      --config.data.source=folder --config.data.image_dir=/data/celebahq
  # No CelebA-HQ at hand: time a stand-in folder of 1024x1024 JPEGs.
  python launch/benchmark_input.py --config=configs/celebahq.py \
      --sample_dir=/tmp/samples1024 --sample_count=512 --sample_size=1024

Times decode, centre-crop/resize, flip, scaling and batching at
config.data.resolution (256 for the default config) and prints images/s and
the number of host cores used.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from mixvae.data import samples
from mixvae.data import throughput

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed batches.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batches first.")
_TO_DEVICE = flags.DEFINE_bool("to_device", False,
                               "Also copy each batch to the devices.")
_SAMPLE_DIR = flags.DEFINE_string(
    "sample_dir", "", "If set, write a stand-in folder of JPEGs cut from "
    "scikit-image's photos here and read it with the folder source.")
_SAMPLE_COUNT = flags.DEFINE_integer("sample_count", 512, "Stand-in images.")
_SAMPLE_SIZE = flags.DEFINE_integer("sample_size", 1024,
                                    "Stand-in image size.")


def main(argv):
  del argv
  config = _CONFIG.value
  if _SAMPLE_DIR.value:
    samples.write_sample_folder(_SAMPLE_DIR.value, count=_SAMPLE_COUNT.value,
                                size=_SAMPLE_SIZE.value)
    config.data.source = "folder"
    config.data.image_dir = _SAMPLE_DIR.value
    config.data.num_train = 0
  result = throughput.measure_input_rate(
      config, steps=_STEPS.value, warmup=_WARMUP.value,
      to_device=_TO_DEVICE.value)
  print(f"source: {result['source']}")
  print(f"batch per process: {result['batch_size']}, image batch shape "
        f"{result['image_shape']}")
  print(f"{result['images_per_second']:.1f} images/s "
        f"({result['images']} images in {result['seconds']:.2f}s) at "
        f"{result['resolution']}x{result['resolution']}")
  print(f"host cores used: {result['host_cores']} (os.cpu_count()="
        f"{os.cpu_count()}, tf.data threads: "
        f"{config.data.num_threads or 'all'})")


if __name__ == "__main__":
  app.run(main)
