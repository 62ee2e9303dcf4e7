"""Which training example sits at each position of each global batch.

The training stream is a pure function of (seed, step): the examples are
visited in epochs, each epoch a permutation of the training split; global
batch `s` holds stream positions `s*B ... s*B + B - 1` (B = global batch
size), so batches may straddle epochs. The horizontal-flip bit of each example
is a hash of (seed, step, position in the global batch). Process `k` of `P`
reads positions `k*B/P ... (k+1)*B/P - 1` of every global batch, so what a
process reads never depends on anything but (seed, step, k, P) and the
concatenation over processes is the same global batch for any P.

Randomness comes from a SplitMix64-style integer hash in NumPy, whose output
is fixed by its arithmetic (NumPy's `Generator` streams may change between
NumPy versions; an exact resume must not).
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
  """The example index and flip bit at every (step, global batch position).

  Args:
    seed: the data seed.
    num_examples: size of the training split.
    batch_size: the global batch size B.
  """

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
    """This process's share of global batch `step`.

    Returns:
      (examples int64 [b], positions int32 [b], flips bool [b]), b = B / P:
      the example indices into the training split, their positions in the
      global batch, and their flip bits.
    """
    per_process = self.batch_size // process_count
    positions = np.arange(process_index * per_process,
                          (process_index + 1) * per_process, dtype=np.int64)
    return (self.examples(step, positions), positions.astype(np.int32),
            self.flips(step, positions))
