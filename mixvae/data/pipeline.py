"""Training and evaluation iterators, their resume state, device prefetch.

Design (exact resume without replay): every source is random access (a file
list, an in-memory array, or a prepared TFDS dataset read by record offset),
and `mixvae.data.order.TrainOrder` says which example and flip bit sit at
each (step, global position). The tf.data pipeline is driven by an index
stream that starts at any step: it reads the indices of this process's share
of each global batch, fetches those records, decodes and augments them in
parallel (AUTOTUNE threads, order kept) and batches them per local device.
The resume state is therefore just the next step (plus checks that the data
and batch size did not change); restoring it rebuilds the pipeline at that
step at no extra cost, and the batches equal those of an uninterrupted run.

Batch elements are NumPy dicts shaped for a pmapped step:
  train: image float32 [D, b, H, W, C] in [-1, 1]; index int32 [D, b], the
    example's position in the global batch (0 .. B-1).
  eval: image as above (zeros for padding); mask bool [D, b]; index int32
    [D, b], the example's position in the test split (-1 for padding).
D = local devices, b = per-device batch. `prefetch_to_device` moves them to
the devices.
"""

from __future__ import annotations

import atexit
import collections
import math
from typing import Any, Iterator
import weakref

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from mixvae.data import images
from mixvae.data import order as order_lib
from mixvae.data import sources

try:  # tf.data only runs on the host; keep TensorFlow off any accelerator.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Already initialised.
  pass

STATE_KEYS = ("step", "seed", "batch_size", "num_examples", "fingerprint")

# Open tf.data iterators. Their pipelines call Python (index stream, record
# reads); destroying one during interpreter finalization, while a background
# thread waits for the GIL inside such a call, deadlocks. They are therefore
# closed at exit, while the interpreter still runs.
_OPEN_ITERATORS: "weakref.WeakSet[_NumpyIterator]" = weakref.WeakSet()


class _NumpyIterator:
  """A tf.data NumPy iterator that can be closed (and is, at exit)."""

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = dataset.as_numpy_iterator()
    _OPEN_ITERATORS.add(self)

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      raise StopIteration
    return next(self._iterator)

  def close(self):
    self._iterator = None


@atexit.register
def _close_open_iterators():
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()


def _topology(batch_size: int, process_index, process_count,
              local_device_count, what: str) -> tuple[int, int, int, int]:
  """Resolves the process/device layout and checks the batch divides it."""
  process_index = (jax.process_index() if process_index is None
                   else int(process_index))
  process_count = (jax.process_count() if process_count is None
                   else int(process_count))
  local_device_count = (jax.local_device_count() if local_device_count is None
                        else int(local_device_count))
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in "
                     f"[0, {process_count})")
  devices = process_count * local_device_count
  if batch_size < 1 or batch_size % devices:
    raise ValueError(
        f"{what}={batch_size} must be a positive multiple of the number of "
        f"devices ({devices} = {process_count} processes x "
        f"{local_device_count} local devices); e.g. use "
        f"{max(1, round(batch_size / devices)) * devices}")
  return process_index, process_count, local_device_count, (
      batch_size // devices)


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  threads = int(config.data.get("num_threads", 0) or 0)
  if threads > 0:
    options.threading.private_threadpool_size = threads
  return options


def _per_device(batch: dict, local_devices: int, per_device: int) -> dict:
  return {k: tf.reshape(v, tf.concat([[local_devices, per_device],
                                      tf.shape(v)[1:]], 0))
          for k, v in batch.items()}


def _read_batches(rows: tf.data.Dataset, source, split: str, load, config,
                  local_devices: int, per_device: int) -> tf.data.Dataset:
  """Fetches, decodes and batches per device the example rows of one split.

  Args:
    rows: elements (example indices [b], *extras [b]), one per process batch.
    source: the Source to read `split` from.
    split: 'train' or 'test'.
    load: (record, *extras) -> dict of one example, run in parallel.
    config: the experiment config (parallelism and tf.data options).
    local_devices, per_device: the layout of each batch.

  Returns:
    Batches of dicts with leaves [local_devices, per_device, ...].
  """
  parallel = _parallel(config)
  dataset = (
      rows.map(lambda e, *extra: (source.fetch(split, e), *extra),
               num_parallel_calls=parallel, deterministic=True)
      .unbatch()
      .map(load, num_parallel_calls=parallel, deterministic=True)
      .batch(local_devices * per_device, drop_remainder=True)
      .map(lambda x: _per_device(x, local_devices, per_device))
      .prefetch(tf.data.AUTOTUNE))
  return dataset.with_options(_options(config))


def _parallel(config) -> int:
  value = int(config.data.get("num_parallel_calls", -1))
  return tf.data.AUTOTUNE if value < 0 else max(1, value)


class TrainIterator(Iterator[dict]):
  """The infinite, deterministic stream of training batches from a step.

  Element `s` (counting from `start_step`) is this process's share of global
  batch `s`: {'image': float32 [D, b, R, R, 3] in [-1, 1], 'index': int32
  [D, b] positions in the global batch}. Horizontal flips (when
  `config.data.flip`) are the only augmentation.

  Args:
    config: the experiment config (`config.seed`, `config.batch_size`,
      `config.data.*`).
    start_step: the first global batch to produce (default 0).
    state: a `get_state()` dict to resume from; it is checked against this
      config and data, and against `start_step` when both are given.
    source: a built Source (default: `sources.make_source(config)`).
    process_index, process_count, local_device_count: the layout (default:
      this JAX process's); tests pass them to simulate several processes.

  Raises:
    ValueError: when the batch size does not divide by the device count or
      the state does not belong to this config and data.
  """

  def __init__(self, config, *, start_step: int | None = None,
               state: dict | None = None, source: sources.Source | None = None,
               process_index: int | None = None,
               process_count: int | None = None,
               local_device_count: int | None = None):
    self.source = source if source is not None else sources.make_source(
        config)
    self.batch_size = int(config.batch_size)
    (self.process_index, self.process_count, self.local_device_count,
     self.per_device_batch) = _topology(
         self.batch_size, process_index, process_count, local_device_count,
         "config.batch_size")
    self.per_process_batch = self.local_device_count * self.per_device_batch
    self.seed = int(config.seed)
    self.order = order_lib.TrainOrder(
        seed=self.seed, num_examples=self.source.num_examples("train"),
        batch_size=self.batch_size)
    if state is not None:
      self.check_state(state)
      if start_step is not None and int(start_step) != int(state["step"]):
        raise ValueError(
            f"start_step={start_step} but the saved input-pipeline state is "
            f"at step {int(state['step'])}; the model checkpoint and the "
            "input state must be saved together")
      start_step = int(state["step"])
    start_step = 0 if start_step is None else int(start_step)
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    self._step = int(start_step)
    self._flip = bool(config.data.flip)
    self._dataset = self._build(config, start_step)
    self._iterator = _NumpyIterator(self._dataset)
    log_layout(self)

  @property
  def step(self) -> int:
    """The global step of the next batch `next()` returns."""
    return self._step

  @property
  def steps_per_epoch(self) -> float:
    return self.source.num_examples("train") / self.batch_size

  def _build(self, config, start_step: int) -> tf.data.Dataset:
    b = self.per_process_batch
    k, p = self.process_index, self.process_count
    source, order, flip = self.source, self.order, self._flip

    def shard(step):
      return order.shard(int(step), k, p)

    def indices(step):
      examples, positions, flips = tf.numpy_function(
          shard, [step], (tf.int64, tf.int32, tf.bool), stateful=False)
      return (tf.ensure_shape(examples, [b]), tf.ensure_shape(positions, [b]),
              tf.ensure_shape(flips, [b]))

    def load(record, position, flipped):
      image = source.decode(record)
      if flip:
        image = tf.cond(flipped, lambda: image[:, ::-1], lambda: image)
      return {"image": images.to_model_range(image), "index": position}

    steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    return _read_batches(steps.map(indices), source, "train", load, config,
                         self.local_device_count, self.per_device_batch)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._step += 1
    return batch

  def close(self) -> None:
    """Stops the background pipeline; `next()` then raises StopIteration."""
    self._iterator.close()

  def get_state(self) -> dict[str, np.ndarray]:
    """The resume state: the next step and what it must be resumed with.

    A dict of int64 NumPy scalars (a small pytree for the checkpoint):
    step, seed, batch_size, num_examples (training split size) and
    fingerprint (crc32 of the resolution and training file names).
    """
    return {
        "step": np.asarray(self._step, np.int64),
        "seed": np.asarray(self.seed, np.int64),
        "batch_size": np.asarray(self.batch_size, np.int64),
        "num_examples": np.asarray(self.source.num_examples("train"),
                                   np.int64),
        "fingerprint": np.asarray(self.source.fingerprint, np.int64),
    }

  def check_state(self, state: dict) -> None:
    """Raises ValueError if `state` was saved with other data or settings."""
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
      raise ValueError(f"input-pipeline state lacks {missing}; expected the "
                       f"dict of {list(STATE_KEYS)} from get_state()")
    expected = {"seed": self.seed, "batch_size": self.batch_size,
                "num_examples": self.source.num_examples("train"),
                "fingerprint": self.source.fingerprint}
    wrong = {k: (int(np.asarray(state[k])), v) for k, v in expected.items()
             if int(np.asarray(state[k])) != v}
    if wrong:
      details = ", ".join(f"{k}: saved {s}, now {n}"
                          for k, (s, n) in wrong.items())
      raise ValueError(
          "the saved input-pipeline state belongs to other data or settings "
          f"({details}); resuming would not reproduce the run's batches. Use "
          "the same config.seed, config.batch_size and dataset (same files, "
          "split and resolution), or start a new run.")


def train_iterator(config, **kwargs) -> TrainIterator:
  """`TrainIterator(config, **kwargs)`; see there."""
  return TrainIterator(config, **kwargs)


class EvalIterator:
  """One in-order pass over the test split; iterate it again for each eval.

  Global eval batch t holds test examples t*E ... t*E + E - 1 (E =
  `config.data.eval_batch_size`, or `config.batch_size` when 0); the last
  batch is padded. Process k reads positions k*E/P ... (k+1)*E/P - 1 of each,
  so every process yields `num_batches` batches and each test example
  appears exactly once over all processes, with mask True.

  Elements: {'image': float32 [D, b, R, R, 3] (zeros where padded),
  'mask': bool [D, b], 'index': int32 [D, b] (position in the test split,
  -1 where padded)}; `names[index]` is the file name.
  """

  def __init__(self, config, *, source: sources.Source | None = None,
               batch_size: int | None = None,
               process_index: int | None = None,
               process_count: int | None = None,
               local_device_count: int | None = None):
    self.source = source if source is not None else sources.make_source(
        config)
    if batch_size is None:
      batch_size = int(config.data.get("eval_batch_size", 0) or
                       config.batch_size)
    self.batch_size = int(batch_size)
    (self.process_index, self.process_count, self.local_device_count,
     self.per_device_batch) = _topology(
         self.batch_size, process_index, process_count, local_device_count,
         "the eval batch size (config.data.eval_batch_size)")
    self.per_process_batch = self.local_device_count * self.per_device_batch
    self.names = self.source.names["test"]
    self.num_examples = len(self.names)
    self.num_batches = math.ceil(self.num_examples / self.batch_size)
    self._config = config

  def __len__(self) -> int:
    return self.num_batches

  def _build(self) -> tf.data.Dataset:
    b, source, n = self.per_process_batch, self.source, self.num_examples
    steps = np.arange(self.num_batches, dtype=np.int64)[:, None]
    positions = (steps * self.batch_size + self.process_index * b +
                 np.arange(b, dtype=np.int64)[None, :])
    mask = positions < n
    examples = np.where(mask, positions, 0)
    index = np.where(mask, positions, -1).astype(np.int32)
    r = source.resolution

    def load(record, valid, idx):
      image = tf.cond(valid,
                      lambda: images.to_model_range(source.decode(record)),
                      lambda: tf.zeros([r, r, 3], tf.float32))
      return {"image": image, "mask": valid, "index": idx}

    rows = tf.data.Dataset.from_tensor_slices((examples, mask, index))
    return _read_batches(rows, source, "test", load, self._config,
                         self.local_device_count, self.per_device_batch)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return _NumpyIterator(self._build())


def eval_iterator(config, **kwargs) -> EvalIterator:
  """`EvalIterator(config, **kwargs)`; see there."""
  return EvalIterator(config, **kwargs)


class DevicePrefetchIterator(Iterator[Any]):
  """Moves host batches onto the local devices, `size` batches ahead.

  Each leaf [D, ...] is split over the D local devices along axis 0 (a
  `NamedSharding` over a 1-D mesh of the local devices), the layout a
  pmapped step takes. `get_state()` forwards to the wrapped iterator and
  reports the state of the next batch *returned*, not the next one read, so
  prefetched batches are not lost on resume.

  Args:
    iterator: yields pytrees of NumPy arrays with leading axis D.
    size: how many batches to keep on the devices ahead of use.
    devices: the devices (default: `jax.local_devices()`).
  """

  def __init__(self, iterator, *, size: int = 2, devices=None):
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    self._sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("devices"))
    self._iterator = iterator
    self._size = max(1, int(size))
    self._queue: collections.deque = collections.deque()

  def _fill(self):
    while len(self._queue) < self._size:
      state = (self._iterator.get_state()
               if hasattr(self._iterator, "get_state") else None)
      try:
        batch = next(self._iterator)
      except StopIteration:
        return
      self._queue.append(
          (state, jax.device_put(batch, self._sharding)))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()[1]

  def get_state(self):
    """The wrapped iterator's state as of the next batch this returns."""
    if self._queue:
      return self._queue[0][0]
    return self._iterator.get_state()


def prefetch_to_device(iterator, *, size: int = 2,
                       devices=None) -> DevicePrefetchIterator:
  """`DevicePrefetchIterator(iterator, size=size, devices=devices)`."""
  return DevicePrefetchIterator(iterator, size=size, devices=devices)


def log_layout(it) -> None:
  """Logs how the global batch is split over processes and devices."""
  logging.info(
      "Input from step %d: process %d of %d, %d local devices x %d per "
      "device = %d per process, global batch %d", it.step, it.process_index,
      it.process_count, it.local_device_count, it.per_device_batch,
      it.per_process_batch, it.batch_size)
