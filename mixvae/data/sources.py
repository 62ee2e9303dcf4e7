"""The data sources selected by `config.data.source`.

  'tfds': the dataset prepared by `launch/prepare_data.py`, read by record
    index from a local or gs:// `config.data.data_dir`.
  'folder': JPG/PNG files of `config.data.image_dir`, split by the same rule
    and each checked once when the source is built.
  'embedded': scikit-image's 100 LFW face crops (25x25 grey), replicated to
    RGB and resized: a smoke-scale demo needing no download, not CelebA-HQ.
  'patches': crops of the RGB photographs scikit-image bundles, whole
    photographs held out for test (mixvae/data/patches.py; no download).

`fetch` (example indices -> records) runs per batch; `decode` (one record ->
uint8 [R, R, 3]) in parallel in tf.data.
"""

from __future__ import annotations

import os
import zlib
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from mixvae import errors
from mixvae.data import folder
from mixvae.data import images
from mixvae.data import patches
from mixvae.data import records
from mixvae.data import splits
from mixvae.data import tfds_builder

SOURCES = ("tfds", "folder", "embedded", "patches")
SPLIT_NAMES = ("train", "test")
NUM_LFW_FACES = 100  # skimage.data.lfw_subset(): 100 faces, then 100 non-faces.


class Source:
  """`train` and `test` splits of uint8 [R, R, 3]; `names[split]` in order."""

  kind = ""
  location = "memory"  # Where the records are read from, for messages,
  on_damage = ""  # and what to do when one cannot be read.

  def __init__(self, *, resolution: int, names: dict[str, Sequence[str]]):
    self.resolution = resolution
    self.names = {k: tuple(v) for k, v in names.items()}

  def num_examples(self, split: str) -> int:
    return len(self.names[split])

  @property
  def fingerprint(self) -> int:
    """crc32 of R and the training names in order (folder == prepared)."""
    text = f"{self.resolution}\n" + "\n".join(self.names["train"])
    return zlib.crc32(text.encode("utf-8"))

  def fetch(self, split: str, indices: tf.Tensor) -> tf.Tensor:
    """int64 [n] example indices of `split` -> [n, ...] records."""
    raise NotImplementedError

  def decode(self, record: tf.Tensor) -> tf.Tensor:
    """One record -> uint8 [R, R, 3]."""
    raise NotImplementedError

  def describe(self) -> str:
    return (f"{self.kind} source, {self.resolution}x{self.resolution}, "
            f"{self.num_examples('train')} train / "
            f"{self.num_examples('test')} test images")


class FolderSource(Source):
  """'folder': images read directly from `image_dir`."""

  kind = "folder"

  def __init__(self, image_dir: str, *, resolution: int, split: str = "paper",
               sort: str = "alphabetical", num_train: int = 24000,
               resize: str = "antialias"):
    scan, train, test = folder.scan_and_split(
        image_dir, resolution=resolution, split=split, sort=sort,
        num_train=num_train)
    super().__init__(resolution=resolution,
                     names={"train": train, "test": test})
    self.image_dir = self.location = image_dir
    self.scan = scan
    self.resize = resize
    self._paths = {k: tf.constant([os.path.join(image_dir, n) for n in v])
                   for k, v in self.names.items()}

  def fetch(self, split, indices):
    return tf.gather(self._paths[split], indices)

  def decode(self, record):
    return images.load_image(tf.io.read_file(record), self.resolution,
                             self.resize)


class TFDSSource(Source):
  """'tfds': the dataset prepared in `data_dir`."""

  kind = "tfds"

  def __init__(self, data_dir: str, *, name: str = tfds_builder.NAME,
               resolution: int, split: str = "paper",
               sort: str = "alphabetical", num_train: int = 24000,
               resize: str = "antialias"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if name != tfds_builder.NAME:
      raise errors.ConfigError(
          f"unknown dataset name {name!r} (config.data.name); mixvae reads "
          f"only its own {tfds_builder.NAME!r} datasets, built from a folder "
          f"of images by `{tfds_builder.PREPARE_COMMAND}`. (TFDS's "
          "'celeb_a_hq' cannot be used: its files are no longer distributed "
          "and its order is shuffled, so it cannot give the paper's split.)")
    config = tfds_builder.make_config(resolution=resolution, split=split,
                                      sort=sort, num_train=num_train,
                                      resize=resize)
    command = tfds_builder.prepare_command(data_dir=data_dir or "DATA_DIR",
                                           config=config)
    if not data_dir:
      raise errors.MissingError(
          "config.data.data_dir is empty; set it to the --data_dir given to "
          f"prepare_data.py (prepare with: {command}), or read the images "
          "directly with config.data.source='folder'")
    path = tfds_builder.builder_dir(data_dir, config)
    if not tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
      found = ""
      parent = os.path.join(data_dir, tfds_builder.NAME)
      if tf.io.gfile.isdir(parent):
        found = ("; prepared configs found there: " +
                 (", ".join(sorted(c.rstrip("/") for c in
                                   tf.io.gfile.listdir(parent))) or "none"))
      raise errors.MissingError(
          f"the dataset {tfds_builder.NAME}/{config.name} was not prepared in "
          f"{data_dir!r} (looked for {path}/dataset_info.json{found}). "
          f"Prepare it with:\n  {command}\nor read the images directly with "
          "config.data.source='folder'.")
    builder = tfds.builder_from_directory(path)
    index_path = os.path.join(path, records.RECORD_INDEX_FILE)
    if not tf.io.gfile.exists(index_path):
      logging.warning("%s is missing; building it (one pass over the data).",
                      index_path)
      records.build_record_index(path, builder.info)
    index = records.load_record_index(path)
    self.on_damage = (f". Prepare it again ({tfds_builder.PREPARE_COMMAND} "
                      "checks every record and moves a damaged dataset aside)"
                      f":\n  {command}")
    damage = records.find_damage(path, index)
    if damage:
      raise errors.DataError(f"the prepared dataset {path} is damaged "
                             f"({damage}){self.on_damage}")
    super().__init__(resolution=resolution,
                     names={k: [str(n) for n in index[f"{k}/names"]]
                            for k in SPLIT_NAMES})
    self.builder_dir = self.location = path
    self._features = builder.info.features
    self._readers = {k: records.RecordReader(path, index, k)
                     for k in SPLIT_NAMES}

  def fetch(self, split, indices):
    reader = self._readers[split]

    def read(idx):
      return np.array(reader.read(idx.numpy()), dtype=object)

    out = tf.py_function(read, [indices], tf.string)
    out.set_shape(indices.shape)
    return out

  def decode(self, record):
    image = self._features.deserialize_example(record)["image"]
    return tf.ensure_shape(image, [self.resolution, self.resolution, 3])


def lfw_faces(resolution: int, resize: str = "antialias") -> np.ndarray:
  """The 100 LFW faces of scikit-image as uint8 [100, R, R, 3] RGB."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  faces = skimage.data.lfw_subset()[:NUM_LFW_FACES]  # float [100, 25, 25].
  grey = np.round(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  return np.stack([images.center_crop_resize(tf.constant(x), resolution,
                                             resize).numpy() for x in rgb])


class EmbeddedSource(Source):
  """'embedded': the LFW demo faces."""

  kind = "embedded"

  def __init__(self, *, resolution: int, split: str = "paper",
               sort: str = "alphabetical", num_train: int = 80,
               resize: str = "antialias"):
    if resolution > 64:
      logging.warning("The embedded LFW faces are 25x25; serving them at "
                      "%dx%d upsamples them.", resolution, resolution)
    pixels = lfw_faces(resolution, resize)
    all_names = [f"lfw_{i:03d}" for i in range(len(pixels))]
    train, test = splits.split_names(
        all_names, split=split, sort=sort, num_train=num_train,
        where="the embedded LFW set (skimage.data.lfw_subset, 100 faces)")
    super().__init__(resolution=resolution,
                     names={"train": train, "test": test})
    row = {n: i for i, n in enumerate(all_names)}
    self._pixels = {k: tf.constant(pixels[[row[n] for n in v]])
                    for k, v in self.names.items()}

  def fetch(self, split, indices):
    return tf.gather(self._pixels[split], indices)

  def decode(self, record):
    return record


class PatchesSource(Source):
  """'patches': `num_train` / `num_test` crops (mixvae/data/patches.py)."""

  kind = "patches"

  def __init__(self, *, resolution: int, num_train: int, num_test: int,
               resize: str = "antialias"):
    for split, num in (("train", num_train), ("test", num_test)):
      if num < 1:
        raise errors.ConfigError(
            f"config.data.num_{split}={num}: the patches source needs the "
            f"number of {split} crops (>= 1; configs/patches.py: 40000 / "
            "5000)")
    if resolution > patches.MAX_RESOLUTION:
      raise errors.ConfigError(
          f"config.data.resolution={resolution} is larger than the smallest "
          f"photograph of the patches source; use at most "
          f"{patches.MAX_RESOLUTION}")
    boxes = {"train": patches.crop_boxes("train", num_train, resolution),
             "test": patches.crop_boxes("test", num_test, resolution)}
    super().__init__(resolution=resolution, names={
        k: patches.crop_names(v) for k, v in boxes.items()})
    self._boxes = {k: tf.constant(v) for k, v in boxes.items()}
    self._stack = tf.constant(patches.photo_stack())
    self._resize = resize

  def fetch(self, split, indices):
    return tf.gather(self._boxes[split], indices)

  def decode(self, record):
    return patches.decode(self._stack, record, self.resolution, self._resize)


def resolve_resolution(config) -> int:
  """`config.data.resolution`; ValueError unless == model.resolution >= 1."""
  resolution = int(config.data.resolution)
  if int(config.model.resolution) != resolution:
    raise errors.ConfigError(
        f"config.data.resolution={resolution} but config.model.resolution="
        f"{config.model.resolution}; the images must have the model's size. "
        "Set one of them (they are linked in configs/celebahq.py).")
  if resolution < 1:
    raise errors.ConfigError(
        f"config.data.resolution must be >= 1, got {resolution}")
  return resolution


def make_source(config) -> Source:
  """The Source of `config.data`; errors say what was looked for and the fix."""
  data = config.data
  resolution = resolve_resolution(config)
  kwargs = dict(resolution=resolution, split=data.split, sort=data.sort,
                num_train=data.num_train, resize=data.resize)
  if data.source == "folder":
    source = FolderSource(data.image_dir, **kwargs)
  elif data.source == "tfds":
    source = TFDSSource(data.data_dir, name=data.name, **kwargs)
  elif data.source == "embedded":
    source = EmbeddedSource(**kwargs)
  elif data.source == "patches":
    source = PatchesSource(resolution=resolution, num_train=data.num_train,
                           num_test=data.num_test, resize=data.resize)
  else:
    raise errors.ConfigError(
        f"unknown data source {data.source!r} (config.data.source); choose "
        f"one of {list(SOURCES)}: 'tfds' (prepared by launch/prepare_data.py),"
        " 'folder' (config.data.image_dir read directly), 'embedded' (100 "
        "LFW faces bundled with scikit-image, a smoke-scale demo) or "
        "'patches' (crops of scikit-image's photographs)")
  logging.info("Data: %s", source.describe())
  return source
