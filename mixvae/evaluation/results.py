"""Saved evaluation results: WORKDIR/eval/<step>[_raw].json, their
TensorBoard scalars, reading them back, and the best evaluated step."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from absl import logging
from clu import metric_writers
from etils import epath
import jax
import ml_collections
import numpy as np

from mixvae import checkpointing
from mixvae import errors
from mixvae import nested

EVAL_DIR = "eval"

# Metrics `config.eval.best_metric` may name: (flat key, better when larger).
BEST_METRICS = {"l1": ("reconstruction/l1", False),
                "psnr": ("reconstruction/psnr", True),
                "ssim": ("reconstruction/ssim", True),
                "lpips": ("reconstruction/lpips", False),
                "fid_recon": ("fid/reconstruction", False),
                "fid_prior": ("fid/prior_t1", False),
                "kid_recon": ("kid/reconstruction", False),
                "kid_prior": ("kid/prior_t1", False)}


def flat_scalars(result: dict[str, Any], prefix: str = "eval"
                 ) -> dict[str, float]:
  """{'<prefix>/a/b': value} of the finite, float32-sized result metrics."""
  settings = {f"{prefix}/{k}" for k in ("step", "beta", "beta_adversarial",
                                        "temperatures")}
  flat = nested.flatten(result, f"{prefix}/", keep=lambda k: not (
      k in settings or k.endswith("per_dim")))
  return {k: float(v) for k, v in flat.items()
          if isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, (bool, np.bool_))
          and math.isfinite(float(v)) and abs(float(v)) < 3e38}


def results_path(workdir: str, step: int, params: str = "ema") -> epath.Path:
  suffix = "" if params == "ema" else f"_{params}"
  return epath.Path(workdir) / EVAL_DIR / f"{step}{suffix}.json"


def write_results(result: dict[str, Any], writer=None) -> epath.Path:
  """Process 0 writes WORKDIR/eval/<step>[_raw].json, and the scalars to
  `writer` under 'eval/' (default: TensorBoard events in WORKDIR/eval, under
  'eval_<params>/')."""
  workdir, step, params = result["workdir"], result["step"], result["params"]
  path = results_path(workdir, step, params)
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nested.jsonable(result), indent=2,
                               sort_keys=True))
    own = writer is None
    if own:
      writer = metric_writers.create_default_writer(
          os.fspath(path.parent), just_logging=False)
    writer.write_scalars(step, flat_scalars(
        result, prefix=f"eval_{params}" if own else "eval"))
    writer.flush()
    if own:
      writer.close()
    logging.info("Wrote %s", path)
  return path


def read_results(workdir: str, step: int | None = None,
                 params: str = "ema") -> dict[str, Any]:
  """`step`'s saved results, or the latest (FileNotFoundError if none)."""
  if step is not None:
    path = results_path(workdir, step, params)
    if not path.exists():
      raise errors.MissingError(f"{path} not found: run launch/evaluate.py "
                              f"--workdir={workdir} --step={step}")
    return json.loads(path.read_text())
  directory = epath.Path(workdir) / EVAL_DIR
  suffix = ".json" if params == "ema" else f"_{params}.json"
  steps = []
  if directory.exists():
    for p in directory.iterdir():
      stem = p.name[:-len(suffix)] if p.name.endswith(suffix) else ""
      if stem.isdigit():
        steps.append(int(stem))
  if not steps:
    raise errors.MissingError(f"no evaluation results in {directory}: run "
                            f"launch/evaluate.py --workdir={workdir}")
  return read_results(workdir, max(steps), params)


def best_step(workdir: str, config: ml_collections.ConfigDict) -> int:
  """The checkpointed step whose evaluation (`WORKDIR/eval/<step>.json`) is
  best by `config.eval.best_metric`: the one training keeps."""
  name = config.eval.best_metric
  if not name:
    raise errors.ConfigError(
        f"step 'best' needs the run's config.eval.best_metric, which is '' "
        f"in {workdir}: give a step number")
  key, larger = BEST_METRICS[name]
  values = {}
  steps = [int(p.name) for p in checkpointing.checkpoint_dir(workdir).iterdir()
           if p.name.isdigit()]
  for step in sorted(steps):
    path = results_path(workdir, step)
    value = flat_scalars(json.loads(path.read_text())).get(
        f"eval/{key}") if path.exists() else None
    if value is not None:
      values[step] = value
  if not values:
    raise errors.MissingError(f"no checkpoint in {workdir} has an evaluation "
                              f"with {name}")
  return (max if larger else min)(sorted(values), key=values.get)
