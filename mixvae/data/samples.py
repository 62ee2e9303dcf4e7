"""Stand-in image folders (not faces) cut from scikit-image's photos, for
input benchmarks: decode cost depends only on size and format."""

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
  """Writes 00000.jpg ... (or .png), random square crops; keeps existing."""
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
