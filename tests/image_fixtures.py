"""A small folder of real JPEG/PNG photos for the input-pipeline tests.

Crops of scikit-image's bundled photos (no download), with names that
exercise the sort rules (unpadded numbers: '10.jpg' sorts before '2.jpg'
alphabetically), mixed formats and modes (grey, RGBA, upper-case extension),
sizes below, at and above the test resolution, non-square shapes, and bad
files: a truncated JPEG, a text file named .jpeg, a .txt and a subfolder
(both ignored).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
import skimage.data

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "logo",
          "immunohistochemistry", "colorwheel", "coins", "moon")
NUM_GOOD = 26
CORRUPT = ("7.jpg", "3.jpeg")  # Truncated JPEG; text with an image name.
RESOLUTION = 32


def _photos() -> list[np.ndarray]:
  return [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]


def good_names() -> list[str]:
  """The decodable image names (listing order)."""
  numbers = [n for n in range(NUM_GOOD + 4) if f"{n}.jpg" not in CORRUPT
             and f"{n}.jpeg" not in CORRUPT][:NUM_GOOD - 2] + [100, 101]
  names = []
  for n in numbers:
    ext = {4: ".png", 5: ".png", 6: ".JPG"}.get(n, ".jpg")
    names.append(f"{n}{ext}")
  return names


def write_folder(path: str, *, seed: int = 0) -> list[str]:
  """Writes the fixture images into `path`; returns the good names."""
  os.makedirs(path, exist_ok=True)
  rng = np.random.RandomState(seed)
  photos = _photos()
  names = good_names()
  for i, name in enumerate(names):
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    if i == 0:
      size = (RESOLUTION, RESOLUTION)  # Already at the resolution.
    elif i == 1:
      size = (20, 28)  # Smaller than the resolution: upsampled.
    else:
      size = (rng.randint(40, 160), rng.randint(40, 160))  # Often non-square.
    top, left = rng.randint(0, h - size[0]), rng.randint(0, w - size[1])
    crop = photo[top:top + size[0], left:left + size[1]]
    image = Image.fromarray(crop)
    if name == "4.png":
      image = image.convert("L")  # Grey PNG.
    elif name == "5.png":
      image = image.convert("RGBA")  # RGBA PNG.
    elif image.mode == "RGBA":
      image = image.convert("RGB")
    if name.lower().endswith(".jpg"):
      image.save(os.path.join(path, name), quality=90)
    else:
      image.save(os.path.join(path, name))
  # Bad files: reported by name and skipped.
  with open(os.path.join(path, names[2]), "rb") as f:
    jpeg = f.read()
  with open(os.path.join(path, CORRUPT[0]), "wb") as f:
    f.write(jpeg[:len(jpeg) // 2])
  with open(os.path.join(path, CORRUPT[1]), "w") as f:
    f.write("not an image\n")
  # Ignored: not an image extension, and a subfolder.
  with open(os.path.join(path, "notes.txt"), "w") as f:
    f.write("ignored\n")
  os.makedirs(os.path.join(path, "extra"), exist_ok=True)
  Image.fromarray(photos[0][:50, :50]).save(os.path.join(path, "extra",
                                                         "999.jpg"))
  return names
