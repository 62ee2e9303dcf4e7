"""A damaged prepared dataset: named at once, never a hang, and rebuilt."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import celebahq
from mixvae import errors
from mixvae.data import pipeline
from mixvae.data import records
from mixvae.data import sources
from mixvae.data import tfds_builder
import image_fixtures
import train_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN = 20


def _config(data_dir):
  config = celebahq.get_config("test")
  config.data.source, config.data.data_dir = "tfds", data_dir
  config.data.num_train, config.batch_size = NUM_TRAIN, 8
  return config


def _prepare(image_dir, data_dir):
  return tfds_builder.prepare(image_dir=image_dir, data_dir=data_dir,
                              resolution=image_fixtures.RESOLUTION,
                              num_train=NUM_TRAIN)["builder_dir"]


def _train_shard(path):
  return os.path.join(path, "face_folder-train.tfrecord-00000-of-00001")


def _flip_bytes_of_record(path, i):
  """Inverts 40 bytes in the middle of training record i's PNG data."""
  index = records.load_record_index(path)
  start = int(index["train/offset"][i] + index["train/length"][i] // 2)
  with open(_train_shard(path), "r+b") as f:
    f.seek(start)
    data = f.read(40)
    f.seek(start)
    f.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture
def prepared(image_dir, tmp_path):
  data_dir = str(tmp_path / "tfds")
  return data_dir, _prepare(image_dir, data_dir)


def test_truncated_shard_is_named_when_the_source_opens(prepared):
  data_dir, path = prepared
  os.truncate(_train_shard(path), 20000)
  with pytest.raises(errors.DataError) as info:
    sources.make_source(_config(data_dir))
  message = str(info.value)
  assert f"the prepared dataset {path} is damaged" in message
  assert "has 20000 bytes, its records end at byte" in message
  assert "python launch/prepare_data.py --image_dir=" in message


def test_unreadable_record_stops_the_iterator_with_the_advice(prepared):
  data_dir, path = prepared
  _flip_bytes_of_record(path, 3)
  iterator = pipeline.TrainIterator(_config(data_dir))
  with pytest.raises(errors.DataError) as info:
    for _ in range(NUM_TRAIN):  # Every record is read within an epoch.
      next(iterator)
  message = str(info.value)
  assert message.startswith(f"reading the tfds data in {path} failed: ")
  assert "{{" not in message and "Prepare it again" in message
  with pytest.raises(StopIteration):  # Closed: its threads are gone.
    next(iterator)


def test_a_launcher_exits_with_the_message_and_does_not_hang(prepared):
  """Before the fix the traceback kept the tf.data iterator alive into
  interpreter shutdown, which deadlocked (4 of 4 runs)."""
  data_dir, path = prepared
  _flip_bytes_of_record(path, 3)
  script = (
      "import sys; sys.path[:0] = ['launch', 'tests']\n"
      "import process_setup, test_damaged_data as t\n"
      "from mixvae.data import pipeline\n"
      "def main(argv):\n"
      f"  it = pipeline.TrainIterator(t._config({data_dir!r}))\n"
      f"  for _ in range({NUM_TRAIN}): next(it)\n"
      "process_setup.run(main)\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          capture_output=True, text=True,
                          timeout=train_helpers.PATIENCE)
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"error: reading the tfds data in {path} failed" in result.stderr
  assert "Traceback" not in result.stderr


def test_prepare_moves_a_damaged_dataset_aside_and_rebuilds_it(
    prepared, image_dir):
  data_dir, path = prepared
  with open(_train_shard(path), "rb") as f:
    good = f.read()
  _flip_bytes_of_record(path, 3)
  assert records.find_damage(path, records.load_record_index(path)) is None
  assert "corrupted record" in records.find_damage(
      path, records.load_record_index(path), scan=True)
  assert _prepare(image_dir, data_dir) == path
  with open(_train_shard(path), "rb") as f:
    assert f.read() == good
  aside = [n for n in os.listdir(os.path.dirname(path))
           if n.startswith("1.0.0.damaged-")]
  assert len(aside) == 1  # Moved, not deleted.
  batch = next(pipeline.TrainIterator(_config(data_dir)))
  assert np.isfinite(batch["image"]).all()
