"""'patches': square crops of the RGB photographs scikit-image bundles.

A natural-image set with no download, for measuring the paper's claims
(textures, edges, fur and hair-like detail are where VAEs blur). Whole
photographs are held out for the test split, so no test pixel is seen in
training:

  train: astronaut, hubble_deep_field, immunohistochemistry, retina, rocket,
         and both views of the stereo motorcycle pair;
  test:  chelsea (a cat: fur) and coffee.

Crop i of a split is a pure function of (split, i): a photograph (uniform),
a side s = R * 4^u (u uniform in [0, 1), capped by the photograph's short
side) and a position (uniform), each drawn from its own generator seeded with
(SEED, split, what), so the first n crops of a longer set are the shorter
set. The crop is resized to R x R like every image of mixvae
(`images.center_crop_resize`, with `config.data.resize`; rounded).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mixvae.data import images

PHOTOS = {
    "train": ("astronaut", "hubble_deep_field", "immunohistochemistry",
              "retina", "rocket", "motorcycle_left", "motorcycle_right"),
    "test": ("chelsea", "coffee"),
}
ALL_PHOTOS = PHOTOS["train"] + PHOTOS["test"]
# (height, width), checked when the photographs are loaded.
SHAPES = {"astronaut": (512, 512), "hubble_deep_field": (872, 1000),
          "immunohistochemistry": (512, 512), "retina": (1411, 1411),
          "rocket": (427, 640), "motorcycle_left": (500, 741),
          "motorcycle_right": (500, 741), "chelsea": (300, 451),
          "coffee": (400, 600)}
MAX_RESOLUTION = min(min(s) for s in SHAPES.values())
SEED = 0
MAX_ZOOM = 4  # Crop sides from R to 4R pixels (log-uniform).


def load_photo(name: str) -> np.ndarray:
  """A bundled photograph as uint8 [H, W, 3]."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  if name.startswith("motorcycle_"):
    left, right, _ = skimage.data.stereo_motorcycle()
    return left if name == "motorcycle_left" else right
  return getattr(skimage.data, name)()


def crop_boxes(split: str, num: int, resolution: int) -> np.ndarray:
  """int32 [num, 4]: (photo, top, left, side) of each crop of `split`; photo
  indexes `ALL_PHOTOS`."""
  names = PHOTOS[split]
  shapes = np.array([SHAPES[n] for n in names])
  draws = [np.random.default_rng([SEED, ("train", "test").index(split), what])
           .random(num) for what in range(4)]
  photo = np.minimum((draws[0] * len(names)).astype(np.int64), len(names) - 1)
  height, width = shapes[photo, 0], shapes[photo, 1]
  side = np.minimum(np.round(resolution * MAX_ZOOM ** draws[1]),
                    np.minimum(height, width)).astype(np.int64)
  top = (draws[2] * (height - side + 1)).astype(np.int64)
  left = (draws[3] * (width - side + 1)).astype(np.int64)
  photo = np.array([ALL_PHOTOS.index(n) for n in names])[photo]
  return np.stack([photo, top, left, side], axis=1).astype(np.int32)


def crop_names(boxes: np.ndarray) -> tuple[str, ...]:
  """'<index>:<photo>@<top>,<left>+<side>' of each crop."""
  return tuple(f"{i}:{ALL_PHOTOS[p]}@{t},{l}+{s}"
               for i, (p, t, l, s) in enumerate(boxes))


def photo_stack() -> np.ndarray:
  """uint8 [len(ALL_PHOTOS), H_max, W_max, 3], each photograph top-left."""
  stack = np.zeros((len(ALL_PHOTOS), *np.max(list(SHAPES.values()), axis=0),
                    3), np.uint8)
  for i, name in enumerate(ALL_PHOTOS):
    photo = load_photo(name)
    assert photo.shape[:2] == SHAPES[name], (name, photo.shape)
    stack[i, :photo.shape[0], :photo.shape[1]] = photo
  return stack


def decode(stack: tf.Tensor, box: tf.Tensor, resolution: int,
           resize: str) -> tf.Tensor:
  """int32 [4] box of `stack` -> uint8 [R, R, 3]."""
  photo, top, left, side = tf.unstack(box)
  crop = tf.slice(stack, tf.stack([photo, top, left, 0]),
                  tf.stack([1, side, side, 3]))[0]
  return images.center_crop_resize(crop, resolution, resize)
