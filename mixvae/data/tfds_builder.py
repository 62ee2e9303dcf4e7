"""The TFDS builder `face_folder`: a folder of face images -> train/test.

Not TFDS's `celeb_a_hq`: its tars are gone, it is shuffled, one split. Stores
lossless PNGs in split order, one config per (resolution, split, sort,
num_train, resize).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from mixvae import errors
from mixvae.data import folder
from mixvae.data import images
from mixvae.data import records
from mixvae.data import splits

NAME = "face_folder"
VERSION = tfds.core.Version("1.0.0")
PREPARE_COMMAND = "python launch/prepare_data.py"


def config_name(*, resolution: int, split: str, sort: str, num_train: int,
                resize: str = "antialias") -> str:
  """E.g. `r256_paper_alphabetical_n24000`; `p80` for num_train=0; a
  `_bilinear` suffix for resize='bilinear'."""
  count = f"n{num_train}" if num_train else "p80"
  suffix = "" if resize == "antialias" else f"_{resize}"
  return f"r{resolution}_{split}_{sort}_{count}{suffix}"


@dataclasses.dataclass(eq=False)
class FaceFolderConfig(tfds.core.BuilderConfig):
  """Resolution and split rule of a prepared face dataset."""
  resolution: int = 256
  split: str = "paper"
  sort: str = "alphabetical"
  num_train: int = 24000
  resize: str = "antialias"


def make_config(*, resolution: int = 256, split: str = "paper",
                sort: str = "alphabetical", num_train: int = 24000,
                resize: str = "antialias") -> FaceFolderConfig:
  """The validated FaceFolderConfig."""
  if split not in splits.SPLITS:
    raise errors.ConfigError(f"unknown split {split!r}; choose one of "
                             f"{list(splits.SPLITS)}")
  if sort not in splits.SORTS:
    raise errors.ConfigError(f"unknown sort {sort!r}; choose one of "
                             f"{list(splits.SORTS)}")
  if resize not in images.RESIZE_MODES:
    raise errors.ConfigError(f"unknown resize {resize!r}; choose one of "
                             f"{list(images.RESIZE_MODES)}")
  if resolution < 1:
    raise errors.ConfigError(f"resolution must be positive, got {resolution}")
  name = config_name(resolution=resolution, split=split, sort=sort,
                     num_train=num_train, resize=resize)
  return FaceFolderConfig(
      name=name, version=VERSION, resolution=resolution, split=split,
      sort=sort, num_train=num_train, resize=resize,
      description=(f"{resolution}x{resolution} faces, {split} split, {sort} "
                   f"sort, num_train={num_train or '80%'}, {resize} resize"))


class FaceFolder(tfds.core.GeneratorBasedBuilder):
  """A folder of face images as `train` and `test` splits, in split order."""

  name = NAME
  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the folder of face images (e.g. CelebA-HQ's 30,000 JPG/PNG "
      f"files) as the manual dir: {PREPARE_COMMAND} --image_dir=FOLDER "
      "--data_dir=DATA_DIR.")

  scan_result: folder.ScanResult | None = None

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Face images from a folder, centre-cropped and resized "
                     "bilinearly, split after sorting the file names "
                     "(mixvae)."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 3),
                                         encoding_format="png"),
            "file_name": tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    image_dir = os.fspath(dl_manager.manual_dir)
    self.scan_result, train, test = folder.scan_and_split(
        image_dir, resolution=config.resolution, split=config.split,
        sort=config.sort, num_train=config.num_train)
    logging.info("Split: %d train, %d test images", len(train), len(test))
    return {
        "train": self._generate_examples(image_dir, train),
        "test": self._generate_examples(image_dir, test),
    }

  def _generate_examples(self, image_dir, names):
    """(position, example) in split order, PNG-encoded in parallel."""
    config = self.builder_config
    paths = [os.path.join(image_dir, n) for n in names]

    def encode(path):
      return tf.io.encode_png(images.load_image(
          tf.io.read_file(path), config.resolution, config.resize))

    dataset = (tf.data.Dataset.from_tensor_slices(paths)
               .map(encode, num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
               .prefetch(tf.data.AUTOTUNE))
    for i, (name, png) in enumerate(zip(names, dataset.as_numpy_iterator())):
      if i and i % 5000 == 0:
        logging.info("  %d / %d images encoded", i, len(names))
      yield i, {"image": png, "file_name": name}


def builder_dir(data_dir: str, config: FaceFolderConfig) -> str:
  """`DATA_DIR/face_folder/CONFIG/VERSION`."""
  return os.path.join(data_dir, NAME, config.name, str(VERSION))


def prepare_command(*, image_dir: str = "FOLDER", data_dir: str,
                    config: FaceFolderConfig) -> str:
  """The command line that prepares `config` into `data_dir`."""
  return (f"{PREPARE_COMMAND} --image_dir={image_dir} --data_dir={data_dir} "
          f"--resolution={config.resolution} --split={config.split} "
          f"--sort={config.sort} --num_train={config.num_train} "
          f"--resize={config.resize}")


def prepare(*, image_dir: str, data_dir: str, resolution: int = 256,
            split: str = "paper", sort: str = "alphabetical",
            num_train: int = 24000, resize: str = "antialias") -> dict:
  """Builds (or reuses) the dataset; skipped is None when reused."""
  config = make_config(resolution=resolution, split=split, sort=sort,
                       num_train=num_train, resize=resize)
  folder.list_image_names(image_dir)  # Clear errors before TFDS starts.
  target = builder_dir(data_dir, config)
  if tf.io.gfile.exists(os.path.join(target, records.RECORD_INDEX_FILE)):
    damage = records.find_damage(target, records.load_record_index(target),
                                 scan=True)
    if damage:
      aside = f"{target}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
      logging.warning("%s is damaged (%s); moved it to %s, preparing it "
                      "again.", target, damage, aside)
      tf.io.gfile.rename(target, aside)
  builder = FaceFolder(data_dir=data_dir, config=config)
  reused = tf.io.gfile.exists(os.path.join(target, "dataset_info.json"))
  if reused:
    logging.info("%s is already prepared; reusing it.", target)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=image_dir))
  index_path = os.path.join(target, records.RECORD_INDEX_FILE)
  if not tf.io.gfile.exists(index_path):
    records.build_record_index(target, builder.info)
  scan = builder.scan_result
  summary = dict(
      builder_dir=target, config=config.name,
      num_train=builder.info.splits["train"].num_examples,
      num_test=builder.info.splits["test"].num_examples,
      skipped=None if scan is None else list(scan.skipped))
  logging.info("Prepared %s: %d train, %d test%s", target,
               summary["num_train"], summary["num_test"],
               "" if scan is None else f"; {scan.summary()}")
  return summary
