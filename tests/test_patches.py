"""The 'patches' source: a fixed list of crops, whole photographs held out for
test, and the input pipeline's guarantees (determinism, exact resume, each
test crop once)."""

import numpy as np
import pytest
import tensorflow as tf

from configs import patches as PATCHES
from mixvae import data
from mixvae import errors
from mixvae.data import patches
from mixvae.data import sources

R = 32
NUM_TRAIN, NUM_TEST = 48, 37


def make_config(**fields):
  config = PATCHES.get_config()
  config.data.update(dict(dict(num_train=NUM_TRAIN, num_test=NUM_TEST),
                          **fields))
  config.batch_size = 16
  return config


@pytest.fixture(scope="module")
def source():
  return sources.make_source(make_config())


def _pixels(source, split, indices):
  records = source.fetch(split, tf.constant(indices, tf.int64))
  return np.stack([source.decode(r).numpy() for r in records])


def test_crops_are_a_fixed_list_and_a_longer_one_extends_it():
  for split in ("train", "test"):
    short = patches.crop_boxes(split, 50, R)
    np.testing.assert_array_equal(short, patches.crop_boxes(split, 50, R))
    np.testing.assert_array_equal(short,
                                  patches.crop_boxes(split, 2000, R)[:50])
  assert not np.array_equal(patches.crop_boxes("train", 50, R),
                            patches.crop_boxes("test", 50, R))


@pytest.mark.parametrize("split", ["train", "test"])
def test_crops_lie_inside_their_split_s_photographs(split):
  boxes = patches.crop_boxes(split, 5000, R)
  names = [patches.ALL_PHOTOS[p] for p in boxes[:, 0]]
  assert set(names) == set(patches.PHOTOS[split])  # Every one, no other.
  height, width = np.array([patches.SHAPES[n] for n in names]).T
  photo, top, left, side = boxes.T
  del photo
  assert (side >= R).all() and (side <= patches.MAX_ZOOM * R).all()
  assert (top >= 0).all() and (top + side <= height).all()
  assert (left >= 0).all() and (left + side <= width).all()
  assert len(np.unique(side)) > 50  # Log-uniform scales, not one size.


def test_test_photographs_are_not_training_photographs():
  assert not set(patches.PHOTOS["train"]) & set(patches.PHOTOS["test"])
  stack = patches.photo_stack()  # Also checks every photograph's shape.
  digests = {name: hash(stack[i].tobytes())
             for i, name in enumerate(patches.ALL_PHOTOS)}
  assert len(set(digests.values())) == len(patches.ALL_PHOTOS)


def test_source_pixels(source):
  assert (source.num_examples("train"), source.num_examples("test")) == (
      NUM_TRAIN, NUM_TEST)
  pixels = _pixels(source, "test", [0, 1, 2])
  assert pixels.shape == (3, R, R, 3) and pixels.dtype == np.uint8
  # Crop 0 by hand: the photograph's box, resized like every mixvae image.
  photo, top, left, side = patches.crop_boxes("test", 1, R)[0]
  crop = patches.load_photo(patches.ALL_PHOTOS[photo])[
      top:top + side, left:left + side]
  expected = tf.image.resize(crop, [R, R], antialias=True).numpy()
  np.testing.assert_array_equal(
      pixels[0], np.clip(np.round(expected), 0, 255).astype(np.uint8))
  assert len(set(source.names["test"])) == NUM_TEST


def test_training_serves_only_training_crops(source):
  config = make_config(flip=False)
  it = data.TrainIterator(config, source=source)
  train = _pixels(source, "train", list(range(NUM_TRAIN)))
  test = _pixels(source, "test", list(range(NUM_TEST)))
  row = {x.tobytes(): i for i, x in enumerate(train)}
  seen = []
  for _ in range(NUM_TRAIN // config.batch_size):  # One epoch.
    images = np.reshape(next(it)["image"], (-1, R, R, 3))
    pixels = np.round((images + 1) * 127.5).astype(np.uint8)
    seen.extend(row[x.tobytes()] for x in pixels)  # KeyError: not a crop.
  assert sorted(seen) == list(range(NUM_TRAIN))
  assert not any(x.tobytes() in row for x in test)


def test_batches_are_deterministic_and_resume_exactly(source):
  config = make_config()
  first, second = (data.TrainIterator(config, source=source) for _ in "ab")
  np.testing.assert_array_equal(next(first)["image"], next(second)["image"])
  next(first)
  state = {k: np.array(v) for k, v in first.get_state().items()}
  remaining = [next(first) for _ in range(3)]
  resumed = data.TrainIterator(config, source=source, state=state,
                               start_step=2)
  for x, y in zip(remaining, [next(resumed) for _ in range(3)]):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["index"], y["index"])


def test_each_test_crop_is_evaluated_once(source):
  config = make_config(eval_batch_size=16)
  seen = []
  for k in range(2):
    for batch in data.EvalIterator(config, source=source, process_index=k,
                                   process_count=2, local_device_count=2):
      valid = np.reshape(batch["mask"], (-1,))
      seen.extend(np.reshape(batch["index"], (-1,))[valid].tolist())
  assert sorted(seen) == list(range(NUM_TEST))


def test_bad_sizes_are_config_errors():
  with pytest.raises(errors.ConfigError, match="num_test=0"):
    sources.make_source(make_config(num_test=0))
  config = make_config()
  config.model.resolution = 512
  with pytest.raises(errors.ConfigError, match="at most 300"):
    sources.make_source(config)
