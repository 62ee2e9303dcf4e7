"""Stand-in image folders built from scikit-image's bundled photos.

For benchmarks and demos on machines without CelebA-HQ: JPEG (or PNG) files
of a chosen size cut from the photos that ship with scikit-image (no
download). They are not faces; decode cost depends on size and format, which
is what the input benchmark measures.
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "retina", "colorwheel", "cat")


def _photos() -> list[np.ndarray]:
  import skimage.data  # pylint: disable=g-import-not-at-top
  out = []
  for name in PHOTOS:
    loader = getattr(skimage.data, name, None)
    if loader is None:
      continue
    photo = np.asarray(loader())
    if photo.ndim == 3 and photo.shape[-1] == 3:
      out.append(photo)
  return out


def write_sample_folder(path: str, *, count: int, size: int,
                        image_format: str = "jpg", quality: int = 95,
                        seed: int = 0) -> list[str]:
  """Writes `count` size x size images named 00000.jpg ... into `path`.

  Each is a random square crop of a bundled photo resized to `size`, so the
  content (and hence the JPEG entropy) varies. Existing files are kept.

  Args:
    path: the folder (created if missing).
    count: number of images.
    size: height and width in pixels.
    image_format: 'jpg' or 'png'.
    quality: JPEG quality.
    seed: crop seed.

  Returns:
    The file names.
  """
  os.makedirs(path, exist_ok=True)
  photos = _photos()
  rng = np.random.RandomState(seed)
  names = []
  for i in range(count):
    name = f"{i:05d}.{image_format}"
    names.append(name)
    target = os.path.join(path, name)
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    side = rng.randint(min(h, w) // 2, min(h, w) + 1)
    top, left = rng.randint(0, h - side + 1), rng.randint(0, w - side + 1)
    if os.path.exists(target):
      continue
    image = Image.fromarray(photo[top:top + side, left:left + side]).resize(
        (size, size), Image.Resampling.BICUBIC)
    if image_format == "jpg":
      image.save(target, quality=quality)
    else:
      image.save(target)
  logging.info("Sample folder %s: %d %dx%d %s images", path, count, size,
               size, image_format)
  return names
