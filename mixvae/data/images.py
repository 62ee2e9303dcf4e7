"""Image decoding, cropping and resizing shared by every source.

The folder source and the TFDS builder both call `load_image`, so a prepared
dataset holds exactly the pixels the folder source produces on the fly.
"""

from __future__ import annotations

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG/PNG bytes to RGB.

  Grey images are replicated to three channels, RGBA images lose their alpha
  channel (`channels=3`), 16-bit PNGs are scaled to 8 bits.

  Args:
    data: a scalar tf.string of encoded image bytes.

  Returns:
    uint8 [H, W, 3].
  """
  image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def center_crop_resize(image: tf.Tensor, resolution: int) -> tf.Tensor:
  """Crops the central square and resizes it to `resolution` x `resolution`.

  Resizing is bilinear with antialiasing (a triangle filter widened by the
  scale factor when shrinking), rounded back to uint8. A square image of the
  target size passes through unchanged.

  Args:
    image: uint8 [H, W, 3].
    resolution: output height and width.

  Returns:
    uint8 [resolution, resolution, 3].
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  top = (height - side) // 2
  left = (width - side) // 2
  square = image[top:top + side, left:left + side]

  def resize():
    resized = tf.image.resize(square, [resolution, resolution],
                              method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  out = tf.cond(tf.equal(side, resolution), lambda: square, resize)
  return tf.ensure_shape(out, [resolution, resolution, 3])


def load_image(data: tf.Tensor, resolution: int) -> tf.Tensor:
  """Decodes, centre-crops and resizes encoded image bytes.

  Args:
    data: a scalar tf.string of JPEG/PNG bytes.
    resolution: output height and width.

  Returns:
    uint8 [resolution, resolution, 3].
  """
  return center_crop_resize(decode_image(data), resolution)


def to_model_range(image: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, C] in [0, 255] -> float32 in [-1, 1]."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0
