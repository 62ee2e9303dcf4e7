"""The input pipeline's delivery rate in images per second."""

from __future__ import annotations

import os
import time

from absl import logging
import jax
import numpy as np

from mixvae.data import pipeline
from mixvae.data import sources


def host_cores() -> int:
  """CPU cores this process may run on (its affinity mask where known)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def measure_input_rate(config, *, steps: int = 50, warmup: int = 5,
                       to_device: bool = False,
                       source: sources.Source | None = None,
                       local_device_count: int | None = None) -> dict:
  """Times `steps` batches (copied if `to_device`); batch_size per process."""
  source = source if source is not None else sources.make_source(config)
  train = pipeline.TrainIterator(config, source=source,
                                 local_device_count=local_device_count)
  iterator = (pipeline.prefetch_to_device(train, size=config.data.prefetch)
              if to_device else train)
  for _ in range(warmup):
    jax.block_until_ready(next(iterator))
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(iterator)
  jax.block_until_ready(batch)
  seconds = time.perf_counter() - start
  images = steps * train.per_process_batch
  result = dict(images_per_second=images / seconds, seconds=seconds,
                images=images, batch_size=train.per_process_batch,
                host_cores=host_cores(), resolution=source.resolution,
                source=source.describe(),
                image_shape=tuple(np.shape(batch["image"])))
  logging.info("Input benchmark: %s", result)
  return result
