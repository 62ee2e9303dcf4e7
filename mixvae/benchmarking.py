"""Train-step benchmark: step time, throughput, XLA FLOPs, MFU, memory.

`measure(config)` builds the run's state and its pmapped `train_step` exactly
as `mixvae.train` does (`train.make_p_train_step`, donated state replicated
over the pmap axis), feeds it batches already on the devices and times the
steady state after compilation:

  * the first call (trace + lower + XLA compile + one step), with the
    compile time JAX reports through `jax.monitoring`;
  * `warmup` more untimed steps, then `steps` timed ones. Step i's time is
    the interval between the completions of steps i-1 and i, with step i+1
    already dispatched, as in the training loop (no host synchronization
    between steps except the one that reads the clock);
  * whether anything compiled again after the first step (`CompileCounter`);
  * the per-device program's FLOPs from `compiled.cost_analysis()` (times
    the device count for the step's total), the achieved FLOP/s and its
    fraction of a peak (`peak_tflops` per device; on a CPU without one, the
    host's measured matmul rate, `measure_matmul_tflops`);
  * peak device memory (`device.memory_stats()`, None on CPU) and XLA's
    compiled memory analysis (arguments, outputs, temporaries) per device.

`find_max_batch(config)` doubles the per-device batch until a step no longer
fits (out of memory, or over a memory budget) or a cap is reached.

`format_row` / `append_row` write the "## Train step" table of BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import os
import platform
import subprocess
import threading
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixvae import data as data_lib
from mixvae import replication
from mixvae import train
from mixvae import train_state as train_state_lib

AXIS = train.AXIS
TABLE_HEADING = "## Train step"
TABLE_COLUMNS = (
    "date", "device", "devices", "config", "global batch", "dtype", "remat",
    "step ms (median, IQR)", "images/s", "images/s/device", "TFLOP/step",
    "achieved TFLOP/s", "MFU (of peak)", "peak memory", "compile s",
    "recompiled", "commit")

# The fields `measure` always returns (tests/test_benchmark.py checks them).
RESULT_FIELDS = (
    "config", "platform", "device_kind", "device", "num_devices",
    "process_count", "global_batch", "per_device_batch", "resolution",
    "dtype", "remat", "input", "steps", "warmup", "step_ms_median",
    "step_ms_p25", "step_ms_p75", "step_ms_min", "step_ms_max", "step_ms",
    "images_per_s", "images_per_s_per_device", "flops_per_step",
    "flops_per_device_step", "achieved_tflops", "peak_tflops",
    "peak_source", "mfu", "peak_memory_bytes", "memory_analysis",
    "first_step_s", "compile_s", "trace_lower_s", "compiles_first_step",
    "compiles_after_first_step", "recompiled", "commit", "date",
    "jax_version", "host_cores", "load_average")

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_TO_MLIR = "/jax/core/compile/jaxpr_to_mlir_module_duration"


# ------------------------------------------------------------ compilations --


class CompileCounter:
  """Counts what JAX traces and compiles while `watch()` is active.

  Listens to JAX's compilation events (`jax.monitoring`): jaxpr tracing,
  lowering to MLIR and the XLA backend compile (also when the persistent
  compilation cache serves it). Only the events fired on the watching
  thread inside a `with counter.watch():` block are counted, so unrelated
  small programs (e.g. `jnp.zeros` elsewhere) can be kept out.

    counter = CompileCounter()
    with counter.watch():
      state, metrics = p_step(state, batch)
    counter.backend_compiles  # 1 on the first call, 0 afterwards
  """

  _lock = threading.Lock()
  _installed = False
  _active: list["CompileCounter"] = []

  def __init__(self):
    self.events: list[tuple[str, float, str | None]] = []
    self._thread = None

  @classmethod
  def _install(cls) -> None:
    with cls._lock:
      if not cls._installed:
        jax.monitoring.register_event_duration_secs_listener(cls._on_event)
        cls._installed = True

  @classmethod
  def _on_event(cls, event: str, duration: float, **kwargs) -> None:
    if event not in (_BACKEND_COMPILE, _TRACE, _TO_MLIR):
      return
    ident = threading.get_ident()
    for counter in list(cls._active):
      if counter._thread == ident:  # pylint: disable=protected-access
        counter.events.append((event, float(duration),
                               kwargs.get("fun_name")))

  @contextlib.contextmanager
  def watch(self) -> Iterator["CompileCounter"]:
    """Counts the events of this thread inside the block."""
    self._install()
    self._thread = threading.get_ident()
    self._active.append(self)
    try:
      yield self
    finally:
      self._active.remove(self)

  def reset(self) -> None:
    self.events = []

  def _select(self, event: str) -> list[tuple[str, float, str | None]]:
    return [e for e in self.events if e[0] == event]

  @property
  def backend_compiles(self) -> int:
    """XLA compilations (including ones the persistent cache served)."""
    return len(self._select(_BACKEND_COMPILE))

  @property
  def traces(self) -> int:
    """Functions traced to jaxprs (a retrace precedes any recompile)."""
    return len(self._select(_TRACE))

  @property
  def compile_seconds(self) -> float:
    return sum(e[1] for e in self._select(_BACKEND_COMPILE))

  @property
  def trace_lower_seconds(self) -> float:
    return sum(e[1] for e in self.events if e[0] in (_TRACE, _TO_MLIR))

  def compiled_functions(self) -> list[str]:
    return [str(e[2]) for e in self._select(_BACKEND_COMPILE)]


# ---------------------------------------------------------- XLA statistics --


def cost_flops(compiled) -> float | None:
  """FLOPs of a compiled program from `cost_analysis()` (None if unknown).

  Older JAX returns a list with one dict per program, newer a dict. For a
  pmapped function the program is the per-device one.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend has it.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def memory_analysis(compiled) -> dict[str, int] | None:
  """XLA's per-device buffer sizes of a compiled program (bytes)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  if isinstance(stats, (list, tuple)):
    stats = stats[0] if stats else None
    if stats is None:
      return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  result = {f: int(getattr(stats, f, 0) or 0) for f in fields}
  # Live at once during a step: the inputs, the outputs not aliased to
  # (donated) inputs, and the temporaries.
  result["total_bytes"] = (result["argument_size_in_bytes"] +
                           result["output_size_in_bytes"] -
                           result["alias_size_in_bytes"] +
                           result["temp_size_in_bytes"])
  return result


def _memory_stat(devices: Sequence[jax.Device], key: str) -> list[int]:
  """`memory_stats()[key]` of each device that reports it (none on CPU)."""
  values = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and key in stats:
      values.append(int(stats[key]))
  return values


def peak_memory_bytes(devices: Sequence[jax.Device]) -> int | None:
  """The largest `peak_bytes_in_use` over the devices (None on CPU)."""
  return max(_memory_stat(devices, "peak_bytes_in_use"), default=None)


def device_memory_limit(devices: Sequence[jax.Device]) -> int | None:
  """The smallest `bytes_limit` over the devices (None on CPU)."""
  return min(_memory_stat(devices, "bytes_limit"), default=None)


def measure_matmul_tflops(size: int = 2048, repeats: int = 3,
                          dtype: Any = jnp.float32,
                          devices: Sequence[jax.Device] | None = None
                          ) -> float:
  """The best matmul rate of all the local devices together, in TFLOP/s.

  Runs one `size` x `size` matmul per device at once (pmapped), the same
  way the train step shares the host among simulated CPU devices, and
  returns the fastest of `repeats` timed calls (after a warm-up).
  """
  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices)
  sharding = replication.local_sharding(devices)
  rng = np.random.default_rng(0)
  a = jax.device_put(rng.standard_normal((n, size, size), np.float32)
                     .astype(dtype), sharding)
  b = jax.device_put(rng.standard_normal((n, size, size), np.float32)
                     .astype(dtype), sharding)
  matmul = jax.pmap(jnp.matmul, devices=devices)
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return n * 2.0 * size ** 3 / best / 1e12


# ------------------------------------------------------------ descriptions --


def git_commit(root: str | None = None) -> str:
  """`git rev-parse --short HEAD` (+ '-dirty' with local changes), or 'unknown'."""
  root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
        text=True, check=True, timeout=10).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
        capture_output=True, text=True, check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return f"{commit}-dirty" if dirty else (commit or "unknown")


def host_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def describe_device(device: jax.Device) -> str:
  """E.g. 'NVIDIA H100 80GB HBM3', 'TPU v4' or 'CPU: AMD EPYC (2 cores)'."""
  if device.platform == "cpu":
    return f"CPU: {_cpu_model()} ({host_cores()} cores)"
  return str(device.device_kind)


def _compute_dtype(config: ml_collections.ConfigDict) -> str:
  model, disc = config.model.dtype, config.discriminator.dtype
  return model if model == disc else f"{model}/{disc}"


# ----------------------------------------------------------------- batches --


def synthetic_batches(config: ml_collections.ConfigDict, count: int = 2,
                      devices: Sequence[jax.Device] | None = None,
                      seed: int = 0) -> list[dict[str, jax.Array]]:
  """`count` random batches in the loop's layout, already on the devices.

  'image' float32 [D, b, R, R, C] uniform in [-1, 1], 'index' int32 [D, b]
  (positions in the global batch), sharded over the pmap axis.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices)
  per_process = config.batch_size // jax.process_count()
  b = per_process // n
  r, c = config.model.resolution, config.model.channels
  sharding = replication.local_sharding(devices, AXIS)
  rng = np.random.default_rng(seed)
  offset = jax.process_index() * per_process
  index = (offset + np.arange(n * b, dtype=np.int32)).reshape(n, b)
  batches = []
  for _ in range(count):
    image = rng.uniform(-1, 1, (n, b, r, r, c)).astype(np.float32)
    batches.append(jax.device_put({"image": image, "index": index},
                                  sharding))
  return batches


class _Cycle:
  def __init__(self, items):
    self._items, self._i = items, 0

  def __next__(self):
    item = self._items[self._i % len(self._items)]
    self._i += 1
    return item


def _batch_iterator(config, input_source: str):
  if input_source == "synthetic":
    return _Cycle(synthetic_batches(config))
  if input_source == "pipeline":
    return data_lib.prefetch_to_device(data_lib.train_iterator(config),
                                       size=config.data.prefetch)
  raise ValueError(f"input={input_source!r}: use 'synthetic' (batches "
                   "already on the devices) or 'pipeline' (the config's "
                   "input pipeline, prefetched to the devices)")


# ---------------------------------------------------------------- measure --


def _percentile(values: Sequence[float], q: float) -> float:
  return float(np.percentile(np.asarray(values, np.float64), q))


def measure(config: ml_collections.ConfigDict, *, steps: int = 10,
            warmup: int = 2, peak_tflops: float | None = None,
            input_source: str = "synthetic", matmul_size: int = 2048,
            config_name: str = "", analyse: bool = True) -> dict[str, Any]:
  """Benchmarks the train step of `config` (see the module docstring).

  Args:
    config: the run config (its batch_size is the global batch).
    steps: timed steps (>= 1).
    warmup: untimed steps after the first (compiling) one.
    peak_tflops: the peak of ONE device in TFLOP/s for the MFU (e.g. the
      dense bf16 peak of the accelerator). None: on CPU, the host's measured
      matmul rate in the compute dtype (float32, or the better of float32
      and bfloat16); elsewhere no MFU.
    input_source: 'synthetic' (pre-made batches on the devices: the step
      alone) or 'pipeline' (the config's input pipeline, prefetched).
    matmul_size: the side of the CPU matmul probe.
    config_name: how to name the config in the result (e.g. the flag value).
    analyse: also read XLA's cost and memory analyses (a lowering of the
      step; served from the compilation cache where JAX shares it).

  Returns:
    A JSON-serializable dict with at least `RESULT_FIELDS`.
  """
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1")
  train.validate_config(config)
  devices = jax.local_devices()
  n = len(devices)
  vae, disc, vae_tx, disc_tx = train.build(config)
  state = replication.replicate(
      train_state_lib.create_train_state(
          config, vae=vae, discriminator=disc, vae_tx=vae_tx,
          disc_tx=disc_tx),
      axis_name=AXIS)
  p_step = train.make_p_train_step(config, vae, disc, vae_tx, disc_tx)
  batches = _batch_iterator(config, input_source)

  first = CompileCounter()
  batch = next(batches)
  jax.block_until_ready(batch)
  start = time.perf_counter()
  with first.watch():
    state, metrics = p_step(state, batch)
  jax.block_until_ready((state, metrics))
  first_step_s = time.perf_counter() - start

  later = CompileCounter()
  with later.watch():
    for _ in range(warmup):
      state, metrics = p_step(state, next(batches))
    jax.block_until_ready((state, metrics))
    # Timed: dispatch step i+1, then wait for step i's metrics (outputs of
    # the same program, not donated), so the device is never idle waiting
    # for the host between steps.
    done = []
    start = time.perf_counter()
    previous = None
    for _ in range(steps):
      state, metrics = p_step(state, next(batches))
      if previous is not None:
        jax.block_until_ready(previous)
        done.append(time.perf_counter())
      previous = metrics
    jax.block_until_ready((state, previous))
    done.append(time.perf_counter())
  step_s = np.diff([start] + done)
  losses = {k: float(np.asarray(v)[0]) for k, v in jax.device_get(
      previous).items() if k.startswith("loss/")}

  flops_device = None
  mem = None
  if analyse:
    batch = next(batches)
    compiled = p_step.lower(state, batch).compile()
    flops_device = cost_flops(compiled)
    mem = memory_analysis(compiled)

  global_batch = int(config.batch_size)
  median = float(np.median(step_s))
  flops_step = (flops_device * n * jax.process_count()
                if flops_device else None)
  achieved = flops_step / median / 1e12 if flops_step else None
  platform_name = devices[0].platform
  if peak_tflops:
    peak_total = float(peak_tflops) * n * jax.process_count()
    peak_source = f"--peak_tflops={peak_tflops} per device"
  elif platform_name == "cpu" and matmul_size > 0:
    dtypes = {"float32"}
    dtypes.update({config.model.dtype, config.discriminator.dtype})
    rates = {d: measure_matmul_tflops(matmul_size, dtype=jnp.dtype(d))
             for d in sorted(dtypes)}
    best = max(rates, key=rates.get)
    # The host's rate, shared by all simulated CPU devices: not per device.
    peak_total = rates[best] * jax.process_count()
    peak_source = (f"measured CPU matmul, {best} {matmul_size}^2 on all "
                   f"{n} devices: " + ", ".join(
                       f"{d} {r * 1e3:.1f} GFLOP/s" for d, r in rates.items()))
  else:
    peak_total, peak_source = None, None

  result = {
      "config": config_name,
      "platform": platform_name,
      "device_kind": str(devices[0].device_kind),
      "device": describe_device(devices[0]),
      "num_devices": n * jax.process_count(),
      "process_count": jax.process_count(),
      "global_batch": global_batch,
      "per_device_batch": global_batch // (n * jax.process_count()),
      "resolution": int(config.model.resolution),
      "dtype": _compute_dtype(config),
      "remat": bool(config.model.get("remat", False)),
      "input": input_source,
      "steps": int(steps),
      "warmup": int(warmup),
      "step_ms_median": median * 1e3,
      "step_ms_p25": _percentile(step_s, 25) * 1e3,
      "step_ms_p75": _percentile(step_s, 75) * 1e3,
      "step_ms_min": float(np.min(step_s)) * 1e3,
      "step_ms_max": float(np.max(step_s)) * 1e3,
      "step_ms": [float(s) * 1e3 for s in step_s],
      "images_per_s": global_batch / median,
      "images_per_s_per_device": global_batch / median / (
          n * jax.process_count()),
      "flops_per_step": flops_step,
      "flops_per_device_step": flops_device,
      "achieved_tflops": achieved,
      "peak_tflops": peak_total,
      "peak_source": peak_source,
      "mfu": (achieved / peak_total) if achieved and peak_total else None,
      "peak_memory_bytes": peak_memory_bytes(devices),
      "memory_analysis": mem,
      "first_step_s": first_step_s,
      "compile_s": first.compile_seconds,
      "trace_lower_s": first.trace_lower_seconds,
      "compiles_first_step": first.backend_compiles,
      "compiles_after_first_step": later.backend_compiles,
      "traces_after_first_step": later.traces,
      "recompiled": later.backend_compiles > 0 or later.traces > 0,
      "compiled_after_first_step": later.compiled_functions(),
      "last_losses": losses,
      "commit": git_commit(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%d %H:%M UTC"),
      "jax_version": jax.__version__,
      "host_cores": host_cores(),
      "load_average": _load_average(),
  }
  return result


def _load_average() -> float | None:
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


# ------------------------------------------------------- largest batch --


def _is_out_of_memory(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory",
                                 "resource exhausted", "oom", "memoryerror",
                                 "failed to allocate"))


def with_batch(config: ml_collections.ConfigDict,
               per_device_batch: int) -> ml_collections.ConfigDict:
  """A copy of `config` with the global batch for `per_device_batch`."""
  new = copy.deepcopy(config)
  with new.unlocked():
    new.batch_size = per_device_batch * jax.device_count()
  return new


def find_max_batch(config: ml_collections.ConfigDict, *, cap: int,
                   start: int | None = None, steps: int = 2,
                   memory_budget_bytes: int | None = None
                   ) -> dict[str, Any]:
  """The largest per-device batch (doubling from `start`) whose step runs.

  Each candidate is compiled and, if `steps` > 0, run for `steps` steps; it
  fails on an out-of-memory error (at compile or run time) or when XLA's
  memory analysis exceeds `memory_budget_bytes` (default: the devices'
  `bytes_limit` where they report one). The search stops at the first
  failure or after the candidate `cap`. On a CPU nothing runs out of device
  memory, so there the cap (or a budget) ends it: the result says which.

  Returns:
    dict: max_per_device_batch (the largest that fitted, None if none),
    stopped_by ('out_of_memory' | 'memory_budget' | 'cap'), candidates (one
    dict per tried batch: per_device_batch, fits, memory_analysis total
    bytes, step_ms_median and images_per_s where run, error), and
    estimated_max_per_device_batch (`estimate_max_batch`).
  """
  devices = jax.local_devices()
  budget = memory_budget_bytes or device_memory_limit(devices)
  b = start or max(1, config.batch_size // jax.device_count())
  candidates, best, stopped_by = [], None, "cap"
  while b <= cap:
    cfg = with_batch(config, b)
    entry: dict[str, Any] = {"per_device_batch": b}
    try:
      if steps > 0:
        r = measure(cfg, steps=steps, warmup=0, matmul_size=0)
        mem = r["memory_analysis"]
        entry.update(step_ms_median=r["step_ms_median"],
                     images_per_s=r["images_per_s"],
                     peak_memory_bytes=r["peak_memory_bytes"])
      else:
        analysis = compile_only_analysis(cfg)
        mem = analysis["memory_analysis"]
        entry["flops_per_device_step"] = analysis["flops_per_device_step"]
      entry["memory_bytes"] = mem["total_bytes"] if mem else None
      if budget and mem and mem["total_bytes"] > budget:
        entry.update(fits=False, error="over the memory budget")
        stopped_by = "memory_budget"
      else:
        entry["fits"] = True
    except Exception as e:  # pylint: disable=broad-except
      if not _is_out_of_memory(e):
        raise
      entry.update(fits=False, error=str(e).splitlines()[0][:200])
      stopped_by = "out_of_memory"
    candidates.append(entry)
    gc.collect()
    jax.clear_caches()
    if not entry["fits"]:
      break
    best = b
    b *= 2
  return {"max_per_device_batch": best, "stopped_by": stopped_by,
          "cap": cap, "memory_budget_bytes": budget,
          "estimated_max_per_device_batch": estimate_max_batch(candidates,
                                                               budget),
          "candidates": candidates}


def estimate_max_batch(candidates: Sequence[dict[str, Any]],
                       budget: int | None) -> int | None:
  """The per-device batch where XLA's memory estimate meets `budget`.

  A straight line through the candidates' `memory_bytes` (fixed state plus
  activations per example), between the powers of two the search tries.
  None without a budget or with fewer than two measured candidates.
  """
  points = [(c["per_device_batch"], c["memory_bytes"]) for c in candidates
            if c.get("memory_bytes")]
  if not budget or len(points) < 2:
    return None
  b, m = np.asarray(points, np.float64).T
  slope, intercept = np.polyfit(b, m, 1)
  if slope <= 0:
    return None
  return int(max(0, np.floor((budget - intercept) / slope)))


def compile_only_analysis(config) -> dict[str, Any]:
  """XLA's memory and cost analyses of the step, without running it.

  Nothing but the compiled program is allocated (the state and batch are
  abstract), so this also sizes steps that would not fit on this host.

  Returns:
    dict: memory_analysis (per device, see `memory_analysis`),
    flops_per_device_step, compile_s (lowering and compilation).
  """
  vae, disc, vae_tx, disc_tx = train.build(config)
  abstract = train_state_lib.abstract_train_state(
      config, vae=vae, discriminator=disc, vae_tx=vae_tx, disc_tx=disc_tx)
  devices = jax.local_devices()
  n = len(devices)
  sharding = replication.local_sharding(devices, AXIS)

  def spec(x):
    return jax.ShapeDtypeStruct((n,) + tuple(x.shape), x.dtype,
                                sharding=sharding)
  state = jax.tree.map(spec, abstract)
  b = config.batch_size // jax.device_count()
  r, c = config.model.resolution, config.model.channels
  batch = {"image": jax.ShapeDtypeStruct((n, b, r, r, c), jnp.float32,
                                         sharding=sharding),
           "index": jax.ShapeDtypeStruct((n, b), jnp.int32,
                                         sharding=sharding)}
  p_step = train.make_p_train_step(config, vae, disc, vae_tx, disc_tx)
  start = time.perf_counter()
  compiled = p_step.lower(state, batch).compile()
  return {"memory_analysis": memory_analysis(compiled),
          "flops_per_device_step": cost_flops(compiled),
          "compile_s": time.perf_counter() - start}


# ------------------------------------------------------------ the table --


def _si_bytes(n: int | None) -> str:
  if n is None:
    return "n/a"
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _sig(x: float | None, digits: int = 3) -> str:
  """`x` to `digits` significant digits, without exponents for the sizes here."""
  if x is None:
    return "n/a"
  if x == 0:
    return "0"
  decimals = max(0, digits - 1 - int(np.floor(np.log10(abs(x)))))
  return f"{x:.{decimals}f}"


def format_row(result: dict[str, Any]) -> str:
  """One Markdown row of the "## Train step" table."""
  mem = result.get("memory_analysis") or {}
  if result.get("peak_memory_bytes") is not None:
    memory = _si_bytes(result["peak_memory_bytes"])
  elif mem.get("total_bytes"):
    memory = f"{_si_bytes(mem['total_bytes'])} (XLA est./device)"
  else:
    memory = "n/a"
  if result.get("mfu") is None:
    mfu = "n/a"
  elif result.get("platform") == "cpu" and "measured" in str(
      result.get("peak_source")):
    mfu = f"{result['mfu']:.1%} of measured matmul"
  else:
    mfu = f"{result['mfu']:.1%}"
  flops = result.get("flops_per_step")
  device = result["device"]
  if result.get("load_average") is not None:
    device += f", load {result['load_average']:.1f}"
  cells = [
      result["date"],
      device,
      f"{result['num_devices']}" + (
          f" ({result['process_count']} processes)"
          if result["process_count"] > 1 else ""),
      f"`{result['config']}`" if result["config"] else "",
      str(result["global_batch"]),
      result["dtype"],
      "on" if result["remat"] else "off",
      f"{_sig(result['step_ms_median'])} ({_sig(result['step_ms_p25'])}-"
      f"{_sig(result['step_ms_p75'])}; n={result['steps']})",
      _sig(result["images_per_s"]),
      _sig(result["images_per_s_per_device"]),
      _sig(flops / 1e12 if flops else None),
      _sig(result.get("achieved_tflops")),
      mfu,
      memory,
      f"{result['compile_s']:.1f}",
      "yes" if result["recompiled"] else "no",
      result["commit"],
  ]
  return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def append_row(path: str, row: str) -> None:
  """Appends `row` to the table under "## Train step" in `path`.

  Creates the section (heading and table header) at the end of the file if
  it is missing, or the table at the end of the section.
  """
  header = ("| " + " | ".join(TABLE_COLUMNS) + " |\n"
            "|" + "---|" * len(TABLE_COLUMNS) + "\n")
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  lines = text.splitlines(keepends=True)
  try:
    start = next(i for i, line in enumerate(lines)
                 if line.strip() == TABLE_HEADING)
  except StopIteration:
    if text and not text.endswith("\n"):
      text += "\n"
    text += f"\n{TABLE_HEADING}\n\n{header}{row}\n"
    with open(path, "w") as f:
      f.write(text)
    return
  end = next((i for i in range(start + 1, len(lines))
              if lines[i].startswith("## ")), len(lines))
  table_rows = [i for i in range(start + 1, end)
                if lines[i].lstrip().startswith("|")]
  if table_rows and lines[table_rows[0]].startswith("| date"):
    # Insert after the last row of the first table of the section.
    last = table_rows[0]
    while last + 1 < end and lines[last + 1].lstrip().startswith("|"):
      last += 1
    if not lines[last].endswith("\n"):
      lines[last] += "\n"
    lines.insert(last + 1, row + "\n")
  else:
    block = ["\n", header, row + "\n"]
    while end > start + 1 and not lines[end - 1].strip():
      end -= 1
    if end > 0 and not lines[end - 1].endswith("\n"):
      lines[end - 1] += "\n"
    lines[end:end] = block
  with open(path, "w") as f:
    f.write("".join(lines))
