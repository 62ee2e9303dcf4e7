r"""BENCHMARKS.md's GPU rows in one command: one JSON file.

  bash launch/benchmark_gpu.sh            # a fresh machine with one GPU
  python launch/benchmark_gpu.py --out=gpu.json   # CUDA JAX already there

For `configs/celebahq.py` (256x256) in each of --dtypes, on this host's
devices: the step's images/s, MFU against the bf16 matmul rate measured here
(the "peak"), peak memory, XLA's FLOPs and compile time
(`benchmarking.measure`); the largest per-device batch (in the first of --dtypes,
doubling from --batch_per_device; `benchmarking.find_max_batch`); and the input
pipeline's images/s on this host, decoding and resizing a stand-in folder
of 1024x1024 JPEGs to 256x256 (`throughput.measure_input_rate`). The JSON's
fields are described in BENCHMARKS.md. The tests run it on a CPU with the
`test` config, for its shape only.
"""

import copy
import datetime
import json
import os
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/celebahq.py", "The config measured.",
    lock_config=True)
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"],
                            "Compute dtypes of both networks.")
_BATCH = flags.DEFINE_integer("batch_per_device", 16, "Per-device batch of "
                              "the timed steps; the search starts here.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per dtype.")
_MAX_BATCH_CAP = flags.DEFINE_integer(
    "max_batch_cap", 256, "Largest per-device batch tried (0: no search).")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 8192,
                                    "Side of the bf16 matmul of the peak.")
_INPUT_STEPS = flags.DEFINE_integer("input_steps", 20, "Timed input batches.")
_SAMPLES = flags.DEFINE_integer("sample_count", 256, "Stand-in JPEGs.")
_OUT = flags.DEFINE_string("out", "benchmark_gpu.json", "The JSON file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mixvae import benchmarking  # pylint: disable=g-import-not-at-top
  from mixvae.data import samples  # pylint: disable=g-import-not-at-top
  from mixvae.data import throughput  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  base = _CONFIG.value
  peak = benchmarking.measure_matmul_tflops(
      _MATMUL_SIZE.value, dtype=jnp.bfloat16) / jax.local_device_count()
  result = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%d %H:%M UTC"),
      "device_kind": jax.devices()[0].device_kind,
      "devices": jax.device_count(), "jax": jax.__version__,
      "resolution": base.model.resolution,
      "bf16_matmul_tflops_per_device": peak, "runs": [], "max_batch": None}
  for dtype in _DTYPES.value:
    config = copy.deepcopy(base)
    config.model.dtype = config.discriminator.dtype = dtype
    config.batch_size = _BATCH.value * jax.device_count()
    run = benchmarking.measure(config, steps=_STEPS.value, warmup=2,
                               peak_tflops=peak, matmul_size=0,
                               config_name=f"celebahq.py {dtype}")
    result["runs"].append(run)
    if dtype == _DTYPES.value[0] and _MAX_BATCH_CAP.value:
      result["max_batch"] = benchmarking.find_max_batch(
          config, cap=_MAX_BATCH_CAP.value, steps=0)
  with tempfile.TemporaryDirectory() as folder:
    samples.write_sample_folder(folder, count=_SAMPLES.value, size=1024)
    config = copy.deepcopy(base)
    config.data.source, config.data.image_dir = "folder", folder
    config.data.num_train = 0
    config.batch_size = _BATCH.value * jax.device_count()
    result["input"] = throughput.measure_input_rate(
        config, steps=_INPUT_STEPS.value, warmup=3)
  result["wall_seconds"] = time.perf_counter() - start
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True, default=str)
  print(f"wrote {_OUT.value} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
  app.run(main)
