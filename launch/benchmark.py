r"""Benchmarks the train step: step time, images/s, FLOPs, MFU, memory.

  python launch/benchmark.py --config=configs/celebahq.py:test --steps=20
  python launch/benchmark.py --config=configs/demo.py \
      --config.model.dtype=bfloat16 --config.discriminator.dtype=bfloat16
  # On an accelerator, give the peak of ONE device for the MFU, e.g. H100 SXM
  # dense bfloat16:
  python launch/benchmark.py --config=configs/celebahq.py \
      --config.model.dtype=bfloat16 --config.discriminator.dtype=bfloat16 \
      --config.batch_size=64 --peak_tflops=989
  # Where the time goes (seconds per step by kind of operation):
  python launch/benchmark.py --config=configs/celebahq.py:test --profile_steps=2
  # The largest per-device batch that fits (doubling until out of memory):
  python launch/benchmark.py --config=configs/celebahq.py --find_max_batch

Times the steady state after compilation (see `mixvae.benchmarking`) and
prints one JSON line (appended to --json_out if set); BENCHMARKS.md's tables
are made from these lines. On CPU without --peak_tflops the MFU is the
fraction of the host's measured matmul rate. Simulated CPU devices:
XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""

import datetime
import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from mixvae import nested

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/celebahq.py:test.",
    lock_config=True)
_STEPS = flags.DEFINE_integer(
    "steps", 10, "Timed steps. 0 with --find_max_batch: only the search (no "
    "table row).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after the first "
                               "(compiling) one.")
_PEAK = flags.DEFINE_float(
    "peak_tflops", None, "Peak TFLOP/s of one device in the compute dtype "
    "(for the MFU). Default: on CPU the measured matmul rate of the host; "
    "elsewhere none (no MFU).")
_INPUT = flags.DEFINE_enum(
    "input", "synthetic", ["synthetic", "pipeline"],
    "'synthetic': random batches already on the devices (the step alone); "
    "'pipeline': the config's input pipeline, prefetched to the devices.")
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 2048, "Side of the CPU matmul probe (0: no probe).")
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps", 0, "Then trace this many steps with jax.profiler and "
    "add `time_by_op_kind` (seconds per step; mixvae.op_profile).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Append the JSON line here.")
_FIND_MAX_BATCH = flags.DEFINE_bool(
    "find_max_batch", False, "Also search the largest per-device batch: "
    "double it from the config's until a step runs out of memory (or "
    "--max_batch_cap).")
_MAX_BATCH_CAP = flags.DEFINE_integer(
    "max_batch_cap", None, "Largest per-device batch to try (default 1024 on "
    "accelerators, 8 on CPU, where nothing runs out of device memory).")
_MAX_BATCH_STEPS = flags.DEFINE_integer(
    "max_batch_steps", 2, "Steps run per candidate batch; 0 compiles only "
    "and judges by XLA's memory analysis against --memory_budget_gb.")
_MEMORY_BUDGET = flags.DEFINE_float(
    "memory_budget_gb", None, "Per-device memory budget (GiB) for the batch "
    "search; default: what the device reports (none on CPU).")


def _config_name(flag_value: str) -> str:
  """'celebahq.py:test' from 'configs/celebahq.py:test' (+ overrides)."""
  name = os.path.basename(flag_value) if flag_value else ""
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  skip = {"model.dtype", "discriminator.dtype", "model.remat", "batch_size"}
  extra = [f"{k}={v}" for k, v in sorted(nested.flatten(
      overrides, sep=".").items()) if k not in skip]
  if _INPUT.value != "synthetic":
    extra.append(f"input={_INPUT.value}")
  return " ".join([name, *extra])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  from mixvae import benchmarking  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  name = _config_name(config_flags.get_config_filename(flags.FLAGS["config"]))
  if _STEPS.value == 0 and not _FIND_MAX_BATCH.value:
    raise app.UsageError("--steps=0 needs --find_max_batch")
  if _STEPS.value > 0:
    result = benchmarking.measure(
        config, steps=_STEPS.value, warmup=_WARMUP.value,
        peak_tflops=_PEAK.value, input_source=_INPUT.value,
        matmul_size=_MATMUL_SIZE.value, config_name=name,
        profile_steps=_PROFILE_STEPS.value)
  else:
    result = {"config": name, "dtype": config.model.dtype,
              "remat": config.model.remat,
              "device_kind": jax.devices()[0].device_kind}
  result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M UTC")
  if _FIND_MAX_BATCH.value:
    on_cpu = jax.devices()[0].platform == "cpu"
    cap = _MAX_BATCH_CAP.value or (8 if on_cpu else 1024)
    budget = (int(_MEMORY_BUDGET.value * 2**30) if _MEMORY_BUDGET.value
              else None)
    result["max_batch"] = benchmarking.find_max_batch(
        config, cap=cap, steps=_MAX_BATCH_STEPS.value,
        memory_budget_bytes=budget)
  line = json.dumps(result, sort_keys=True)
  print(line, flush=True)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
