"""Checkpoints that cannot be read are moved aside, in process: every kind of
damage to the newest checkpoint, and flipped bytes that only the CRC sees."""

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import celebahq
import train_helpers as th
from mixvae import checkpointing
from mixvae import errors
from mixvae import trainer as trainer_lib

OLD, NEW = 3, 5


@pytest.fixture(scope="module")
def states():
  trainer = trainer_lib.Trainer(celebahq.get_config("test"))
  old = jax.device_get(jax.jit(trainer.init_state)())
  new = old.replace(step=np.int32(NEW), vae_params=jax.tree.map(
      lambda p: p + 1, old.vae_params))
  return trainer.abstract_state(), old.replace(step=np.int32(OLD)), new


def _write(workdir, states):
  _, old, new = states
  manager = checkpointing.create_manager(os.fspath(workdir), max_to_keep=5)
  checkpointing.save(manager, OLD, old, {"step": OLD})
  checkpointing.save(manager, NEW, new, {"step": NEW})
  manager.wait_until_finished()
  return manager


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()
           and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _flip_bytes(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 64):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


DAMAGE = {
    "state metadata deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "array file emptied": lambda d: _largest_array_file(d).write_bytes(b""),
    "iterator record deleted": lambda d: (d / "data" / "metadata").unlink(),
    "empty step folder": lambda d: (shutil.rmtree(d), d.mkdir()),
    "bytes flipped in array data": lambda d: _flip_bytes(
        _largest_array_file(d)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_moved_aside(tmp_path, states, damage):
  abstract, old, _ = states
  manager = _write(tmp_path, states)
  step_dir = pathlib.Path(checkpointing.checkpoint_dir(tmp_path)) / str(NEW)
  DAMAGE[damage](step_dir)
  manager = checkpointing.create_manager(os.fspath(tmp_path), max_to_keep=5)
  state, data = checkpointing.restore(manager, abstract, move_aside=True)
  th.assert_trees_equal(state, old, "restored state")
  assert data == {"step": OLD}
  aside = [p.name for p in step_dir.parent.iterdir()
           if p.name.startswith(f"{NEW}.unreadable-")]
  assert len(aside) == 1, sorted(os.listdir(step_dir.parent))
  assert manager.all_steps() == [OLD]
  # The step can be saved again.
  checkpointing.save(manager, NEW, old.replace(step=np.int32(NEW)),
                     {"step": NEW})
  manager.wait_until_finished()
  assert checkpointing.restore(manager, abstract)[1] == {"step": NEW}


def test_without_move_aside_damage_raises(tmp_path, states):
  abstract = states[0]
  _write(tmp_path, states)
  step_dir = pathlib.Path(checkpointing.checkpoint_dir(tmp_path)) / str(NEW)
  _flip_bytes(_largest_array_file(step_dir))
  manager = checkpointing.create_manager(os.fspath(tmp_path), max_to_keep=5)
  with pytest.raises(Exception):
    checkpointing.restore(manager, abstract)
  assert manager.all_steps() == [OLD, NEW]  # Nothing moved.


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, states):
  abstract = states[0]
  _write(tmp_path, states)
  root = pathlib.Path(checkpointing.checkpoint_dir(tmp_path))
  for step in (OLD, NEW):
    (root / str(step) / "data" / "metadata").unlink()
  manager = checkpointing.create_manager(os.fspath(tmp_path), max_to_keep=5)
  with pytest.raises(errors.MissingError,
                     match=rf"no readable checkpoint in .*moved aside {NEW}"
                     rf"\.unreadable-.*, {OLD}\.unreadable-"):
    checkpointing.restore(manager, abstract, move_aside=True)


def test_the_best_checkpoint_is_kept_after_it_leaves_the_last_k(tmp_path,
                                                                 states):
  """The last 2 and the best by a metric (lower is better): step 2's metric
  is the best, and it outlives steps 1 and 3-5."""
  _, old, _ = states
  manager = checkpointing.create_manager(os.fspath(tmp_path), max_to_keep=2,
                                         best=("l1", False))
  for step, l1 in ((1, 0.5), (2, 0.1), (3, 0.3), (4, None), (5, 0.4),
                   (6, 0.2)):
    checkpointing.save(manager, step, old.replace(step=np.int32(step)),
                       {"step": step}, None if l1 is None else {"l1": l1})
    checkpointing.wait(manager)
  assert manager.all_steps() == [2, 5, 6]
  # Reopened (a resumed run), the saved metrics still rank the steps.
  manager = checkpointing.create_manager(os.fspath(tmp_path), max_to_keep=2,
                                         best=("l1", False))
  checkpointing.save(manager, 7, old.replace(step=np.int32(7)), {"step": 7},
                     {"l1": 0.05})
  checkpointing.wait(manager)
  assert manager.all_steps() == [6, 7]


_LATE_WRITE_CALLBACKS = """
import asyncio, sys
import numpy as np
import tensorstore as ts
sys.path.insert(0, "launch")
import process_setup
process_setup.quiet_library_logs()
store = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                 "path": sys.argv[1]}}, create=True, dtype=ts.float32,
                shape=[4096, 4096]).result()
writes = [store[i * 512:(i + 1) * 512].write(np.ones((512, 4096), np.float32))
          for i in range(8)]
loop = asyncio.new_event_loop()
async def wait_all():
  for write in writes:
    await write
loop.create_task(wait_all())
loop.run_until_complete(asyncio.sleep(0.001))
loop.close()  # As Orbax does when a save fails: the writes finish later.
for write in writes:
  write.result()
raise ValueError("a bug keeps its traceback")
"""


def test_write_callbacks_after_the_event_loop_closed_are_not_printed(
    tmp_path):
  """TensorStore reports a callback that finds its asyncio loop closed (the
  writes of a failed save, after Orbax gave up on them) as a RuntimeError
  traceback through sys.unraisablehook; the launchers drop exactly those."""
  result = subprocess.run([sys.executable, "-c", _LATE_WRITE_CALLBACKS,
                           str(tmp_path / "store")], cwd=th.ROOT,
                          capture_output=True, text=True, check=False)
  assert "ValueError: a bug keeps its traceback" in result.stderr
  assert result.stderr.count("Traceback") == 1, result.stderr[-4000:]
  assert "Event loop is closed" not in result.stderr
