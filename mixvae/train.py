"""The training loop: Algorithm 1 over the data, with checkpoints and logging.

`train_and_evaluate(config, workdir)` is what `launch/main.py` calls. It
resumes from the newest checkpoint in `WORKDIR/checkpoints` when there is
one, runs `config.num_train_steps` steps of the pmapped `train_step`, and
writes:
  * checkpoints every `checkpoint_every_steps`, at the end, and on SIGTERM
    (Orbax, the last `keep_checkpoints` kept);
  * TensorBoard scalars every `log_every_steps` (process 0; clu writers):
    every loss term, mixture statistics, discriminator logits, gradient
    norms, steps/s and ETA;
  * image grids (inputs, reconstructions, prior samples) every
    `image_every_steps`, as TensorBoard images and PNG files in
    `WORKDIR/images/`;
  * evaluations of the EMA weights on the test split every
    `eval_every_steps` and at the end (`mixvae.evaluation.Evaluator`, built
    and compiled once), to `WORKDIR/eval/<step>.json` and TensorBoard under
    `eval/`; each evaluated step is also checkpointed, with its
    `config.eval.best_metric` so that the best checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
import jax
import ml_collections
import numpy as np

from mixvae import checkpointing
from mixvae import data as data_lib
from mixvae import errors
from mixvae import image_grid
from mixvae import inference
from mixvae import models
from mixvae import nested
from mixvae import replication
from mixvae import train_step as train_step_lib
from mixvae import trainer as trainer_lib
from mixvae import workdir as workdir_lib
from mixvae.evaluation import evaluate as evaluate_lib
from mixvae.evaluation import results as results_lib


class _Preemption:
  """Notices SIGTERM (a TPU VM preemption) or a first Ctrl-C (SIGINT), so the
  loop can save and exit; a Ctrl-C after either kills the process at once.

  The kill is the kernel's default SIGINT action, not a KeyboardInterrupt: an
  exception raised by a handler can land in a garbage-collection callback or
  inside a library and be swallowed. Killed mid-step or mid-save, a run
  resumes from its newest complete checkpoint, as after kill -9.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    self.signal_name = ""

  def install(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint at the current step and "
                    "exiting (Ctrl-C now aborts at once, without saving).",
                    self.signal_name)
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def reached(self, step: int, manager) -> bool:
    if jax.process_count() > 1:
      # All hosts must agree on the step: Orbax's preemption sync point.
      return bool(manager.reached_preemption(step)) or self._event.is_set()
    return self._event.is_set()


def _write_images(writer, workdir: str, step: int, state_host, batch,
                  model: inference.Model, config) -> None:
  """Image grids of inputs, reconstructions (EMA, z = mu) and prior samples."""
  n = min(config.num_grid_images, batch.shape[0])
  x = np.asarray(batch[:n])
  # New variables of the same shapes: the model's programs do not recompile.
  model.variables = {"params": state_host.ema_params,
                     "batch_stats": state_host.vae_batch_stats}
  recon = model.reconstruct(x)
  samples = model.generate(jax.random.PRNGKey(step), n)
  upscale = max(1, 128 // x.shape[1])  # Small images are enlarged to view.
  grids = {name: image_grid.make_grid(np.asarray(images), upscale=upscale)
           for name, images in (("inputs", x), ("reconstructions", recon),
                                ("prior_samples", samples))}
  writer.write_images(step, {f"images/{k}": v[None] for k, v in grids.items()})
  out_dir = epath.Path(workdir) / "images"
  out_dir.mkdir(parents=True, exist_ok=True)
  for name, grid in grids.items():
    image_grid.save_png(grid, out_dir / f"{name}_{step:08d}.png")


def _summarize(metrics_list: list[dict[str, Any]]) -> dict[str, float]:
  """Averages the per-step metrics kept on device since the last log."""
  host = jax.device_get([jax.tree.map(lambda x: x[0], m)
                         for m in metrics_list])
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _make_evaluator(config, source) -> evaluate_lib.Evaluator:
  """Loads the metrics' weights now: a bad path fails before the first step."""
  evaluator = evaluate_lib.Evaluator(
      config, models.build_vae(config.model), source=source,
      inception_weights=config.eval.inception_weights or None,
      lpips_weights=config.eval.lpips_weights or None)
  for note in evaluator.notes.values():
    logging.info("Evaluation: %s", note)
  best = config.eval.best_metric
  key = results_lib.BEST_METRICS[best][0] if best else ""
  needs = ("lpips" if key.endswith("lpips") else
           "fid" if key.startswith(("fid/", "kid/")) else None)  # Inception.
  skipped = evaluator.notes.get(f"{needs}_skipped") if needs else None
  if skipped:
    raise errors.ConfigError(
        f"config.eval.best_metric={best!r} cannot be measured: {skipped}")
  return evaluator


def _headline(result: dict[str, Any]) -> str:
  flat = results_lib.flat_scalars(result)
  return ", ".join(
      f"{name} {flat[f'eval/{key}']:.4g}"
      for name, (key, _) in (*results_lib.BEST_METRICS.items(),
                             ("active units", ("latents/active_units", 0)))
      if f"eval/{key}" in flat and not name.startswith("kid"))


def _check_finite(state, step: int) -> None:
  bad_step = int(jax.device_get(state.nonfinite_step[0]))
  if bad_step >= 0:
    terms = int(jax.device_get(state.nonfinite_terms[0]))
    raise FloatingPointError(
        train_step_lib.nonfinite_message(bad_step, terms))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Any:
  """Trains (or resumes training) in `workdir`; returns the final host state.

  Raises:
    FloatingPointError: a loss term became non-finite (the message names the
      step and the term; the last checkpoint is left as it was).
    errors.UserError: a bad config field or workdir (the message says which).
  """
  trainer = trainer_lib.Trainer(config)
  n = jax.device_count()
  if config.batch_size % n:
    raise errors.ConfigError(
        f"config.batch_size={config.batch_size} must be a positive multiple "
        f"of the number of devices ({n}); e.g. --config.batch_size="
        f"{max(n, config.batch_size // n * n)}")
  workdir = os.fspath(workdir)
  if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
    raise errors.UserError(f"--workdir={workdir} is a file, not a folder: "
                           "name a new or existing folder")
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  preemption = _Preemption()
  with contextlib.ExitStack() as stack:
    if jax.process_index() == 0:
      stack.enter_context(workdir_lib.Lock(workdir))
    preemption.install()
    stack.callback(preemption.uninstall)
    return _train(trainer, workdir, preemption)


def _resume_command() -> str:
  return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def _train(trainer: trainer_lib.Trainer, workdir: str,
           preemption: _Preemption) -> Any:
  """`train_and_evaluate` in a locked workdir, with the signal handlers."""
  config = trainer.config
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_chief)
  if is_chief:
    writer.write_hparams({k: v if isinstance(v, (int, float, str, bool))
                          else str(v) for k, v in nested.flatten(
                              config, sep=".").items()})

  best = config.eval.best_metric
  manager = checkpointing.create_manager(
      workdir, max_to_keep=config.keep_checkpoints,
      best=(best, results_lib.BEST_METRICS[best][1]) if best else None)
  if manager.latest_step() is not None:
    workdir_lib.check_resume(workdir, config)  # Before anything is built.
  restored = checkpointing.restore(manager, trainer.abstract_state(),
                                  move_aside=True)
  if restored is None:
    logging.info("No checkpoint in %s: starting from scratch.", workdir)
    state_host, data_state = trainer.init_state(), None
  else:
    state_host, data_state = restored
  start_step = int(state_host.step)
  if is_chief:  # For launch/evaluate.py, launch/figures.py and the record.
    workdir_lib.record_config(workdir, config, start_step)
  logging.info("Starting at step %d of %d.", start_step,
               config.num_train_steps)
  if preemption.requested:
    logging.warning("%s during start-up: exiting before step %d (nothing new "
                    "to save). To resume: %s", preemption.signal_name,
                    start_step + 1, _resume_command())
    manager.close()
    writer.flush()
    return state_host

  train_iter = data_lib.TrainIterator(config, start_step=start_step,
                                      state=data_state)
  device_iter = data_lib.prefetch_to_device(train_iter,
                                            size=config.data.prefetch)
  evaluator = (_make_evaluator(config, train_iter.source)
               if config.eval_every_steps else None)
  state = trainer.replicate(state_host)
  del state_host

  grid_model = inference.Model(models.build_vae(config.model), {})
  hooks = []
  if is_chief:
    hooks.append(periodic_actions.ReportProgress(
        num_train_steps=config.num_train_steps, writer=writer))
    if config.profile_steps > 0:
      hooks.append(periodic_actions.Profile(
          num_profile_steps=config.profile_steps, logdir=workdir))

  def save(step, metrics=None):
    _check_finite(state, step)  # Never overwrite good data with NaNs.
    checkpointing.save(manager, step, replication.unreplicate(state),
                       device_iter.get_state(), metrics)

  def evaluate(step):
    nonlocal eval_seconds
    start = time.perf_counter()
    params, stats = replication.unreplicate(
        (state.ema_params, state.vae_batch_stats))
    result = evaluator({"params": params, "batch_stats": stats},
                       workdir=workdir, step=step)
    # Written before a restart (the checkpoint of `step` was not): once only.
    if not results_lib.results_path(workdir, step).exists():
      results_lib.write_results(result, writer)
    eval_seconds += time.perf_counter() - start
    logging.info("Evaluation at step %d (%.1f s): %s", step,
                 time.perf_counter() - start, _headline(result))
    return result

  metrics_since_log = []
  step, last_eval = start_step, None
  loop_start, eval_seconds = time.perf_counter(), 0.0
  try:
    while step < config.num_train_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = next(device_iter)
        state, metrics = trainer.p_train_step(state, batch)
      step += 1
      metrics_since_log.append(metrics)
      for hook in hooks:
        hook(step)
      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        _check_finite(state, step)
        writer.write_scalars(step, _summarize(metrics_since_log))
        metrics_since_log = []
        if last_eval:
          logging.info("Last evaluation, step %d: %s", last_eval["step"],
                       _headline(last_eval))
      if (config.image_every_steps
          and step % config.image_every_steps == 0 and is_chief):
        _write_images(writer, workdir, step, replication.unreplicate(state),
                      np.asarray(batch["image"].addressable_shards[0].data[0]),
                      grid_model, config)
      evaluated = evaluator is not None and (
          step % config.eval_every_steps == 0 or step == config.num_train_steps)
      if evaluated:
        last_eval = evaluate(step)
        value = results_lib.flat_scalars(last_eval).get(
            f"eval/{results_lib.BEST_METRICS[best][0]}") if best else None
        save(step, None if value is None else {best: value})
      elif step % config.checkpoint_every_steps == 0 or (
          step == config.num_train_steps):
        save(step)
      elif preemption.reached(step, manager):
        save(step)
        checkpointing.wait(manager)
        logging.warning("Saved a checkpoint at step %d after %s; exiting. To "
                        "resume: %s", step, preemption.signal_name,
                        _resume_command())
        break
  finally:
    checkpointing.wait(manager)
    writer.flush()
  if evaluator is not None:
    total = time.perf_counter() - loop_start
    logging.info("Evaluating took %.1f s of the loop's %.1f s (%.1f%%).",
                 eval_seconds, total, 100 * eval_seconds / max(total, 1e-9))
  final = replication.unreplicate(state)
  manager.close()
  return final
