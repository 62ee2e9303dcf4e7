"""Decode, centre-crop and resize: `load_image` serves the folder source and
the TFDS builder alike, so a prepared dataset holds the folder's pixels."""

from __future__ import annotations

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
RESIZE_MODES = ("antialias", "bilinear")  # Bilinear with / without antialias.


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG bytes -> uint8 [H, W, 3] RGB (grey replicated, alpha dropped)."""
  image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def center_crop_resize(image: tf.Tensor, resolution: int,
                       resize: str = "antialias") -> tf.Tensor:
  """uint8 [H, W, 3] -> central square -> uint8 [R, R, 3], resized bilinearly
  (half-pixel centres) with or without antialiasing, then rounded."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  top = (height - side) // 2
  left = (width - side) // 2
  square = image[top:top + side, left:left + side]

  def scale():
    resized = tf.image.resize(square, [resolution] * 2, method="bilinear",
                              antialias=resize == "antialias")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  out = tf.cond(tf.equal(side, resolution), lambda: square, scale)
  return tf.ensure_shape(out, [resolution, resolution, 3])


def load_image(data: tf.Tensor, resolution: int,
               resize: str = "antialias") -> tf.Tensor:
  """JPEG/PNG bytes -> uint8 [R, R, 3], decoded, centre-cropped, resized."""
  return center_crop_resize(decode_image(data), resolution, resize)


def to_model_range(image: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, C] in [0, 255] -> float32 in [-1, 1]."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0
