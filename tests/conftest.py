"""Test set-up: 8 simulated CPU devices, configured before JAX starts."""

import os

_NUM_DEVICES = 8
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = f"--xla_force_host_platform_device_count={_NUM_DEVICES}"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# Keep TensorFlow (used only for tf.data and TFDS) quiet and off any GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

assert jax.device_count() == _NUM_DEVICES, (
    f"tests need {_NUM_DEVICES} simulated CPU devices but JAX sees "
    f"{jax.device_count()}; was JAX initialised before tests/conftest.py?")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import image_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_helpers  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_collection_modifyitems(items):
  """tests/test_train.py first: with `--dist loadfile` one worker runs its
  training processes one after another from the start, while the other
  worker runs the rest of the suite."""
  items.sort(key=lambda item: item.path.name != "test_train.py")


@pytest.fixture(autouse=True)
def _training_slots(request, tmp_path_factory):
  """Tests marked `training_processes(n)` start n JAX processes at once (1
  if not given): the xdist workers run them while they hold n of the
  training slots, so a 2-core machine never runs more training processes
  than it has cores."""
  marker = request.node.get_closest_marker("training_processes")
  if marker is None:
    yield
    return
  with train_helpers.training_slot(tmp_path_factory, *(marker.args or (1,))):
    yield


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
  """A folder of the real-image fixture (`image_fixtures.write_folder`)."""
  path = str(tmp_path_factory.mktemp("faces"))
  image_fixtures.write_folder(path)
  return path
