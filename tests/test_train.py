"""The training loop end to end: launch/main.py runs, resume, preemption,
the non-finite guard, and device-layout invariance. (What is checked
before training starts, config errors included: tests/test_train_setup.py.)

The slow tests start `launch/main.py` in subprocesses on 2 simulated CPU
devices with the tiny `test` config. The runs of the reference configuration
(end to end, resume, SIGTERM) share a persistent compilation cache (see
tests/train_helpers.py), so only the first pays the full compile. This file
runs on one xdist worker (`--dist loadfile`), first, and its tests share the
two training slots with the other files' training tests
(`training_processes(n)` in tests/conftest.py): a 2-core machine never runs
more than two training processes at once.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import celebahq as CELEBAHQ
import image_fixtures
import train_helpers as th
from mixvae import checkpointing
from mixvae import data as data_lib
from mixvae import replication
from mixvae import trainer as trainer_lib
from mixvae.evaluation import evaluate
from mixvae.evaluation import results

# Tests that start one training process at a time, or two (conftest.py).
SUBPROCESSES = pytest.mark.training_processes
TWO_PROCESSES = pytest.mark.training_processes(2)

NUM_TRAIN = 20  # Of the image fixture's 26 good photos.
STEPS = 40      # The reference run: 40 steps, checkpoints every 10, keep 3.
REFERENCE_FLAGS = (f"--config.num_train_steps={STEPS}",
                   "--config.checkpoint_every_steps=10",
                   "--config.keep_checkpoints=3",
                   "--config.log_every_steps=5",
                   "--config.image_every_steps=20",
                   "--config.eval_every_steps=20")


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
  return trainer_lib.Trainer(test_config).abstract_state()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_flags, cache_dir):
  """An uninterrupted 40-step run on the real-image fixture (2 devices),
  given a relative --workdir as in the README's demo command."""
  workdir = tmp_path_factory.mktemp("reference")
  with th.training_slot(tmp_path_factory, 1):
    result = th.run(workdir.name, (*data_flags, *REFERENCE_FLAGS),
                    cache_dir=cache_dir, cwd=workdir.parent)
  assert result.returncode == 0, result.stderr[-6000:]
  return workdir, result


NAN_FLAGS = ("--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
             "--config.num_train_steps=20")


def _started_at(output: str) -> int:
  steps = re.findall(r"Starting at step (\d+) of", output)
  assert steps, output[-4000:]
  return int(steps[-1])


# -------------------------------------------------------------- end to end --


@pytest.mark.slow
@SUBPROCESSES
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
  # Evaluations at 20 and 40, each as launch/evaluate.py gives it for that
  # step's checkpoint on as many devices (2).
  assert sorted(os.listdir(workdir / "eval")) == ["20.json", "40.json"]
  for step in (20, 40):
    saved = json.loads((workdir / "eval" / f"{step}.json").read_text())
    offline = evaluate.evaluate(evaluate.load_run(
        os.fspath(workdir), step=step), devices=jax.local_devices()[:2])
    assert saved.keys() == offline.keys()
    assert saved["num_examples"] == 6 and saved["step"] == step
    expected = results.flat_scalars(offline)
    assert results.flat_scalars(saved) == pytest.approx(expected, rel=1e-6)
    assert scalars["eval/reconstruction/l1"][step] == pytest.approx(
        expected["eval/reconstruction/l1"], rel=1e-6)
  assert re.search(r"Last evaluation, step 20: l1 [\d.]+, psnr [\d.]+, ",
                   result.stderr)


# ------------------------------------------------------------------ resume --


@pytest.mark.slow
@SUBPROCESSES
def test_exact_resume_after_kill(reference_run, data_flags, cache_dir,
                                 abstract, tmp_path):
  reference_dir = reference_run[0]
  workdir = tmp_path / "killed"
  flags = (*data_flags, *REFERENCE_FLAGS)

  # 1. The run is killed (SIGKILL) as it is about to save step 20, with
  # steps 11-20 done: checkpoint 10 survives.
  result = th.run(workdir, flags, cache_dir=cache_dir,
                  hooks={"kill_at_save": 20})
  assert result.returncode == -signal.SIGKILL, result.stderr[-4000:]
  assert th.checkpoint_steps(workdir) == [10]

  # 2. Restarted, it is killed from outside (kill -9) once checkpoint 20 is
  # written, at whatever point it has reached then.
  run = th.Background(workdir, flags, cache_dir=cache_dir)
  try:
    th.wait_for(lambda: 20 in th.checkpoint_steps(workdir), proc=run.proc,
                what="checkpoint 20", output=run.output)
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
  # The evaluation of step 20 ran before the save killed in 1., and again
  # (for the same numbers) in 2.: each evaluated step is written once.
  assert sorted(os.listdir(workdir / "eval")) == ["20.json", "40.json"]
  steps = [s for tag, s, _ in th.scalar_events(workdir)
           if tag == "eval/reconstruction/l1"]
  assert sorted(steps) == [20, 40], steps


def _signal_after_checkpoint_10(workdir, flags, cache_dir, signum):
  """A run signalled once under way (checkpoint 10 written, step 11 or later
  running); it must exit with 0. Returns the finished `th.Background`."""
  run = th.Background(workdir, flags, cache_dir=cache_dir)
  try:
    th.wait_for(lambda: 10 in th.checkpoint_steps(workdir), proc=run.proc,
                what="checkpoint 10", output=run.output)
    run.proc.send_signal(signum)
    assert run.wait() == 0, run.output()[-6000:]
  finally:
    run.kill()
  return run


@pytest.mark.slow
@SUBPROCESSES
def test_sigterm_saves_the_current_step_and_resumes_exactly(
    reference_run, data_flags, cache_dir, abstract, tmp_path):
  reference_dir = reference_run[0]
  workdir = tmp_path / "preempted"
  flags = [*data_flags, *REFERENCE_FLAGS]
  run = _signal_after_checkpoint_10(
      workdir, [*flags, "--config.num_train_steps=100000"], cache_dir,
      signal.SIGTERM)
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


@pytest.mark.slow
@SUBPROCESSES
def test_ctrl_c_saves_the_current_step_and_a_second_one_aborts(
    data_flags, cache_dir, tmp_path):
  workdir = tmp_path / "interrupted"
  flags = [*data_flags, *REFERENCE_FLAGS, "--config.num_train_steps=100000"]
  run = _signal_after_checkpoint_10(workdir, flags, cache_dir, signal.SIGINT)
  saved = th.checkpoint_steps(workdir)[-1]
  assert saved > 10
  message = re.search(rf"Saved a checkpoint at step {saved} after SIGINT; "
                      r"exiting\. To resume: (python .*)", run.output())
  assert message, run.output()[-6000:]
  assert f"--workdir={workdir}" in message.group(1)

  # Ctrl-C twice: the second one kills the process by SIGINT at once, in
  # whatever Python or native code it is running.
  run = th.Background(workdir, flags, cache_dir=cache_dir,
                      log_path=tmp_path / "twice.log")
  try:
    th.wait_for(lambda: "Starting at step" in run.output(), proc=run.proc,
                what="the start", output=run.output)
    run.proc.send_signal(signal.SIGINT)
    th.wait_for(lambda: "SIGINT received" in run.output(), proc=run.proc,
                what="the first SIGINT", output=run.output)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == -signal.SIGINT, run.output()[-6000:]
  finally:
    run.kill()
  assert "Saved a checkpoint" not in run.output()


@pytest.mark.slow
@SUBPROCESSES
def test_sigterm_during_start_up_exits_cleanly(data_flags, cache_dir,
                                                tmp_path):
  workdir = tmp_path / "early"
  run = th.Background(workdir, [*data_flags, *REFERENCE_FLAGS],
                      cache_dir=cache_dir)
  try:
    th.wait_for(lambda: "Starting at step 0" in run.output(), proc=run.proc,
                what="the start", output=run.output)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output()[-6000:]  # Not a bare 143.
  finally:
    run.kill()
  output = run.output()
  # Before the first step, or (if it had begun) after it: a clean exit that
  # says how to resume.
  assert ("SIGTERM during start-up: exiting before step 1" in output
          or "Saved a checkpoint at step 1 after SIGTERM" in output), (
              output[-6000:])
  assert "To resume: python " in output


@pytest.mark.slow
@TWO_PROCESSES
def test_a_second_run_on_a_workdir_refuses_to_start(data_flags, cache_dir,
                                                    tmp_path):
  workdir = tmp_path / "busy"
  flags = [*data_flags, *REFERENCE_FLAGS, "--config.num_train_steps=100000"]
  first = th.Background(workdir, flags, cache_dir=cache_dir)
  try:
    th.wait_for(lambda: 10 in th.checkpoint_steps(workdir), proc=first.proc,
                what="checkpoint 10", output=first.output)
    second = th.run(workdir, flags)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"error: {workdir} is in use by the run of process " \
        f"{first.proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    # kill -9 leaves the lock behind; the next run takes it over.
    os.kill(first.proc.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
  finally:
    first.kill()
  assert (workdir / "run.lock").exists()
  done = th.checkpoint_steps(workdir)[-1]
  third = th.run(workdir, [*data_flags, *REFERENCE_FLAGS,
                           f"--config.num_train_steps={done}"],
                 cache_dir=cache_dir)
  assert third.returncode == 0, third.stderr[-6000:]
  assert "which no longer runs" in third.stderr
  assert not (workdir / "run.lock").exists()


@pytest.mark.slow
@SUBPROCESSES
def test_config_changes_on_resume(reference_run, data_flags, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(reference_run[0], workdir)
  saved_config = (workdir / "config.json").read_text()
  flags = [*data_flags, *REFERENCE_FLAGS]
  # Fields the saved state depends on: one error listing each, before
  # anything is built, and config.json left as it was.
  result = th.run(workdir, [*flags, "--config.model.latent_dim=32",
                            "--config.seed=7"])
  assert result.returncode == 2, result.stderr[-3000:]
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: the config differs from the one the "
                          "checkpoints in")
  assert "model.latent_dim: saved 16, new 32" in error
  assert "seed: saved 0, new 7" in error
  assert "Use a new --workdir, or resume with the saved values" in error
  assert "Starting at step" not in result.stderr
  assert (workdir / "config.json").read_text() == saved_config
  # Safe changes: logged, and kept in the record of the run's segments.
  image_dir = [f for f in data_flags if "image_dir" in f][0].split("=", 1)[1]
  moved = shutil.copytree(image_dir, tmp_path / "moved_images")
  result = th.run(workdir, [*flags, "--config.optimizer.learning_rate=0.0005",
                            f"--config.data.image_dir={moved}"])
  assert result.returncode == 0, result.stderr[-6000:]
  assert "Config changed on resume: optimizer.learning_rate: 0.001 -> " \
      "0.0005" in result.stderr
  history = {int(p.stem): json.loads(p.read_text())
             for p in (workdir / "config_history").iterdir()}
  assert history[0]["optimizer"]["learning_rate"] == 0.001
  assert history[STEPS]["optimizer"]["learning_rate"] == 0.0005
  assert json.loads((workdir / "config.json").read_text())[
      "optimizer"]["learning_rate"] == 0.0005


@pytest.mark.slow
@SUBPROCESSES
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(
    reference_run, data_flags, cache_dir, abstract, tmp_path):
  """Checkpoint 30 has an emptied array file and 40 was never written: the
  run moves 30 aside, resumes from 20 and ends bit-equal to the
  uninterrupted run."""
  workdir = tmp_path / "damaged"
  shutil.copytree(reference_run[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))
  arrays = [p for p in (workdir / "checkpoints" / "30" / "state").rglob("*")
            if p.is_file() and p.parent.name == "d"]
  max(arrays, key=lambda p: p.stat().st_size).write_bytes(b"")
  result = th.run(workdir, (*data_flags, *REFERENCE_FLAGS),
                  cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-6000:]
  assert "Checkpoint 30 cannot be read" in result.stderr
  assert _started_at(result.stderr) == 20
  assert len(list((workdir / "checkpoints").glob("30.unreadable-*"))) == 1
  state, data_state = th.restore(workdir, abstract, STEPS)
  expected_state, expected_data = th.restore(reference_run[0], abstract, STEPS)
  assert data_state == expected_data
  th.assert_trees_equal(state, expected_state, "state at step 40")


@SUBPROCESSES
def test_a_full_disk_during_a_save_is_one_message(cache_dir, tmp_path):
  """A 4.5 MB file system holds two checkpoints of the `test` config, not
  three: the save of step 3 fails. Before the fix: Orbax's tracebacks, exit
  1, and the partial folder `3.orbax-checkpoint-tmp` left behind."""
  if subprocess.run(["unshare", "-rm", "true"], check=False,
                    capture_output=True).returncode:
    pytest.skip("needs `unshare -rm` (user namespaces) to mount a small "
                "tmpfs without root")
  workdir = tmp_path / "small_disk"
  workdir.mkdir()
  flags = ["--config.checkpoint_every_steps=1", "--config.keep_checkpoints=2",
           "--config.image_every_steps=0"]
  run = th.command(workdir / "run", [*flags, "--config.num_train_steps=6"])
  resume = th.command(workdir / "run", [*flags, "--config.num_train_steps=2"])
  script = (f"mount -t tmpfs -o size=4600k mixvae {workdir} || exit 90\n"
            f"{shlex.join(run)}; echo exit=$?\n"
            f"ls {workdir / 'run' / 'checkpoints'}\n"
            f"{shlex.join(resume)}; echo exit=$?\n")
  result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=th.ROOT,
                          env=th.env(2, cache_dir), capture_output=True,
                          text=True, timeout=th.PATIENCE, check=False)
  out = result.stdout.split()
  assert out[0] == "exit=2", result.stderr[-6000:]
  assert "Traceback" not in result.stderr, result.stderr[-6000:]
  assert "Event loop is closed" not in result.stderr, result.stderr[-6000:]
  assert ("error: could not write the checkpoint of step 3 in "
          f"{workdir / 'run' / 'checkpoints'}: No space left on device (its "
          "partial folder was removed); the newest complete checkpoint is "
          "step 2.") in result.stderr
  assert out[1:3] == ["1", "2"] and out[3] == "exit=0", (out, result.stderr)


# -------------------------------------------------------------- non-finite --


@pytest.mark.slow
@SUBPROCESSES
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    abstract, tmp_path):
  # Checkpoints and logs every 5 steps, 20 steps, the images of step 7 NaN.
  workdir = tmp_path / "workdir"
  result = th.run(workdir, NAN_FLAGS, hooks={"nan_at_step": 7})
  returncode, output = result.returncode, result.stderr
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
          "--config.log_every_steps=1", "--config.image_every_steps=0"]


def _start_multihost(path):
  """launch/main.py as 2 processes x 2 devices (gloo collectives on CPU)."""
  port = th.free_port()
  workdir = path / "workdir"
  runs = [th.Background(workdir, [*_layout_flags(), "--multihost",
                                  f"--config.eval_every_steps={LAYOUT_STEPS}",
                                  f"--coordinator_address=127.0.0.1:{port}",
                                  "--num_processes=2", f"--process_id={i}"],
                        devices=2, log_path=path / f"process_{i}.log")
          for i in range(2)]
  return runs


def _train_in_process(trainer, initial_state, num_devices, num_steps):
  """`num_steps` of the pmapped step on the first `num_devices` devices."""
  devices = jax.devices()[:num_devices]
  step = trainer.pmap_step(devices)
  batches = data_lib.TrainIterator(trainer.config, process_index=0,
                                   process_count=1,
                                   local_device_count=num_devices)
  state = trainer.replicate(initial_state, devices)
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
@TWO_PROCESSES
def test_trajectory_does_not_depend_on_the_device_layout(abstract, tmp_path):
  trainer = trainer_lib.Trainer(CELEBAHQ.get_config("test"))
  initial = trainer.init_state()
  one, metrics_one = _train_in_process(trainer, initial, 1, LAYOUT_STEPS)
  runs = _start_multihost(tmp_path)  # 2 processes x 2 devices.
  try:
    for i, run in enumerate(runs):
      assert run.wait() == 0, f"process {i}:\n" + run.output()[-6000:]
  finally:
    for run in runs:
      run.kill()
  workdir = runs[0].workdir

  # (a) Step 1: every loss term and gradient norm. (8 devices in one process:
  # the float64 test below.)
  hosts = th.read_scalars(workdir)
  _assert_metrics_close({k: v[1] for k, v in hosts.items() if 1 in v},
                        metrics_one[0], "2 processes x 2 devices")
  # (b) After LAYOUT_STEPS steps: the parameters of both networks.
  assert int(one.step) == LAYOUT_STEPS
  hosts_state, _ = th.restore(workdir, abstract, LAYOUT_STEPS)
  assert int(hosts_state.step) == LAYOUT_STEPS
  _assert_params_close(hosts_state, one, initial, "2 processes x 2 devices")
  # (c) The loop's evaluation on 2 processes x 2 devices: every test example
  # once, the numbers of one device evaluating the same checkpoint.
  saved = json.loads((workdir / "eval" / f"{LAYOUT_STEPS}.json").read_text())
  config = trainer.config
  one_device = evaluate.Evaluator(config, trainer_lib.Trainer(
      config, axis_name=None).vae, devices=jax.local_devices()[:1])(
          {"params": hosts_state.ema_params,
           "batch_stats": hosts_state.vae_batch_stats},
          workdir=os.fspath(workdir), step=LAYOUT_STEPS)
  assert saved["num_examples"] == one_device["num_examples"] == 20
  assert results.flat_scalars(saved) == pytest.approx(
      results.flat_scalars(one_device), rel=1e-5, abs=1e-6)


# The float64 numerics mode makes the layout invariance exact: no ReLU input
# sits within float64 round-off of 0, and Adam's eps (1e-7) dwarfs float64
# round-off gradients. After FLOAT64_STEPS steps the distance of every part of
# the state to the 1-device run, over the distance it travelled, is below
# FLOAT64_MAX_DISTANCE, and every loss term agrees to FLOAT64_LOSS_RTOL.
# The two layout bugs the float32 test was checked against, planted with
# tests/layout_worker.py --bug on 8 devices, measured once (4 steps; the
# distances of VAE params / discriminator params / VAE batch statistics /
# discriminator batch statistics / EMA, and the largest loss-term error):
#   no bug:                          3.4e-8 / 1.9e-9 / 7.6e-10 / 3.0e-11 /
#                                    3.1e-8, losses 3.2e-12;
#   noise keyed by device position:  1.3 / 1.2 / 0.067 / 0.083 / 1.3,
#                                    losses 0.61;
#   unsynchronized BatchNorm:        1.3 / 1.1 / 0.086 / 0.14 / 1.3,
#                                    losses 0.64;
# both bugs fail the bounds by 4.8 to 6 (distances) and 8 (losses) orders of
# magnitude.
FLOAT64_STEPS = 4
FLOAT64_MAX_DISTANCE = 1e-6
FLOAT64_LOSS_RTOL = 1e-9
FLOAT64_PARTS = ("vae_params", "disc_params", "vae_batch_stats",
                 "disc_batch_stats", "ema_params")
LAYOUT_WORKER = th.ROOT / "tests" / "layout_worker.py"


def _float64_runs(*runs):
  """tests/layout_worker.py for each (out, devices, processes) at once (at
  most two processes in all): {out: its saved arrays}."""
  port = th.free_port()
  procs = [(out, subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, str(LAYOUT_WORKER), str(out),
       f"--steps={FLOAT64_STEPS}", f"--processes={processes}",
       f"--process_id={i}", f"--port={port}"],
      cwd=th.ROOT, env=th.env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True))
           for out, devices, processes in runs for i in range(processes)]
  assert len(procs) <= 2
  try:
    outputs = [p.communicate(timeout=th.PATIENCE)[0] for _, p in procs]
  finally:
    for _, p in procs:
      p.kill()
  for (_, p), output in zip(procs, outputs):
    assert p.returncode == 0, output[-6000:]
  result = {}
  for out, _, _ in runs:
    with np.load(out) as f:
      result[out] = dict(f)
  return result


def _part(run, stage, part):
  return {k: v for k, v in run.items() if k.startswith(f"{stage}/.{part}")}


@pytest.mark.slow
@TWO_PROCESSES
def test_float64_trajectory_is_the_same_on_every_layout(tmp_path):
  one, eight, hosts = (tmp_path / f"{n}.npz" for n in ("one", "eight", "hosts"))
  runs = _float64_runs((one, 1, 1), (eight, 8, 1))
  runs.update(_float64_runs((hosts, 2, 2)))
  one = runs[one]
  layouts = {"8 devices": runs[eight], "2 processes x 2 devices": runs[hosts]}
  for name, run in layouts.items():
    for part in FLOAT64_PARTS:
      final, expected = _part(run, "final", part), _part(one, "final", part)
      assert final and sorted(final) == sorted(expected), (name, part)
      assert all(v.dtype == np.float64 for v in final.values()), (name, part)
      distance = th.relative_distance(
          list(final.values()), list(expected.values()),
          list(_part(one, "initial", part).values()))
      assert distance < FLOAT64_MAX_DISTANCE, (
          f"{name}: {part} off by {distance:.3g} of the distance travelled")
    losses = [k for k in one if k.startswith("metrics/loss/")]
    assert len(losses) >= 6, losses
    for k in losses:
      assert one[k].shape == (FLOAT64_STEPS,)
      np.testing.assert_allclose(run[k], one[k], rtol=FLOAT64_LOSS_RTOL,
                                 atol=0, err_msg=f"{name}: {k}")


FLOAT64_FLAGS = ("--config.model.dtype=float64",
                 "--config.discriminator.dtype=float64")


def _float_dtypes(workdir, step):
  manager = checkpointing.create_manager(os.fspath(workdir), max_to_keep=9,
                                         read_only=True)
  try:
    leaves = jax.tree.leaves(manager.item_metadata(step).state)
  finally:
    manager.close()
  return {str(np.dtype(x.dtype)) for x in leaves
          if np.issubdtype(np.dtype(x.dtype), np.floating)}


@pytest.mark.slow
@SUBPROCESSES
def test_float64_runs_resume_in_float64_and_dtypes_do_not_mix(
    reference_run, cache_dir, tmp_path):
  workdir = tmp_path / "float64"
  flags = (*FLOAT64_FLAGS, "--config.checkpoint_every_steps=2",
           "--config.log_every_steps=1", "--config.image_every_steps=0")
  result = th.run(workdir, (*flags, "--config.num_train_steps=2"),
                  cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-6000:]
  result = th.run(workdir, (*flags, "--config.num_train_steps=3"),
                  cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-6000:]
  assert _started_at(result.stderr) == 2  # Restored as float64.
  assert _float_dtypes(workdir, 3) == {"float64"}

  # A float32 config on the float64 run: its saved config says so first; on
  # bare float32 checkpoints (no config.json) the checkpoint's dtypes do.
  result = th.run(workdir, ("--config.num_train_steps=4",))
  assert result.returncode == 2
  assert "model.dtype: saved 'float64', new 'float32'" in result.stderr
  float32_run = tmp_path / "float32"
  shutil.copytree(reference_run[0] / "checkpoints", float32_run / "checkpoints")
  result = th.run(float32_run, (*FLOAT64_FLAGS, "--config.num_train_steps=50"))
  assert result.returncode == 2
  assert "holds float32 arrays but the config's state is float64" in (
      result.stderr)
