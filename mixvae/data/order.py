"""The training stream as a pure function of (seed, step).

Epochs are permutations of the training split; global batch s holds stream
positions sB ... sB + B - 1 (batches may straddle epochs); process k of P
takes kB/P ... (k+1)B/P - 1, so the global batch is the same for any P.
Hashing is SplitMix64 in NumPy arithmetic: unlike `np.random.Generator`, it
cannot change between NumPy versions and break an exact resume.
"""

from __future__ import annotations

import threading

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_TAG_PERMUTATION = 1
_TAG_FLIP = 2


def _to_u64(x) -> np.ndarray:
  return np.asarray(x).astype(np.int64).astype(np.uint64)


def hash_u64(*values) -> np.ndarray:
  """A 64-bit hash of integer arrays (broadcast together), SplitMix64 based."""
  with np.errstate(over="ignore"):
    h = np.zeros((), np.uint64)
    for v in values:
      z = (h ^ _to_u64(v)) + _GOLDEN
      z = (z ^ (z >> np.uint64(30))) * _MUL1
      z = (z ^ (z >> np.uint64(27))) * _MUL2
      h = z ^ (z >> np.uint64(31))
    return h


class TrainOrder:
  """The example index and flip bit at every (step, global batch position)."""

  def __init__(self, *, seed: int, num_examples: int, batch_size: int):
    if num_examples < 1:
      raise ValueError("the training split is empty")
    self.seed = int(seed)
    self.num_examples = int(num_examples)
    self.batch_size = int(batch_size)
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()  # tf.data may call from several threads.

  def permutation(self, epoch: int) -> np.ndarray:
    """int64 [N]: the order of the training split in `epoch`."""
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        keys = hash_u64(self.seed, _TAG_PERMUTATION, epoch,
                        np.arange(self.num_examples))
        perm = np.argsort(keys, kind="stable").astype(np.int64)
        if len(self._cache) >= 4:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = perm
      return perm

  def examples(self, step: int, positions: np.ndarray) -> np.ndarray:
    """int64: the example at `positions` of global batch `step`."""
    stream = np.int64(step) * self.batch_size + np.asarray(positions, np.int64)
    epochs = stream // self.num_examples
    within = stream % self.num_examples
    out = np.empty(stream.shape, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self.permutation(int(epoch))[within[sel]]
    return out

  def flips(self, step: int, positions: np.ndarray) -> np.ndarray:
    """bool: whether the example at `positions` of batch `step` is flipped."""
    h = hash_u64(self.seed, _TAG_FLIP, step, np.asarray(positions, np.int64))
    return (h >> np.uint64(63)).astype(bool)

  def shard(self, step: int, process_index: int, process_count: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(examples int64 [B/P], positions int32 [B/P], flips bool [B/P])."""
    per_process = self.batch_size // process_count
    positions = np.arange(process_index * per_process,
                          (process_index + 1) * per_process, dtype=np.int64)
    return (self.examples(step, positions), positions.astype(np.int32),
            self.flips(step, positions))
