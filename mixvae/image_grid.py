"""Image grids for TensorBoard and PNG files."""

from __future__ import annotations

import math

from etils import epath
import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps images in [-1, 1] (any float array) to uint8 [0, 255], clipping."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, *, columns: int | None = None,
              padding: int = 2, upscale: int = 1) -> np.ndarray:
  """Tiles images [N, H, W, C] in [-1, 1], white `padding` between them.

  Returns uint8 [rows * (H' + p) + p, columns * (W' + p) + p, C], H' = H *
  `upscale` (nearest neighbour); columns default to ceil(sqrt(N)).
  """
  images = to_uint8(images)
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  n, h, w, c = images.shape
  columns = columns or max(1, math.ceil(math.sqrt(n)))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + padding) + padding,
                  columns * (w + padding) + padding, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(image: np.ndarray, path: epath.PathLike) -> None:
  """Writes a uint8 [H, W, C] image (C = 1 or 3) as a PNG file."""
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  with epath.Path(path).open("wb") as f:
    Image.fromarray(image).save(f, format="PNG")
