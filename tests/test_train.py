"""The training loop end to end: launch/main.py runs, resume, preemption,
the non-finite guard, config errors, and device-layout invariance.

The slow tests start `launch/main.py` in subprocesses on 2 simulated CPU
devices with the tiny `test` config. To keep the file within a few minutes on
a 2-core machine:
  * the runs of the reference configuration (end to end, resume, SIGTERM)
    share a persistent compilation cache (see tests/train_helpers.py), so
    only the first pays the full compile;
  * the runs that need a compile of their own and nothing else (the NaN run,
    the 2-process run) start in the background before the first test.
"""

import functools
import os
import re
import signal
import time

import jax
import numpy as np
from PIL import Image
import pytest

import image_fixtures
import train_helpers as th
from mixvae import checkpointing
from mixvae import data as data_lib
from mixvae import replication
from mixvae import train
from mixvae import train_state as train_state_lib
from mixvae import train_step as train_step_lib

CELEBAHQ = th.load_config_module(th.CELEBAHQ, "celebahq_config_for_train")
DEMO = th.load_config_module(th.DEMO, "demo_config_for_train")

NUM_TRAIN = 20  # Of the image fixture's 26 good photos.
STEPS = 40      # The reference run: 40 steps, checkpoints every 10, keep 3.
REFERENCE_FLAGS = (f"--config.num_train_steps={STEPS}",
                   "--config.checkpoint_every_steps=10",
                   "--config.keep_checkpoints=3",
                   "--config.log_every_steps=5",
                   "--config.training.image_every_steps=20")


# ---------------------------------------------------------------- fixtures --


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def data_flags(image_dir):
  """The real-image fixture as the data source."""
  return ("--config.data.source=folder", f"--config.data.image_dir={image_dir}",
          f"--config.data.num_train={NUM_TRAIN}")


@pytest.fixture(scope="module")
def test_config():
  return CELEBAHQ.get_config("test")


@pytest.fixture(scope="module")
def abstract(test_config):
  return th.abstract_state(test_config)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_flags, cache_dir):
  """An uninterrupted 40-step run on the real-image fixture (2 devices),
  given a relative --workdir as in the README's demo command."""
  workdir = tmp_path_factory.mktemp("reference")
  result = th.run(workdir.name, (*data_flags, *REFERENCE_FLAGS),
                  cache_dir=cache_dir, cwd=workdir.parent)
  assert result.returncode == 0, result.stderr[-6000:]
  return workdir, result


NAN_FLAGS = ("--config.loss.inject_nan_at_step=7",
             "--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
             "--config.num_train_steps=20")


@pytest.fixture(scope="module", autouse=True)
def early_runs(request, tmp_path_factory):
  """Starts the launches that depend on nothing else before the first test.

  Their compiles then overlap the other tests' runs instead of adding to
  them: {'nan': Background, 'multihost': [Background] * 2}, for the tests
  selected. Whatever is still running at the end is killed. They do not use
  the shared compilation cache, whose writes are not atomic; the runs that
  do use it run one at a time.
  """
  selected = {item.name for item in request.session.items}
  runs = {}
  if test_nan_stops_the_run_and_keeps_the_last_good_checkpoint.__name__ in (
      selected):
    workdir = tmp_path_factory.mktemp("nan") / "workdir"
    runs["nan"] = th.Background(workdir, NAN_FLAGS)
    runs["nan"].workdir = workdir
  if test_trajectory_does_not_depend_on_the_device_layout.__name__ in (
      selected):
    runs["multihost"] = _start_multihost(tmp_path_factory.mktemp("multihost"))
  yield runs
  for run in runs.values():
    for r in (run if isinstance(run, list) else [run]):
      r.kill()


def _started_at(output: str) -> int:
  steps = re.findall(r"Starting at step (\d+) of", output)
  assert steps, output[-4000:]
  return int(steps[-1])


# ----------------------------------------------------------------- configs --


@pytest.mark.parametrize("module,arg", [
    (CELEBAHQ, None), (CELEBAHQ, "reference"), (CELEBAHQ, "vae"),
    (CELEBAHQ, "beta_vae,beta=0.5"), (CELEBAHQ, "test"), (DEMO, None),
    (DEMO, "vae")], ids=["celebahq", "celebahq:reference", "celebahq:vae",
                         "celebahq:beta_vae", "celebahq:test", "demo",
                         "demo:vae"])
def test_configs_load_and_build(module, arg):
  config = module.get_config(arg)
  assert config.batch_size > 0
  config.batch_size = jax.device_count()  # The rest must be valid as is.
  train.validate_config(config)
  state = th.abstract_state(config)  # Shapes only: traces, allocates nothing.
  assert state.step.shape == ()
  assert jax.tree.leaves(state.vae_params)
  assert jax.tree.leaves(state.disc_params)
  if arg and arg.startswith("beta_vae"):
    assert config.loss.family == "standard" and config.loss.beta == 0.5
  if arg == "vae":
    assert config.loss.family == "standard" and config.loss.beta == 1.0
    assert config.loss.beta_adversarial == 0
  with pytest.raises(AttributeError):  # Locked: a typo cannot add a field.
    config.num_train_stepz = 5


def test_unknown_config_variant():
  with pytest.raises(ValueError, match=r"unknown config variant 'bogus'"):
    CELEBAHQ.get_config("bogus")
  with pytest.raises(ValueError, match=r"unknown config argument 'gamma'"):
    CELEBAHQ.get_config("beta_vae,gamma=2")
  with pytest.raises(ValueError, match=r"bogus"):
    DEMO.get_config("bogus")


@pytest.mark.slow
def test_config_typo_fails_fast(tmp_path):
  start = time.monotonic()
  result = th.run(tmp_path / "typo", ["--config.num_train_stepz=5"])
  assert result.returncode != 0
  assert "num_train_stepz" in result.stderr
  assert time.monotonic() - start < 30  # Before JAX is even imported.
  assert not (tmp_path / "typo").exists()


@pytest.mark.slow
def test_batch_size_must_divide_by_devices(tmp_path):
  result = th.run(tmp_path / "odd", ["--config.batch_size=7"], devices=2)
  assert result.returncode != 0
  assert "config.batch_size=7" in result.stderr
  assert "multiple of the number of devices (2)" in result.stderr


# -------------------------------------------------------------- end to end --


@pytest.mark.slow
def test_end_to_end_on_real_images(reference_run):
  workdir, result = reference_run
  # Checkpoints every 10 steps, the last 3 kept.
  assert th.checkpoint_steps(workdir) == [20, 30, 40]
  # TensorBoard events: every loss term, logged every 5 steps, finite, and
  # the loss falls.
  scalars = th.read_scalars(workdir)
  for tag in ("loss/generator", "loss/l1", "loss/kl_global",
              "loss/kl_individual", "loss/generator_adversarial",
              "loss/discriminator", "grad_norm/vae", "grad_norm/disc"):
    assert sorted(scalars[tag]) == list(range(5, STEPS + 1, 5)), tag
    assert np.all(np.isfinite(list(scalars[tag].values()))), tag
  for tag, factor in (("loss/generator", 0.9), ("loss/l1", 0.95)):
    first, last = scalars[tag][5], scalars[tag][STEPS]
    assert last < factor * first, (tag, scalars[tag])
  # Image grids as PNG files.
  images = sorted(os.listdir(workdir / "images"))
  assert images == sorted(f"{name}_{step:08d}.png"
                          for name in ("inputs", "reconstructions",
                                       "prior_samples") for step in (20, 40))
  for name in images:
    with Image.open(workdir / "images" / name) as image:
      assert image.format == "PNG" and image.mode == "RGB"
      assert min(image.size) > image_fixtures.RESOLUTION
  assert "No checkpoint in" in result.stderr
  assert _started_at(result.stderr) == 0


# ------------------------------------------------------------------ resume --


@pytest.mark.slow
def test_exact_resume_after_kill(reference_run, data_flags, cache_dir,
                                 abstract, tmp_path):
  reference_dir = reference_run[0]
  workdir = tmp_path / "killed"
  flags = (*data_flags, *REFERENCE_FLAGS)

  # 1. The run kills itself (SIGKILL) after step 15: checkpoint 10 survives.
  result = th.run(workdir, (*flags, "--config.training.debug_kill_after_step"
                            "=15"), cache_dir=cache_dir)
  assert result.returncode == -signal.SIGKILL, result.stderr[-4000:]
  assert th.checkpoint_steps(workdir) == [10]

  # 2. Restarted, it is killed from outside (kill -9) once checkpoint 20 is
  # written, at whatever point it has reached then.
  run = th.Background(workdir, flags, cache_dir=cache_dir)
  try:
    th.wait_for(lambda: 20 in th.checkpoint_steps(workdir), timeout=240,
                proc=run.proc, what="checkpoint 20", output=run.output)
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
  finally:
    run.kill()
  assert _started_at(run.output()) == 10
  assert 20 in th.checkpoint_steps(workdir)

  # 3. Restarted again, it finishes: bit-identical to the uninterrupted run.
  result = th.run(workdir, flags, cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-6000:]
  assert _started_at(result.stderr) in (20, 30)
  assert th.checkpoint_steps(workdir)[-1] == STEPS
  state, data_state = th.restore(workdir, abstract, STEPS)
  expected_state, expected_data = th.restore(reference_dir, abstract, STEPS)
  assert int(state.step) == STEPS
  assert data_state == expected_data
  th.assert_trees_equal(state, expected_state, "resumed state at step 40")


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resumes_exactly(
    reference_run, data_flags, cache_dir, abstract, tmp_path):
  reference_dir = reference_run[0]
  workdir = tmp_path / "preempted"
  flags = [*data_flags, *REFERENCE_FLAGS]
  long_flags = [*flags, "--config.num_train_steps=100000"]
  run = th.Background(workdir, long_flags, cache_dir=cache_dir)
  try:
    # Under way: checkpoint 10 written (step 11 or later is running).
    th.wait_for(lambda: 10 in th.checkpoint_steps(workdir), timeout=240,
                proc=run.proc, what="checkpoint 10", output=run.output)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 0, run.output()[-6000:]
  finally:
    run.kill()
  steps = th.checkpoint_steps(workdir)
  saved = steps[-1]
  assert 10 < saved < STEPS, steps  # The step it had reached, not 10 or 20.
  assert f"Saved a checkpoint at step {saved} after SIGTERM" in run.output()
  state, data_state = th.restore(workdir, abstract)
  assert int(state.step) == saved and data_state["step"] == saved

  # The same command (with the reference run's length) resumes from there and
  # ends where the uninterrupted run ended.
  result = th.run(workdir, flags, cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-6000:]
  assert _started_at(result.stderr) == saved
  state, _ = th.restore(workdir, abstract, STEPS)
  expected, _ = th.restore(reference_dir, abstract, STEPS)
  th.assert_trees_equal(state, expected, "state at step 40 after SIGTERM")


# -------------------------------------------------------------- non-finite --


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    early_runs, abstract):
  # Started by `early_runs` with NAN_FLAGS: checkpoints and logs every 5
  # steps, 20 steps, L1 made NaN at step 7.
  run = early_runs["nan"]
  workdir = run.workdir
  returncode = run.wait()
  output = run.output()
  assert returncode > 0, output[-6000:]  # An error exit, not a signal.
  assert "FloatingPointError" in output
  message = re.search(r"non-finite loss at step (\d+) in term\(s\) ([\w, ]+)",
                      output)
  assert message, output[-6000:]
  assert int(message.group(1)) == 7
  assert "l1" in message.group(2).split(", ")
  # The checkpoint of step 5 is intact; nothing from step 7 on was saved.
  assert th.checkpoint_steps(workdir) == [5]
  state, data_state = th.restore(workdir, abstract, 5)
  assert int(state.step) == 5 and data_state["step"] == 5
  assert int(state.nonfinite_step) == -1
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(leaf))


# ------------------------------------------------------- layout invariance --

LAYOUT_STEPS = 2
# Step 1 starts from the same state on the same global batch, so the loss
# terms (forward values) differ only in the order of the floating-point
# reductions (measured: <= 4e-6 relative).
LOSS_RTOL = 1e-5
# The gradient is less stable: a few ReLU inputs lie within float32 round-off
# of 0 and change side with the summation order, and such a flip moves the
# VAE gradient by up to ~1% (its norm by ~0.3%). The same happens on one
# device when the examples of the batch are merely permuted. A gradient
# summed or averaged the wrong way over the devices is off by a factor.
GRAD_NORM_RTOL = 2e-2
# Parameters after LAYOUT_STEPS steps: ||p_layout - p_1device|| /
# ||p_1device - p_init|| per network. Not near 0 even without any bug: Adam
# divides each gradient component by its own magnitude, so components whose
# gradient is round-off (e.g. biases right before a BatchNorm, 0 in exact
# arithmetic) or flips sign with the ReLU flips above move by +-lr in a
# direction set by round-off. Measured after 2 steps: 0.35 (VAE) and 0.18
# (discriminator) for 8 devices, and the same for one device fed a permuted
# batch (mathematically the same step). Layout bugs measured: per-example
# noise keyed by the position on the device 1.3 / 1.3, BatchNorm statistics
# not synchronized 1.3 / 0.97.
PARAMS_MAX_DISTANCE = 0.6


def _layout_flags(num_steps=LAYOUT_STEPS):
  return [f"--config.num_train_steps={num_steps}",
          f"--config.checkpoint_every_steps={num_steps}",
          "--config.log_every_steps=1", "--config.training.image_every_steps=0"]


def _start_multihost(path):
  """launch/main.py as 2 processes x 2 devices (gloo collectives on CPU)."""
  port = th.free_port()
  workdir = path / "workdir"
  runs = [th.Background(workdir, [*_layout_flags(), "--multihost",
                                  f"--coordinator_address=127.0.0.1:{port}",
                                  "--num_processes=2", f"--process_id={i}"],
                        devices=2, log_path=path / f"process_{i}.log")
          for i in range(2)]
  for run in runs:
    run.workdir = workdir
  return runs


def _train_in_process(config, initial_state, num_devices, num_steps):
  """`num_steps` of the pmapped step on the first `num_devices` devices."""
  devices = jax.devices()[:num_devices]
  vae, disc, vae_tx, disc_tx = train.build(config)
  step = jax.pmap(
      functools.partial(train_step_lib.train_step, config=config, vae=vae,
                        discriminator=disc, vae_tx=vae_tx, disc_tx=disc_tx,
                        axis_name=train.AXIS),
      axis_name=train.AXIS, devices=devices)
  batches = data_lib.train_iterator(config, process_index=0, process_count=1,
                                    local_device_count=num_devices)
  # Named after the pmap axis, like the state the step returns (one compile).
  state = replication.replicate(initial_state, devices, axis_name=train.AXIS)
  metrics = []
  for _ in range(num_steps):
    state, m = step(state, next(batches))
    metrics.append({k: float(v[0]) for k, v in jax.device_get(m).items()})
  batches.close()
  return replication.unreplicate(state), metrics


def _assert_metrics_close(metrics, expected, what):
  keys = [k for k in expected if k.startswith(("loss/", "grad_norm/"))]
  assert len(keys) >= 8, keys
  for k in keys:
    rtol = LOSS_RTOL if k.startswith("loss/") else GRAD_NORM_RTOL
    np.testing.assert_allclose(metrics[k], expected[k], rtol=rtol,
                               err_msg=f"{what}: {k}")


def _assert_params_close(state, expected, initial, what):
  for field in ("vae_params", "disc_params"):
    distance = th.relative_distance(getattr(state, field),
                                    getattr(expected, field),
                                    getattr(initial, field))
    assert distance < PARAMS_MAX_DISTANCE, (
        f"{what}: {field} off by {distance:.3g} of the distance travelled")


@pytest.mark.slow
def test_trajectory_does_not_depend_on_the_device_layout(early_runs, abstract):
  config = CELEBAHQ.get_config("test")
  vae, disc, vae_tx, disc_tx = train.build(config)
  initial = train_state_lib.create_train_state(
      config, vae=vae, discriminator=disc, vae_tx=vae_tx, disc_tx=disc_tx)
  one, metrics_one = _train_in_process(config, initial, 1, LAYOUT_STEPS)
  eight, metrics_eight = _train_in_process(config, initial, 8, LAYOUT_STEPS)
  # 2 processes x 2 devices, started by `early_runs`.
  runs = early_runs["multihost"]
  for i, run in enumerate(runs):
    assert run.wait(timeout=400) == 0, (
        f"process {i}:\n" + run.output()[-6000:])
  workdir = runs[0].workdir

  # (a) Step 1: every loss term and gradient norm.
  _assert_metrics_close(metrics_eight[0], metrics_one[0], "8 devices")
  hosts = th.read_scalars(workdir)
  _assert_metrics_close({k: v[1] for k, v in hosts.items() if 1 in v},
                        metrics_one[0], "2 processes x 2 devices")
  # (b) After LAYOUT_STEPS steps: the parameters of both networks.
  assert int(eight.step) == int(one.step) == LAYOUT_STEPS
  _assert_params_close(eight, one, initial, "8 devices")
  hosts_state, _ = th.restore(workdir, abstract, LAYOUT_STEPS)
  assert int(hosts_state.step) == LAYOUT_STEPS
  _assert_params_close(hosts_state, one, initial, "2 processes x 2 devices")


def test_checkpoint_dir_is_absolute_for_local_workdirs(tmp_path, monkeypatch):
  # Orbax's tensorstore refuses relative local paths at the first save.
  monkeypatch.chdir(tmp_path)
  assert os.fspath(checkpointing.checkpoint_dir("runs/demo")) == os.fspath(
      tmp_path / "runs" / "demo" / "checkpoints")
  assert os.fspath(checkpointing.checkpoint_dir("gs://bucket/run")) == (
      "gs://bucket/run/checkpoints")
