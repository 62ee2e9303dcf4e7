"""Input pipeline on real images: sources, splits, sharding, resume, eval."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import celebahq as CONFIGS
import image_fixtures
import train_helpers as th
from mixvae import data
from mixvae.data import images
from mixvae.data import pipeline
from mixvae.data import sources
from mixvae.data import tfds_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = image_fixtures.RESOLUTION
NUM_TRAIN = 20  # Of the fixture's 26 good images; 6 test images.


def make_config(**data_fields):
  config = CONFIGS.get_config("test")
  config.data.num_train = NUM_TRAIN
  config.batch_size = data_fields.pop("batch_size", 16)
  for key, value in data_fields.items():
    setattr(config.data, key, value)
  return config


@pytest.fixture(scope="session")
def prepared(image_dir, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  summary = tfds_builder.prepare(image_dir=image_dir, data_dir=data_dir,
                                 resolution=R, num_train=NUM_TRAIN)
  return data_dir, summary


@pytest.fixture(scope="session")
def folder_source(image_dir):
  return sources.make_source(make_config(source="folder", image_dir=image_dir))


@pytest.fixture(scope="session")
def tfds_source(prepared):
  return sources.make_source(make_config(source="tfds",
                                         data_dir=prepared[0]))


def _pixels(source, split):
  n = source.num_examples(split)
  records = source.fetch(split, tf.range(n, dtype=tf.int64))
  return np.stack([source.decode(r).numpy() for r in records])


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _flat(batch):
  """[D, b, ...] per-device leaves -> [D*b, ...]."""
  return {k: np.reshape(v, (-1,) + v.shape[2:]) for k, v in batch.items()}


# ---- Sources --------------------------------------------------------------


def test_folder_scan_skips_corrupt_and_ignores_non_images(folder_source,
                                                          prepared):
  scan = folder_source.scan
  assert sorted(n for n, _ in scan.skipped) == sorted(image_fixtures.CORRUPT)
  assert sorted(scan.names) == sorted(image_fixtures.good_names())
  assert "2 skipped" in scan.summary() and "7.jpg" in scan.summary()
  _, summary = prepared
  assert sorted(n for n, _ in summary["skipped"]) == sorted(
      image_fixtures.CORRUPT)
  assert (summary["num_train"], summary["num_test"]) == (NUM_TRAIN, 6)


def test_folder_and_prepared_tfds_agree(folder_source, tfds_source, prepared):
  good = image_fixtures.good_names()
  expected_train = sorted(good)[:NUM_TRAIN]  # Paper split, alphabetical.
  assert list(folder_source.names["train"]) == expected_train
  assert list(folder_source.names["test"]) == sorted(good)[NUM_TRAIN:]
  assert folder_source.names == tfds_source.names
  assert folder_source.fingerprint == tfds_source.fingerprint
  for split in ("train", "test"):
    a, b = _pixels(folder_source, split), _pixels(tfds_source, split)
    assert a.shape == (folder_source.num_examples(split), R, R, 3)
    np.testing.assert_array_equal(a, b)
  # The stored order is the split's order (TFDS did not shuffle it).
  builder = tfds.builder_from_directory(tfds_source.builder_dir)
  for split in ("train", "test"):
    stored = [x["file_name"].decode() for x in
              tfds.as_numpy(builder.as_dataset(split=split))]
    assert stored == list(folder_source.names[split])


def test_record_reader_through_the_tf_file_system(tfds_source):
  # gs:// paths take the tf.io.gfile branch; file:// exercises it offline.
  from mixvae.data import records
  index = records.load_record_index(tfds_source.builder_dir)
  local = records.RecordReader(tfds_source.builder_dir, index, "train")
  remote = records.RecordReader("file://" + tfds_source.builder_dir, index,
                                "train")
  order = [3, 1, 4, 1, 5, 9, 2, 6, 19, 0]
  assert remote.read(order) == local.read(order)
  assert len(remote) == NUM_TRAIN
  local.close()
  remote.close()


def test_reference_split_and_natural_sort_sources(image_dir, folder_source):
  source = sources.FolderSource(image_dir, resolution=R, split="reference",
                                sort="natural", num_train=NUM_TRAIN)
  ordered = sorted(image_fixtures.good_names(),
                   key=lambda n: int(n.split(".")[0]))
  shuffled = [ordered[i] for i in
              np.random.RandomState(1967).permutation(len(ordered))]
  assert list(source.names["train"]) == shuffled[:NUM_TRAIN]
  assert list(source.names["test"]) == shuffled[NUM_TRAIN:]
  assert source.fingerprint != folder_source.fingerprint


def test_image_conversion(tmp_path):
  from PIL import Image
  # Columns numbered 0..59 in red; a 40x60 image keeps columns 10..49.
  pixels = np.zeros((40, 60, 3), np.uint8)
  pixels[..., 0] = np.arange(60)[None, :]
  pixels[..., 1] = np.arange(40)[:, None]
  Image.fromarray(pixels).save(tmp_path / "wide.png")
  out = images.load_image(tf.io.read_file(str(tmp_path / "wide.png")), 40)
  np.testing.assert_array_equal(out.numpy(), pixels[:, 10:50])
  # Grey and RGBA PNGs -> RGB; grey replicated, alpha dropped.
  grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 251
  Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "grey.png")
  out = images.load_image(tf.io.read_file(str(tmp_path / "grey.png")),
                          64).numpy()
  assert out.shape == (64, 64, 3)
  np.testing.assert_array_equal(out[..., 0], grey)
  np.testing.assert_array_equal(out[..., 2], grey)
  rgba = np.concatenate([pixels[:, :40], np.full((40, 40, 1), 7, np.uint8)],
                        -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  out = images.load_image(tf.io.read_file(str(tmp_path / "rgba.png")), 40)
  np.testing.assert_array_equal(out.numpy(), pixels[:, :40])
  # Downsizing is antialiased: a 1-pixel checkerboard averages to grey.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  Image.fromarray(board).save(tmp_path / "board.png")
  out = images.load_image(tf.io.read_file(str(tmp_path / "board.png")), 16)
  assert np.abs(out.numpy().astype(int) - 128).max() <= 2


def test_resize_modes_by_hand():
  # 4x4 grey x[i, j] = 70 i + 14 j -> 2x2. Output pixel k is centred on input
  # coordinate 2k + 0.5 (half-pixel centres), in each direction.
  x = 70 * np.arange(4)[:, None] + 14 * np.arange(4)[None, :]
  rgb = tf.constant(np.repeat(x[..., None], 3, -1).astype(np.uint8))
  # 'bilinear': the mean of pixels 2k and 2k + 1; rows 35, 175, columns 7, 35.
  out = images.center_crop_resize(rgb, 2, "bilinear").numpy()
  np.testing.assert_array_equal(out, np.repeat(
      np.array([[42, 70], [182, 210]], np.uint8)[..., None], 3, -1))
  # 'antialias': a triangle over 4 pixels, 1/8, 3/8, 3/8, 1/8 on pixels
  # 2k - 1 .. 2k + 2; the weight off the image is dropped and the rest
  # renormalised (3/7, 3/7, 1/7): rows 50, 160, columns 10, 32.
  out = images.center_crop_resize(rgb, 2).numpy()
  np.testing.assert_array_equal(out[..., 0], [[60, 82], [170, 192]])
  # 8 -> 4 along a row 0, 80, 160, 240, 0, 80, 160, 240: the inner pixels get
  # the full 1/8, 3/8, 3/8, 1/8 (160 = (80 + 480 + 720 + 0) / 8, 80 =
  # (240 + 0 + 240 + 160) / 8); the edges 400/7 and 1280/7, rounded.
  row = np.tile(np.array([0, 80, 160, 240], np.uint8), 2)
  square = tf.constant(np.tile(row[None, :, None], (8, 1, 3)))
  out = images.center_crop_resize(square, 4).numpy()
  np.testing.assert_array_equal(out[0, :, 0], [57, 160, 80, 183])
  out = images.center_crop_resize(square, 4, "bilinear").numpy()
  np.testing.assert_array_equal(out[0, :, 0], [40, 200, 40, 200])


def test_bilinear_resize_in_the_folder_and_prepared_sources(image_dir,
                                                            tmp_path,
                                                            folder_source,
                                                            prepared):
  # Default names are unchanged; a bilinear dataset has its own.
  assert tfds_builder.make_config().name == "r256_paper_alphabetical_n24000"
  assert tfds_builder.make_config(resize="bilinear").name == (
      "r256_paper_alphabetical_n24000_bilinear")
  config = make_config(source="tfds", data_dir=prepared[0], resize="bilinear")
  with pytest.raises(FileNotFoundError) as info:  # Never the antialias one.
    sources.make_source(config)
  assert "--num_train=20 --resize=bilinear" in str(info.value)
  folder = sources.make_source(make_config(source="folder",
                                           image_dir=image_dir,
                                           resize="bilinear"))
  tfds_builder.prepare(image_dir=image_dir, data_dir=str(tmp_path),
                       resolution=R, num_train=NUM_TRAIN, resize="bilinear")
  config.data.data_dir = str(tmp_path)
  prepared_bilinear = sources.make_source(config)
  for split in ("train", "test"):
    pixels = _pixels(folder, split)
    np.testing.assert_array_equal(pixels, _pixels(prepared_bilinear, split))
    name = folder.names[split][0]
    expected = images.load_image(
        tf.io.read_file(os.path.join(image_dir, name)), R, "bilinear")
    np.testing.assert_array_equal(pixels[0], expected.numpy())
  # The fixture's large photos come out differently.
  assert not np.array_equal(_pixels(folder, "train"),
                            _pixels(folder_source, "train"))


def test_embedded_lfw_source():
  config = CONFIGS.get_config("test")
  assert config.data.source == "embedded"
  assert config.data.resolution == config.model.resolution == 32
  source = sources.make_source(config)
  assert (source.num_examples("train"), source.num_examples("test")) == (
      80, 20)
  pixels = _pixels(source, "train")
  assert pixels.shape == (80, 32, 32, 3) and pixels.dtype == np.uint8
  np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])  # Grey.
  assert pixels.std() > 20  # Real faces, not a constant.
  it = data.TrainIterator(config, source=source)
  batch = next(it)
  assert batch["image"].shape == (8, config.batch_size // 8, 32, 32, 3)


# ---- Training iteration ---------------------------------------------------


def test_train_batch_format_and_augmentation(folder_source):
  config = make_config(source="folder")
  it = data.TrainIterator(config, source=folder_source,
                          local_device_count=8)
  pixels = _pixels(folder_source, "train").astype(np.float32) / 127.5 - 1
  flipped_any = False
  for step in range(3):
    batch = next(it)
    assert batch["image"].shape == (8, 2, R, R, 3)
    assert batch["image"].dtype == np.float32
    assert batch["index"].dtype == np.int32
    flat = _flat(batch)
    np.testing.assert_array_equal(flat["index"], np.arange(16))
    assert -1 <= flat["image"].min() and flat["image"].max() <= 1
    examples = it.order.examples(step, np.arange(16))
    flips = it.order.flips(step, np.arange(16))
    expected = np.where(flips[:, None, None, None],
                        pixels[examples][:, :, ::-1], pixels[examples])
    np.testing.assert_allclose(flat["image"], expected, atol=1e-6)
    flipped_any |= bool(flips.any())
  assert flipped_any
  unflipped = make_config(source="folder", flip=False)
  batch = _flat(next(data.TrainIterator(unflipped, source=folder_source,
                                        local_device_count=8)))
  np.testing.assert_allclose(
      batch["image"], pixels[it.order.examples(0, np.arange(16))], atol=1e-6)


@pytest.mark.parametrize("process_count,local_devices", [(1, 8), (1, 2),
                                                         (2, 4), (4, 2),
                                                         (4, 1)])
def test_process_shards_are_disjoint_and_make_the_global_batch(
    folder_source, process_count, local_devices):
  config = make_config(source="folder")
  reference = data.TrainIterator(config, source=folder_source,
                                 process_index=0, process_count=1,
                                 local_device_count=8)
  expected = [_flat(b) for b in _take(reference, 3)]
  shards = []
  for k in range(process_count):
    it = data.TrainIterator(config, source=folder_source, process_index=k,
                            process_count=process_count,
                            local_device_count=local_devices)
    batches = _take(it, 3)
    assert batches[0]["image"].shape == (local_devices,
                                         16 // process_count // local_devices,
                                         R, R, 3)
    shards.append([_flat(b) for b in batches])
  for step in range(3):
    indices = [s[step]["index"] for s in shards]
    seen = np.concatenate(indices)
    assert len(set(seen.tolist())) == 16  # Disjoint, and they cover 0..15.
    for k in range(process_count):  # Process k reads its own contiguous part.
      per = 16 // process_count
      np.testing.assert_array_equal(indices[k],
                                    np.arange(k * per, (k + 1) * per))
    for key in ("image", "index"):
      np.testing.assert_array_equal(
          np.concatenate([s[step][key] for s in shards]),
          expected[step][key])


def test_batches_are_a_function_of_seed_and_step(folder_source):
  config = make_config(source="folder")
  a = _take(data.TrainIterator(config, source=folder_source), 4)
  b = _take(data.TrainIterator(config, source=folder_source), 4)
  later = _take(data.TrainIterator(config, source=folder_source,
                                   start_step=2), 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  for x, y in zip(a[2:], later):
    np.testing.assert_array_equal(x["image"], y["image"])
  reseeded = make_config(source="folder")
  reseeded.seed = 1
  c = next(data.TrainIterator(reseeded, source=folder_source))
  assert not np.array_equal(a[0]["image"], c["image"])


def test_prepared_tfds_gives_the_folder_batches(folder_source, tfds_source,
                                                prepared):
  from_folder = _take(data.TrainIterator(make_config(source="folder"),
                                         source=folder_source), 2)
  from_tfds = _take(data.TrainIterator(
      make_config(source="tfds", data_dir=prepared[0]), source=tfds_source),
                    2)
  for x, y in zip(from_folder, from_tfds):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_resume_from_saved_state(tfds_source, prepared):
  config = make_config(source="tfds", data_dir=prepared[0])
  it = data.TrainIterator(config, source=tfds_source)
  _take(it, 5)
  state = it.get_state()
  assert int(state["step"]) == 5
  assert set(state) == set(pipeline.STATE_KEYS)
  assert all(isinstance(v, np.ndarray) and v.dtype == np.int64
             for v in state.values())
  remaining = _take(it, 3)
  saved = {k: np.array(v) for k, v in state.items()}  # As from a checkpoint.
  resumed = data.TrainIterator(config, source=tfds_source, state=saved,
                               start_step=5)
  assert resumed.step == 5
  with pytest.raises(ValueError, match="start_step=4 but the saved"):
    data.TrainIterator(config, source=tfds_source, state=saved, start_step=4)
  for x, y in zip(remaining, _take(resumed, 3)):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["index"], y["index"])


def test_state_from_other_data_or_settings_is_rejected(folder_source):
  config = make_config(source="folder")
  state = data.TrainIterator(config, source=folder_source).get_state()
  other = make_config(source="folder", batch_size=8)
  with pytest.raises(ValueError, match="batch_size: saved 16, now 8"):
    data.TrainIterator(other, source=folder_source, state=state)
  bad = dict(state, fingerprint=np.asarray(123, np.int64))
  with pytest.raises(ValueError, match="fingerprint"):
    data.TrainIterator(config, source=folder_source, state=bad)


def test_prefetch_to_device_keeps_the_resume_state(folder_source):
  config = make_config(source="folder")
  it = data.prefetch_to_device(
      data.TrainIterator(config, source=folder_source, start_step=3),
      size=3)
  first = next(it)
  assert it.get_state()["step"] == 4  # Not 6, although 3 were read ahead.
  assert len(first["image"].sharding.device_set) == jax.local_device_count()
  assert first["image"].shape == (8, 2, R, R, 3)
  means = jax.pmap(lambda x: x.mean())(first["image"])
  np.testing.assert_allclose(np.asarray(means),
                             np.asarray(first["image"]).mean(axis=(1, 2, 3, 4)),
                             rtol=1e-5, atol=1e-6)
  next(it)
  state = it.get_state()
  assert state["step"] == 5
  resumed = data.TrainIterator(config, source=folder_source, state=state)
  for _ in range(2):  # Steps 5 and 6, as the wrapper gives them.
    np.testing.assert_array_equal(np.asarray(next(it)["image"]),
                                  next(resumed)["image"])


# ---- Evaluation -----------------------------------------------------------


@pytest.mark.parametrize("process_count,local_devices,batch_size",
                         [(1, 8, 16), (1, 2, 4), (2, 2, 8), (4, 1, 4),
                          (4, 2, 16)])
def test_eval_covers_each_test_example_once(tfds_source, process_count,
                                            local_devices, batch_size):
  config = make_config(source="tfds", eval_batch_size=batch_size)
  pixels = _pixels(tfds_source, "test").astype(np.float32) / 127.5 - 1
  seen = []
  counts = []
  for k in range(process_count):
    ev = data.EvalIterator(config, source=tfds_source, process_index=k,
                           process_count=process_count,
                           local_device_count=local_devices)
    batches = [_flat(b) for b in ev]
    counts.append(len(batches))
    assert len(batches) == ev.num_batches == -(-6 // batch_size)
    for b in batches:
      assert b["image"].shape[0] == batch_size // process_count
      valid = b["mask"]
      assert (b["index"][~valid] == -1).all()
      assert (b["image"][~valid] == 0).all()
      np.testing.assert_array_equal(b["image"][valid],
                                    pixels[b["index"][valid]])  # No flips.
      seen.extend(b["index"][valid].tolist())
  assert len(set(counts)) == 1
  assert sorted(seen) == list(range(6))  # Each test example exactly once.
  if process_count == 1:
    assert seen == list(range(6))  # In order.


def test_eval_iterator_is_reusable(folder_source):
  config = make_config(source="folder", eval_batch_size=8)
  ev = data.EvalIterator(config, source=folder_source)
  first = [b["index"] for b in ev]
  second = [b["index"] for b in ev]
  assert len(first) == len(second) == 1
  np.testing.assert_array_equal(first[0], second[0])
  assert ev.names == folder_source.names["test"]


# ---- Bad input ------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*image_dir"):
    sources.make_source(make_config(source="folder",
                                    image_dir=str(tmp_path / "nope")))
  (tmp_path / "readme.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match=r"holds no images \(looked for"):
    sources.make_source(make_config(source="folder", image_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="no image folder given"):
    sources.make_source(make_config(source="folder", image_dir=""))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tfds_builder.prepare(image_dir=str(tmp_path / "nope"),
                         data_dir=str(tmp_path / "out"), resolution=R)


def test_only_corrupt_images(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
  with pytest.raises(FileNotFoundError, match="none of the 1 image files"):
    sources.make_source(make_config(source="folder", image_dir=str(tmp_path)))


def test_fewer_images_than_the_split(image_dir):
  config = make_config(source="folder", image_dir=image_dir)
  config.data.num_train = 24000
  with pytest.raises(ValueError, match="has 26 usable images, but the split "
                     "asks for 24000 training images"):
    sources.make_source(config)


def test_unknown_source_and_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="unknown data source 'imagenet'"):
    sources.make_source(make_config(source="imagenet"))
  with pytest.raises(ValueError, match="unknown dataset name 'celeb_a_hq'"):
    sources.make_source(make_config(source="tfds", name="celeb_a_hq",
                                    data_dir=str(tmp_path)))


def test_unprepared_tfds_dataset_names_the_prepare_command(tmp_path,
                                                           prepared):
  with pytest.raises(FileNotFoundError) as info:
    sources.make_source(make_config(source="tfds", data_dir=str(tmp_path)))
  message = str(info.value)
  assert "was not prepared" in message
  assert "python launch/prepare_data.py --image_dir=" in message
  assert f"--data_dir={tmp_path}" in message and "--resolution=32" in message
  with pytest.raises(FileNotFoundError, match="data_dir is empty"):
    sources.make_source(make_config(source="tfds", data_dir=""))
  # Prepared with another split: lists what is there.
  other = make_config(source="tfds", data_dir=prepared[0], sort="natural")
  with pytest.raises(FileNotFoundError, match="prepared configs found there: "
                     "r32_paper_alphabetical_n20"):
    sources.make_source(other)


def test_batch_size_must_divide_by_devices(folder_source):
  config = make_config(source="folder", batch_size=12)
  with pytest.raises(ValueError, match=r"config.batch_size=12 must be a "
                     r"positive multiple of the number of devices \(8"):
    data.TrainIterator(config, source=folder_source)
  config = make_config(source="folder", eval_batch_size=6)
  with pytest.raises(ValueError, match="eval_batch_size"):
    data.EvalIterator(config, source=folder_source)


def test_resolution_must_match_the_model():
  config = make_config()
  config.data.resolution = 64  # Linked: the model follows.
  assert config.model.resolution == 64
  import ml_collections
  loose = ml_collections.ConfigDict({"data": {"resolution": 32},
                                     "model": {"resolution": 64}})
  with pytest.raises(ValueError, match="config.data.resolution=32 but "
                     "config.model.resolution=64"):
    sources.resolve_resolution(loose)


# ---- Command lines --------------------------------------------------------


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script),
                         *args], capture_output=True, text=True, env=env,
                        timeout=th.PATIENCE, check=False)


def test_prepare_data_command_line(image_dir, tmp_path):
  out = _run("prepare_data.py", f"--image_dir={image_dir}",
             f"--data_dir={tmp_path}", "--resolution=24", "--num_train=0",
             "--sort=natural")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "20 train, 6 test images; 2 unreadable or corrupt images skipped" in (
      out.stdout)
  assert os.path.exists(tmp_path / "face_folder" /
                        "r24_paper_natural_p80" / "1.0.0" /
                        "dataset_info.json")
  bad = _run("prepare_data.py", f"--image_dir={tmp_path / 'missing'}",
             f"--data_dir={tmp_path}")
  assert bad.returncode == 2  # A user error: one line, no traceback.
  assert "error: " in bad.stderr and "does not exist" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_benchmark_measures_images_per_second(folder_source):
  from mixvae.data import throughput
  result = throughput.measure_input_rate(make_config(source="folder"),
                                         source=folder_source, steps=3,
                                         warmup=1, to_device=True)
  assert result["images"] == 48 and result["images_per_second"] > 0
  assert result["host_cores"] >= 1
