"""Training and evaluation iterators, their resume state, device prefetch.

`order.TrainOrder` is a pure function of (seed, step) and sources are random
access, so tf.data runs on step indices from any start: the resume state is
the next step, and a resumed run sees an uninterrupted run's batches.

B = global batch, P processes, D local devices, b = B / (P D). Batches are
NumPy dicts for a pmapped step:
  train: image float32 [D, b, R, R, 3] in [-1, 1]; index int32 [D, b], the
    position in the global batch.
  eval: image (zeros where padded); mask bool [D, b]; index int32 [D, b], the
    position in the test split, -1 where padded. Global eval batch t holds
    test examples tE ... tE + E - 1, the last padded, so a pass yields every
    example exactly once with mask True.
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

from mixvae import errors
from mixvae.data import images
from mixvae.data import order as order_lib
from mixvae.data import records
from mixvae.data import sources

try:  # tf.data only runs on the host; keep TensorFlow off any accelerator.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Already initialised.
  pass

STATE_KEYS = ("step", "seed", "batch_size", "num_examples", "fingerprint")

# Destroying a tf.data iterator during interpreter finalization, while its
# thread waits for the GIL in a Python call, deadlocks: close them at exit.
_OPEN_ITERATORS: "weakref.WeakSet[_NumpyIterator]" = weakref.WeakSet()


class _NumpyIterator:
  """A tf.data NumPy iterator that can be closed (and is, at exit)."""

  def __init__(self, dataset: tf.data.Dataset, source: sources.Source):
    self._iterator = dataset.as_numpy_iterator()
    self._source = source
    _OPEN_ITERATORS.add(self)

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      raise StopIteration
    try:
      return next(self._iterator)
    except tf.errors.OpError as e:
      detail = records.op_error_text(e)
    # Raised outside the `except`, so no traceback keeps the tf.data iterator
    # alive into interpreter shutdown (where its threads would deadlock).
    self.close()
    raise errors.DataError(
        f"reading the {self._source.kind} data in {self._source.location} "
        f"failed: {detail}"
        f"{self._source.on_damage}")

  def close(self):
    self._iterator = None


@atexit.register
def _close_open_iterators():
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()


class _Batches:
  """Source and layout (B, k, P, D, b); tests pass k, P, D to simulate."""

  def __init__(self, config, source: sources.Source | None, batch_size: int,
               what: str, process_index: int | None,
               process_count: int | None, local_device_count: int | None):
    self.source = source if source is not None else sources.make_source(
        config)
    self.batch_size = int(batch_size)
    self.process_index = (jax.process_index() if process_index is None
                          else int(process_index))
    self.process_count = (jax.process_count() if process_count is None
                          else int(process_count))
    self.local_device_count = (jax.local_device_count()
                               if local_device_count is None
                               else int(local_device_count))
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index {self.process_index} is not in "
                       f"[0, {self.process_count})")
    devices = self.process_count * self.local_device_count
    if self.batch_size < 1 or self.batch_size % devices:
      raise ValueError(
          f"{what}={self.batch_size} must be a positive multiple of the "
          f"number of devices ({devices} = {self.process_count} processes x "
          f"{self.local_device_count} local devices); e.g. use "
          f"{max(1, round(self.batch_size / devices)) * devices}")
    self.per_device_batch = self.batch_size // devices
    self.per_process_batch = self.local_device_count * self.per_device_batch
    self._config = config

  def _read_batches(self, rows: tf.data.Dataset, split: str,
                    load) -> tf.data.Dataset:
    """Rows (examples [n], *extras [n]) -> `load(record, *extras)` [D, b]."""
    # The functions below must not hold `self`: a reference cycle through the
    # dataset would leave its destruction to the garbage collector, which may
    # run inside one of the pipeline's own threads and deadlock.
    data, source = self._config.data, self.source
    parallel = (tf.data.AUTOTUNE if data.num_parallel_calls < 0
                else max(1, data.num_parallel_calls))
    shape = [self.local_device_count, self.per_device_batch]
    dataset = (
        rows.map(lambda e, *extra: (source.fetch(split, e), *extra),
                 num_parallel_calls=parallel, deterministic=True)
        .unbatch()
        .map(load, num_parallel_calls=parallel, deterministic=True)
        .batch(self.per_process_batch, drop_remainder=True)
        .map(lambda batch: {k: tf.reshape(v, tf.concat(
            [shape, tf.shape(v)[1:]], 0)) for k, v in batch.items()})
        .prefetch(tf.data.AUTOTUNE))
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    if data.num_threads > 0:
      options.threading.private_threadpool_size = data.num_threads
    return dataset.with_options(options)


class TrainIterator(_Batches, Iterator[dict]):
  """This process's share of global batches `start_step`, `start_step` + 1, ...

  `state` (from `get_state()`) replaces `start_step`. Horizontal flips
  (`config.data.flip`) are the only augmentation.
  """

  def __init__(self, config, *, start_step: int | None = None,
               state: dict | None = None, source: sources.Source | None = None,
               process_index: int | None = None,
               process_count: int | None = None,
               local_device_count: int | None = None):
    super().__init__(config, source, config.batch_size, "config.batch_size",
                     process_index, process_count, local_device_count)
    self.seed = int(config.seed)
    self.order = order_lib.TrainOrder(
        seed=self.seed, num_examples=self.source.num_examples("train"),
        batch_size=self.batch_size)
    if state is not None:
      self.check_state(state)
      if start_step is not None and int(start_step) != int(state["step"]):
        raise errors.ConfigError(
            f"start_step={start_step} but the saved input-pipeline state is "
            f"at step {int(state['step'])}; the model checkpoint and the "
            "input state must be saved together")
      start_step = int(state["step"])
    self._step = 0 if start_step is None else int(start_step)
    if self._step < 0:
      raise ValueError(f"start_step must be >= 0, got {self._step}")
    self._iterator = _NumpyIterator(self._build(bool(config.data.flip)),
                                    self.source)
    logging.info(
        "Input from step %d: process %d of %d, %d local devices x %d per "
        "device = %d per process, global batch %d", self._step,
        self.process_index, self.process_count, self.local_device_count,
        self.per_device_batch, self.per_process_batch, self.batch_size)

  @property
  def step(self) -> int:
    """The global step of the next batch `next()` returns."""
    return self._step

  @property
  def steps_per_epoch(self) -> float:
    return self.source.num_examples("train") / self.batch_size

  def _build(self, flip: bool) -> tf.data.Dataset:
    b, source, order = self.per_process_batch, self.source, self.order
    k, p = self.process_index, self.process_count

    def indices(step):
      rows = tf.numpy_function(lambda s: order.shard(int(s), k, p), [step],
                               (tf.int64, tf.int32, tf.bool), stateful=False)
      return tuple(tf.ensure_shape(x, [b]) for x in rows)

    def load(record, position, flipped):
      image = source.decode(record)
      if flip:
        image = tf.cond(flipped, lambda: image[:, ::-1], lambda: image)
      return {"image": images.to_model_range(image), "index": position}

    steps = tf.data.Dataset.range(self._step, np.iinfo(np.int64).max)
    return self._read_batches(steps.map(indices), "train", load)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._step += 1
    return batch

  def close(self) -> None:
    """Stops the background pipeline; `next()` then raises StopIteration."""
    self._iterator.close()

  def get_state(self) -> dict[str, np.ndarray]:
    """int64 scalars keyed by `STATE_KEYS`; step is the next one."""
    return {k: np.asarray(v, np.int64)
            for k, v in dict(step=self._step, **self._expected()).items()}

  def _expected(self) -> dict[str, int]:
    return {"seed": self.seed, "batch_size": self.batch_size,
            "num_examples": self.source.num_examples("train"),
            "fingerprint": self.source.fingerprint}

  def check_state(self, state: dict) -> None:
    """Raises ValueError if `state` was saved with other data or settings."""
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
      raise errors.ConfigError(
          f"input-pipeline state lacks {missing}; expected the dict of "
          f"{list(STATE_KEYS)} from get_state()")
    wrong = {k: (int(np.asarray(state[k])), v)
             for k, v in self._expected().items()
             if int(np.asarray(state[k])) != v}
    if wrong:
      details = ", ".join(f"{k}: saved {s}, now {n}"
                          for k, (s, n) in wrong.items())
      raise errors.ConfigError(
          "the saved input-pipeline state belongs to other data or settings "
          f"({details}); resuming would not reproduce the run's batches. Use "
          "the same config.seed, config.batch_size and dataset (same files, "
          "split and resolution), or start a new run.")


class EvalIterator(_Batches):
  """One in-order pass over the test split per `iter()`; `names[index]`.

  E = `config.data.eval_batch_size` (0: `config.batch_size`); every process
  yields `num_batches` batches. `num_examples` > 0: only the first ones.
  """

  def __init__(self, config, *, source: sources.Source | None = None,
               batch_size: int | None = None, num_examples: int = 0,
               process_index: int | None = None,
               process_count: int | None = None,
               local_device_count: int | None = None):
    if batch_size is None:
      batch_size = config.data.eval_batch_size or config.batch_size
    super().__init__(config, source, batch_size,
                     "the eval batch size (config.data.eval_batch_size)",
                     process_index, process_count, local_device_count)
    self.names = self.source.names["test"][:num_examples or None]
    self.num_examples = len(self.names)
    self.num_batches = math.ceil(self.num_examples / self.batch_size)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    b, source, r = self.per_process_batch, self.source, self.source.resolution
    steps = np.arange(self.num_batches, dtype=np.int64)[:, None]
    positions = (steps * self.batch_size + self.process_index * b +
                 np.arange(b, dtype=np.int64)[None, :])
    mask = positions < self.num_examples
    examples = np.where(mask, positions, 0)
    index = np.where(mask, positions, -1).astype(np.int32)

    def load(record, valid, idx):
      image = tf.cond(valid,
                      lambda: images.to_model_range(source.decode(record)),
                      lambda: tf.zeros([r, r, 3], tf.float32))
      return {"image": image, "mask": valid, "index": idx}

    rows = tf.data.Dataset.from_tensor_slices((examples, mask, index))
    return _NumpyIterator(self._read_batches(rows, "test", load),
                          self.source)


class DevicePrefetchIterator(Iterator[Any]):
  """Puts leaves [D, ...] on the D devices along axis 0, `size` batches ahead.

  `get_state()` is as of the next batch *returned* (none lost on resume).
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
      self._queue.append((state, jax.device_put(batch, self._sharding)))

  def __next__(self):
    self._fill()
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()[1]

  def get_state(self):
    return self._queue[0][0] if self._queue else self._iterator.get_state()


def prefetch_to_device(iterator, *, size: int = 2,
                       devices=None) -> DevicePrefetchIterator:
  """`DevicePrefetchIterator(iterator, size=size, devices=devices)`."""
  return DevicePrefetchIterator(iterator, size=size, devices=devices)
