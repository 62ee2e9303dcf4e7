"""Train-step benchmark: step time, throughput, XLA FLOPs, MFU, memory."""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import os
import threading
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixvae import data as data_lib
from mixvae import op_profile
from mixvae import replication
from mixvae import trainer as trainer_lib
from mixvae.data import throughput

AXIS = trainer_lib.AXIS

# The fields `measure` always returns (tests/test_benchmark.py checks them).
RESULT_FIELDS = (
    "config", "platform", "device_kind", "num_devices",
    "process_count", "global_batch", "per_device_batch", "resolution",
    "dtype", "remat", "input", "steps", "warmup", "step_ms_median",
    "step_ms_p25", "step_ms_p75", "step_ms_min", "step_ms_max", "step_ms",
    "images_per_s", "images_per_s_per_device", "flops_per_step",
    "flops_per_device_step", "achieved_tflops", "peak_tflops",
    "peak_source", "mfu", "peak_memory_bytes", "memory_analysis",
    "first_step_s", "compile_s", "trace_lower_s", "compiles_first_step",
    "compiles_after_first_step", "recompiled", "jax_version", "host_cores",
    "load_average", "environment", "time_by_op_kind")

# Environment variables that change a CPU step's time (BENCHMARKS.md).
TIMING_ENVIRONMENT = ("XLA_FLAGS", "GLIBC_TUNABLES")

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_TO_MLIR = "/jax/core/compile/jaxpr_to_mlir_module_duration"


class CompileCounter:
  """This thread's traces, lowerings and compiles (cached too) in `watch()`."""

  _installed = False
  _active: list["CompileCounter"] = []

  def __init__(self):
    self.events: list[tuple[str, float, str | None]] = []
    self._thread = None

  @classmethod
  def _install(cls) -> None:
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

  def _select(self, event: str) -> list[tuple[str, float, str | None]]:
    return [e for e in self.events if e[0] == event]

  @property
  def backend_compiles(self) -> int:
    return len(self._select(_BACKEND_COMPILE))

  @property
  def traces(self) -> int:
    return len(self._select(_TRACE))

  @property
  def compile_seconds(self) -> float:
    return sum(e[1] for e in self._select(_BACKEND_COMPILE))

  @property
  def trace_lower_seconds(self) -> float:
    return sum(e[1] for e in self.events if e[0] in (_TRACE, _TO_MLIR))

  def compiled_functions(self) -> list[str]:
    return [str(e[2]) for e in self._select(_BACKEND_COMPILE)]


def _first(analysis):
  """Older JAX returns a list with one analysis per program."""
  return analysis[0] if isinstance(analysis, (list, tuple)) and analysis else (
      analysis or None)


def cost_flops(compiled) -> float | None:
  """FLOPs of a compiled (for pmap: per-device) program; None if unknown."""
  analysis = _first(compiled.cost_analysis())
  flops = float(analysis.get("flops", 0)) if analysis else 0
  return flops if flops > 0 else None


def memory_analysis(compiled) -> dict[str, int] | None:
  """XLA's per-device buffer sizes of a compiled program (bytes)."""
  stats = _first(compiled.memory_analysis())
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
  stats = [d.memory_stats() or {} for d in devices]
  return [int(s[key]) for s in stats if key in s]


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
  """Best TFLOP/s of all devices at once, each one `size`^2 matmul."""
  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices)
  sharding = replication.local_sharding(devices)
  a = jax.device_put(np.random.default_rng(0).standard_normal(
      (n, size, size), np.float32).astype(dtype), sharding)
  matmul = jax.pmap(jnp.matmul, devices=devices)
  jax.block_until_ready(matmul(a, a))
  best = float("inf")
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - start)
  return n * 2.0 * size ** 3 / best / 1e12


def synthetic_batches(config: ml_collections.ConfigDict, count: int = 2,
                      devices: Sequence[jax.Device] | None = None,
                      seed: int = 0) -> list[dict[str, jax.Array]]:
  """Random batches on the devices: 'image' [D, b, R, R, C] in [-1, 1],
  'index' int32 [D, b] (positions in the global batch)."""
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


def _batch_iterator(config, input_source: str):
  if input_source == "synthetic":
    return itertools.cycle(synthetic_batches(config))
  if input_source == "pipeline":
    return data_lib.prefetch_to_device(data_lib.TrainIterator(config),
                                       size=config.data.prefetch)
  raise ValueError(f"input={input_source!r}: use 'synthetic' (batches "
                   "already on the devices) or 'pipeline' (the config's "
                   "input pipeline, prefetched to the devices)")


def measure(config: ml_collections.ConfigDict, *, steps: int = 10,
            warmup: int = 2, peak_tflops: float | None = None,
            input_source: str = "synthetic", matmul_size: int = 2048,
            config_name: str = "", profile_steps: int = 0) -> dict[str, Any]:
  """Times the train step as `trainer.Trainer` builds it.

  Step i takes from step i-1's completion to step i's (steady state, after
  the first call and `warmup` steps). Also: the first call (trace, lower,
  compile, run), later compiles, XLA's per-device FLOPs and memory.

  Args:
    peak_tflops: ONE device's peak TFLOP/s for the MFU. None: on CPU the
      host's measured matmul rate (best of float32 and the compute dtypes);
      elsewhere no MFU.
    input_source: 'synthetic' (batches already on the devices) or
      'pipeline' (the config's input pipeline, prefetched).
    profile_steps: > 0: `time_by_op_kind` from a `jax.profiler` trace of
      that many more steps (`mixvae.op_profile`); else None.

  Returns:
    A JSON-serializable dict with at least `RESULT_FIELDS`.
  """
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1")
  trainer = trainer_lib.Trainer(config)
  devices = jax.local_devices()
  n = len(devices)
  state = trainer.replicate(trainer.init_state())
  p_step = trainer.p_train_step
  batches = _batch_iterator(config, input_source)

  first = CompileCounter()
  batch = jax.block_until_ready(next(batches))
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
    # Dispatch step i+1 before waiting for step i's (undonated) metrics, so
    # the device never waits for the host.
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

  compiled = p_step.lower(state, next(batches)).compile()
  flops_device, mem = cost_flops(compiled), memory_analysis(compiled)
  by_kind = None
  if profile_steps > 0:
    def one_step():
      nonlocal state
      state, step_metrics = p_step(state, next(batches))
      return state, step_metrics
    by_kind = op_profile.time_by_kind(compiled, one_step, profile_steps)

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
      "num_devices": n * jax.process_count(),
      "process_count": jax.process_count(),
      "global_batch": global_batch,
      "per_device_batch": global_batch // (n * jax.process_count()),
      "resolution": int(config.model.resolution),
      "dtype": "/".join(sorted({config.model.dtype,
                                config.discriminator.dtype})),
      "remat": config.model.remat,
      "input": input_source,
      "steps": int(steps),
      "warmup": int(warmup),
      "step_ms_median": median * 1e3,
      "step_ms_p25": np.percentile(step_s, 25) * 1e3,
      "step_ms_p75": np.percentile(step_s, 75) * 1e3,
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
      "jax_version": jax.__version__,
      "host_cores": throughput.host_cores(),
      "load_average": round(os.getloadavg()[0], 2),
      "environment": {k: os.environ.get(k, "") for k in TIMING_ENVIRONMENT},
      "time_by_op_kind": by_kind,
  }
  return result


def _is_out_of_memory(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory",
                                 "resource exhausted", "oom", "memoryerror",
                                 "failed to allocate"))


def find_max_batch(config: ml_collections.ConfigDict, *, cap: int,
                   start: int | None = None, steps: int = 2,
                   memory_budget_bytes: int | None = None
                   ) -> dict[str, Any]:
  """The largest per-device batch, doubling from `start`, whose step runs.

  A batch fails when it runs out of memory (`steps=0`: compiling only) or
  XLA's estimate exceeds `memory_budget_bytes` (default: `bytes_limit`; on
  CPU none, so `cap` ends the search). max_per_device_batch is None if none
  fits; stopped_by is 'out_of_memory', 'memory_budget' or 'cap'.
  """
  devices = jax.local_devices()
  budget = memory_budget_bytes or device_memory_limit(devices)
  b = start or max(1, config.batch_size // jax.device_count())
  candidates, best, stopped_by = [], None, "cap"
  while b <= cap:
    cfg = copy.deepcopy(config)
    cfg.batch_size = b * jax.device_count()
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
          "candidates": candidates}


def compile_only_analysis(config) -> dict[str, Any]:
  """XLA's memory and cost analyses of the step; allocates nothing."""
  trainer = trainer_lib.Trainer(config)
  abstract = trainer.abstract_state()
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
  start = time.perf_counter()
  compiled = trainer.p_train_step.lower(state, batch).compile()
  return {"memory_analysis": memory_analysis(compiled),
          "flops_per_device_step": cost_flops(compiled),
          "compile_s": time.perf_counter() - start}
