"""Listing and checking a folder of face images (local or gs://)."""

from __future__ import annotations

import dataclasses
import os
import re
import time

from absl import logging
import tensorflow as tf

from mixvae import errors
from mixvae.data import images
from mixvae.data import splits

_MAX_LISTED = 20  # Skipped files named one by one in the summary.


@dataclasses.dataclass(frozen=True)
class ScanResult:
  """Usable names (listing order), skipped (name, reason), num_smaller < R."""
  image_dir: str
  names: tuple[str, ...]
  skipped: tuple[tuple[str, str], ...]
  num_smaller: int = 0

  def summary(self) -> str:
    text = (f"{self.image_dir}: {len(self.names)} usable images, "
            f"{len(self.skipped)} skipped as unreadable or corrupt")
    if self.skipped:
      names = ", ".join(n for n, _ in self.skipped[:_MAX_LISTED])
      more = len(self.skipped) - _MAX_LISTED
      text += f" ({names}{f' and {more} more' if more > 0 else ''})"
    return text


def list_image_names(image_dir: str) -> list[str]:
  """The JPG/PNG names directly in a folder, in listing order."""
  if not image_dir:
    raise errors.MissingError(
        "no image folder given: set config.data.image_dir (or --image_dir) to "
        "the folder that holds the CelebA-HQ JPG/PNG files")
  if not tf.io.gfile.isdir(image_dir):
    raise errors.MissingError(
        f"image folder {image_dir!r} does not exist or is not a folder; set "
        "config.data.image_dir (or --image_dir) to the folder that holds the "
        "CelebA-HQ JPG/PNG files")
  entries = [e.rstrip("/") for e in tf.io.gfile.listdir(image_dir)]
  names = [e for e in entries
           if os.path.splitext(e)[1].lower() in images.IMAGE_EXTENSIONS]
  if not names:
    others = ", ".join(sorted(entries)[:5])
    raise errors.MissingError(
        f"image folder {image_dir!r} holds no images (looked for "
        f"{', '.join('*' + e for e in images.IMAGE_EXTENSIONS)}, any case, "
        f"directly in the folder; found {len(entries)} other entries"
        f"{': ' + others if others else ''}). Point config.data.image_dir "
        "(or --image_dir) at the folder of face images itself.")
  return names


def _decode_error(path: str) -> str:
  """Why one file fails to decode eagerly ('' if it does not)."""
  try:
    images.decode_image(tf.io.read_file(path))
  except (tf.errors.OpError, ValueError) as e:
    message = getattr(e, "message", str(e))
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:.*", "", message).strip()
    return message.splitlines()[0] if message else type(e).__name__
  return ""


def scan_folder(image_dir: str, *, resolution: int = 0,
                num_parallel_calls: int = tf.data.AUTOTUNE) -> ScanResult:
  """Decodes every image once, in parallel, so a corrupt one shows now, not
  hours into a run; corrupt ones are skipped by name."""
  names = list_image_names(image_dir)
  paths = [os.path.join(image_dir, n) for n in names]
  start = time.time()
  logging.info("Checking %d images in %s (one decode each)...", len(names),
               image_dir)

  def check(i, path):
    shape = tf.shape(images.decode_image(tf.io.read_file(path)))
    return i, tf.minimum(shape[0], shape[1])

  dataset = (tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
             .map(check, num_parallel_calls=num_parallel_calls,
                  deterministic=False)
             .ignore_errors())
  sides = {}
  for i, side in dataset.as_numpy_iterator():
    sides[int(i)] = int(side)
    if len(sides) % 5000 == 0:
      logging.info("  %d images checked", len(sides))
  skipped = []
  for i, (name, path) in enumerate(zip(names, paths)):
    if i not in sides:
      reason = _decode_error(path) or "could not be read"
      logging.warning("Skipping unreadable or corrupt image %s: %s", path,
                      reason)
      skipped.append((name, reason))
  usable = tuple(n for i, n in enumerate(names) if i in sides)
  num_smaller = sum(1 for s in sides.values() if 0 < resolution and
                    s < resolution)
  result = ScanResult(image_dir=image_dir, names=usable,
                      skipped=tuple(skipped), num_smaller=num_smaller)
  logging.info("Checked in %.1fs: %s", time.time() - start, result.summary())
  if num_smaller:
    logging.warning("%d images are smaller than %dx%d and will be upsampled.",
                    num_smaller, resolution, resolution)
  if not usable:
    raise errors.MissingError(
        f"none of the {len(names)} image files in {image_dir!r} could be "
        f"decoded ({result.summary()}); check the folder's contents")
  return result


def scan_and_split(image_dir: str, *, resolution: int, split: str, sort: str,
                   num_train: int) -> tuple[ScanResult, list[str], list[str]]:
  """`scan_folder`, then `splits.split_names`: (scan, train, test names)."""
  scan = scan_folder(image_dir, resolution=resolution)
  train, test = splits.split_names(scan.names, split=split, sort=sort,
                                   num_train=num_train,
                                   where=f"image folder {image_dir!r}")
  return scan, train, test
