"""Listing and checking a folder of face images (local or gs://)."""

from __future__ import annotations

import dataclasses
import os
import re
import time

from absl import logging
import tensorflow as tf

from mixvae.data import images

_MAX_LISTED = 20  # Skipped files named one by one in the summary.


@dataclasses.dataclass(frozen=True)
class ScanResult:
  """What `scan_folder` found.

  Attributes:
    image_dir: the folder.
    names: the usable image file names (no directory), in listing order.
    skipped: (name, reason) for each image that could not be read or decoded.
    num_smaller: how many usable images are smaller than the resolution
      asked for (they get upsampled).
  """
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
  """The JPG/PNG file names directly inside `image_dir` (not recursive).

  Args:
    image_dir: a local or gs:// folder.

  Returns:
    File names (no directory), in listing order.

  Raises:
    FileNotFoundError: when the folder is missing or holds no JPG/PNG file.
  """
  if not image_dir:
    raise FileNotFoundError(
        "no image folder given: set config.data.image_dir (or --image_dir) to "
        "the folder that holds the CelebA-HQ JPG/PNG files")
  if not tf.io.gfile.isdir(image_dir):
    raise FileNotFoundError(
        f"image folder {image_dir!r} does not exist or is not a folder; set "
        "config.data.image_dir (or --image_dir) to the folder that holds the "
        "CelebA-HQ JPG/PNG files")
  entries = [e.rstrip("/") for e in tf.io.gfile.listdir(image_dir)]
  names = [e for e in entries
           if os.path.splitext(e)[1].lower() in images.IMAGE_EXTENSIONS]
  if not names:
    others = ", ".join(sorted(entries)[:5])
    raise FileNotFoundError(
        f"image folder {image_dir!r} holds no images (looked for "
        f"{', '.join('*' + e for e in images.IMAGE_EXTENSIONS)}, any case, "
        f"directly in the folder; found {len(entries)} other entries"
        f"{': ' + others if others else ''}). Point config.data.image_dir "
        "(or --image_dir) at the folder of face images itself.")
  return names


def _decode_error(path: str) -> str:
  """Decodes one file eagerly and returns why it fails ('' if it does not)."""
  try:
    images.decode_image(tf.io.read_file(path))
  except (tf.errors.OpError, ValueError) as e:
    message = getattr(e, "message", str(e))
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:.*", "", message).strip()
    return message.splitlines()[0] if message else type(e).__name__
  return ""


def scan_folder(image_dir: str, *, resolution: int = 0,
                num_parallel_calls: int = tf.data.AUTOTUNE) -> ScanResult:
  """Lists the images of a folder and decodes each once to find bad files.

  Every file is read and fully decoded with the same decoder the input
  pipeline uses, in parallel, so a truncated or corrupt image is found here
  (reported by name and skipped) rather than crashing a run hours in. This
  costs one decode per image: seconds for 30,000 256x256 JPEGs on a
  many-core host, a few minutes for 1024x1024 originals on two cores.

  Args:
    image_dir: a local or gs:// folder of JPG/PNG images.
    resolution: if > 0, count the images smaller than this.
    num_parallel_calls: decode parallelism.

  Returns:
    A ScanResult.

  Raises:
    FileNotFoundError: for a missing or empty folder, or one in which no
      image decodes.
  """
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
    raise FileNotFoundError(
        f"none of the {len(names)} image files in {image_dir!r} could be "
        f"decoded ({result.summary()}); check the folder's contents")
  return result
