r"""Builds mixvae's TFDS dataset from a folder of face images.

  python launch/prepare_data.py --image_dir=/data/celebahq --data_dir=/data/tfds
  python launch/prepare_data.py --image_dir=/data/celebamask-hq/CelebA-HQ-img \
      --data_dir=gs://BUCKET/tfds --resolution=256 --sort=natural

Reads every JPG/PNG directly in --image_dir (corrupt files are reported by
name and skipped), sorts the names, splits them (--split=paper: the first
--num_train for training, the rest for test; --split=reference: the released
code's seeded shuffle), centre-crops and resizes each image to --resolution
with antialiasing, and writes `face_folder/CONFIG/1.0.0/` under --data_dir.
Train with --config.data.source=tfds --config.data.data_dir=DATA_DIR and the
same resolution/split/sort/num_train.
"""

from absl import flags

import process_setup
from mixvae.data import splits
from mixvae.data import tfds_builder

_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None, "Folder of JPG/PNG face images (local or gs://).",
    required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data_dir to write to (local or gs://).",
    required=True)
_RESOLUTION = flags.DEFINE_integer("resolution", 256, "Output height/width.")
_SPLIT = flags.DEFINE_enum("split", "paper", list(splits.SPLITS),
                           "Train/test rule.")
_SORT = flags.DEFINE_enum("sort", "alphabetical", list(splits.SORTS),
                          "File-name order ('natural': 2.jpg before 10.jpg).")
_NUM_TRAIN = flags.DEFINE_integer(
    "num_train", 24000, "Training images; 0 means 80% of the images.")
_RESIZE = flags.DEFINE_enum(
    "resize", "antialias", ["antialias", "bilinear"],
    "Bilinear resizing with or without antialiasing (config.data.resize).")


def main(argv):
  del argv
  summary = tfds_builder.prepare(
      image_dir=_IMAGE_DIR.value, data_dir=_DATA_DIR.value,
      resolution=_RESOLUTION.value, split=_SPLIT.value, sort=_SORT.value,
      num_train=_NUM_TRAIN.value, resize=_RESIZE.value)
  skipped = summary["skipped"]
  print(f"Prepared {summary['builder_dir']}: {summary['num_train']} train, "
        f"{summary['num_test']} test images"
        + ("" if skipped is None else
           f"; {len(skipped)} unreadable or corrupt images skipped"
           + (": " + ", ".join(n for n, _ in skipped) if skipped else "")))
  print("Train with: --config.data.source=tfds "
        f"--config.data.data_dir={_DATA_DIR.value} "
        f"--config.data.resolution={_RESOLUTION.value} "
        f"--config.data.split={_SPLIT.value} --config.data.sort={_SORT.value} "
        f"--config.data.num_train={_NUM_TRAIN.value} "
        f"--config.data.resize={_RESIZE.value}")


if __name__ == "__main__":
  process_setup.run(main)
