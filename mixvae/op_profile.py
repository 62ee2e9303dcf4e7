"""Where a compiled step's time goes: seconds per step by kind of operation.

`time_by_kind(compiled, run, steps)` runs `run()` `steps` times under a
`jax.profiler` trace and sums each XLA operation's time by the kind of
operation read from the compiled HLO and its metadata (`KINDS`). XLA:CPU
runs 1x1 convolutions as matrix products, and kernel gradients as
convolutions whose window spans the activations; 'transpose(jvp(...))' in
an operation's name marks the backward pass, and the module path in the
name tells the VAE's convolution modules from the rest. Control flow
(while loops, calls, conditionals) is left out: its time is that of the
operations in its bodies, which are timed one by one.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable

import jax

FORWARD = "VAE convolutions: forward"
INPUT_GRADIENT = "VAE convolutions: input gradients"
KERNEL_GRADIENT = "VAE convolutions: kernel gradients (XLA convolution)"
KERNEL_GRADIENT_TRANSPOSES = (
    "VAE kernel gradients (XLA convolution): operand transposes")
PRODUCT_GRADIENT = ("VAE convolution gradients as matrix products "
                    "(tap_conv's kernel gradients, XLA's 1x1 convolutions)")
TRANSPOSED = ("VAE transposed convolutions: forward and gradients "
              "(convolutions and matrix products)")
CONV_OTHER = ("VAE convolution modules, other ops: pads, shifts, "
              "interleaving, bias")
ELEMENTWISE = ("normalization, activations, other elementwise network ops "
               "(XLA fuses the normalization into the activation)")
DISCRIMINATOR = "discriminator convolutions (all)"
DENSE = "dense layers (all)"
COPIES = "copies"
OTHER = "losses, optimizers (Adam), EMA, other"
KINDS = (FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT, KERNEL_GRADIENT_TRANSPOSES,
         PRODUCT_GRADIENT, TRANSPOSED, CONV_OTHER, ELEMENTWISE, DISCRIMINATOR,
         DENSE, COPIES, OTHER)
_CONV_MODULE = re.compile(r"/(\w*conv\w*)/")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(")
_COMPUTATION = re.compile(r"%?([\w.\-]+) .*\{\s*$")


def _spans_activations(conv_line: str) -> bool:
  window = re.search(r"window=\{size=([\dx]+)", conv_line)
  return bool(window) and max(int(v) for v in window.group(1).split("x")) > 3


def classify(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its kind (one of `KINDS`) for an HLO module text."""
  instructions, computations, current = {}, {}, None
  for line in hlo_text.splitlines():
    if not line.startswith(" "):
      match = _COMPUTATION.match(line)
      current = match.group(1) if match else None
      computations[current] = []
      continue
    computations[current].append(line)
    match = _INSTRUCTION.match(line)
    if match:
      instructions[match.group(1)] = (match.group(2), line)

  def kind(op: str, line: str) -> str:
    body = line
    if op == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", line)
      body = "\n".join(computations.get(called and called.group(1), []))
      op = ("convolution" if "convolution(" in body else
            "dot" if " dot(" in body else op)
    meta = re.search(r'op_name="([^"]*)"', line)
    meta = meta.group(1) if meta else ""
    backward, disc = "transpose(" in meta, "PatchGAN" in meta
    conv_module = bool(_CONV_MODULE.search(meta)) and not disc
    if op in ("convolution", "dot") and disc:
      return DISCRIMINATOR
    if op in ("convolution", "dot") and "_trans/" in meta:
      return TRANSPOSED
    if op == "convolution":
      conv = next(l for l in body.splitlines() if "convolution(" in l)
      if _spans_activations(conv):
        return KERNEL_GRADIENT
      return INPUT_GRADIENT if backward else FORWARD
    if op == "dot" and conv_module:
      return PRODUCT_GRADIENT if backward else FORWARD
    if op == "dot":
      return DENSE
    if (op == "fusion" and " transpose(" in body and not conv_module
        and "transpose(jvp" not in meta):
      return KERNEL_GRADIENT_TRANSPOSES
    if op == "copy":
      return COPIES
    if conv_module:
      return CONV_OTHER
    if any(s in meta for s in ("VAE", "encoder", "decoder")) or disc:
      return ELEMENTWISE
    return OTHER

  return {name: kind(op, line) for name, (op, line) in instructions.items()
          if op not in ("while", "call", "conditional")}


def time_by_kind(compiled: Any, run: Callable[[], Any],
                 steps: int) -> dict[str, float]:
  """Seconds per step of `compiled` (what `run()` executes) by kind.

  Returns:
    {kind: seconds per step, summed over the local devices} for the kinds
    that took any time, and 'sum of operations'.
  """
  kinds = classify(compiled.as_text())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(run())
    path, = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                      recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  seconds = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in kinds:
      seconds[kinds[event["name"]]] += event["dur"] / 1e6 / steps
  result = {k: seconds[k] for k in KINDS if seconds[k] > 0}
  result["sum of operations"] = sum(seconds.values())
  return result
