"""What is checked before training starts. In this process: every config
loads and builds, config variants and older saved configs, evaluation
weights, float64 on TPUs, checkpoint paths. Through `launch/main.py`: the
one-line errors of bad configs and workdirs, before anything is written.
(tests/test_train.py runs the training; these tests run on the other xdist
worker.)"""

import json
import os
import re

from absl import app
import jax
import pytest

from configs import celebahq as CELEBAHQ
from configs import demo as DEMO
from configs import patches as PATCHES
import train_helpers as th
from mixvae import checkpointing
from mixvae import config_utils
from mixvae import errors
from mixvae import train
from mixvae import trainer as trainer_lib
from mixvae import workdir as workdir_lib
from mixvae.evaluation import evaluate


@pytest.mark.parametrize("module,arg", [
    (CELEBAHQ, None), (CELEBAHQ, "reference"), (CELEBAHQ, "vae"),
    (CELEBAHQ, "beta_vae,beta=0.5"), (CELEBAHQ, "test"), (DEMO, None),
    (DEMO, "vae"), (PATCHES, None), (PATCHES, "no_kli,seed=2"),
    (PATCHES, "beta_vae,beta=8")],
    ids=["celebahq", "celebahq:reference", "celebahq:vae", "celebahq:beta_vae",
         "celebahq:test", "demo", "demo:vae", "patches", "patches:no_kli",
         "patches:beta_vae"])
def test_configs_load_and_build(module, arg):
  config = module.get_config(arg)
  assert config.batch_size > 0
  config.batch_size = jax.device_count()  # The rest must be valid as is.
  config_utils.validate(config)
  # Shapes only: traces, allocates nothing.
  state = trainer_lib.Trainer(config).abstract_state()
  assert state.step.shape == ()
  assert jax.tree.leaves(state.vae_params)
  # The baselines (beta_4 = 0) build, initialise and save no discriminator.
  has_disc = config.loss.beta_adversarial > 0
  assert bool(jax.tree.leaves(state.disc_params)) == has_disc
  assert bool(jax.tree.leaves(state.disc_opt_state)) == has_disc
  if arg and arg.startswith("beta_vae"):
    assert config.loss.family == "standard"
    assert config.loss.beta == float(arg.split("beta=")[1])
  if arg == "no_kli,seed=2":
    assert config.loss.beta_kl_individual == 0 and config.seed == 2
    assert config.loss.family == "mixture" and has_disc
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


def test_a_config_saved_before_a_field_was_added_still_loads(tmp_path):
  """config.json of an older run lacks the fields added since: it resumes
  and evaluates with the behaviour it was trained with."""
  config = CELEBAHQ.get_config("test")
  saved = json.loads(config.to_json_best_effort())
  for key in config_utils.ADDED_FIELDS:
    *block, name = key.split(".")
    del (saved[block[0]] if block else saved)[name]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  workdir_lib.check_resume(str(tmp_path), config)  # No error.
  loaded = evaluate.load_config(str(tmp_path))
  assert loaded.data.resize == "antialias"
  assert loaded.optimizer.eps_form == "optax"
  config.data.resize = "bilinear"  # But a real change is one.
  with pytest.raises(ValueError, match="data.resize: saved 'antialias', new "
                     "'bilinear'"):
    workdir_lib.check_resume(str(tmp_path), config)


def test_bad_evaluation_weights_fail_before_the_first_step(tmp_path,
                                                          monkeypatch):
  monkeypatch.delenv("MIXVAE_INCEPTION_WEIGHTS", raising=False)
  config = CELEBAHQ.get_config("test")
  config.eval_every_steps = 10
  config.eval.inception_weights = str(tmp_path / "missing_inception.npz")
  workdir = tmp_path / "run"
  with pytest.raises(errors.MissingError, match=re.escape(
      f"FID/KID weights not found: {tmp_path / 'missing_inception.npz'}")):
    train.train_and_evaluate(config, str(workdir))
  # A best metric that cannot be measured is refused as early.
  config.eval.inception_weights = ""
  monkeypatch.delenv("MIXVAE_LPIPS_WEIGHTS", raising=False)
  for best, metric in (("fid_recon", "FID/KID"), ("kid_prior", "FID/KID"),
                       ("lpips", "LPIPS")):
    config.eval.best_metric = best
    with pytest.raises(errors.ConfigError, match=f"best_metric='{best}' "
                       f"cannot be measured: {metric} skipped"):
      train.train_and_evaluate(config, str(workdir))
  assert not th.checkpoint_steps(workdir)
  assert "loss/l1" not in th.read_scalars(workdir)  # No step ran.


def test_float64_is_refused_on_tpus(monkeypatch):
  process_setup = th.load_launch_module("process_setup")
  config = CELEBAHQ.get_config("test")
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  process_setup.enable_float64_if_asked(config)  # float32: nothing to do.
  assert not jax.config.jax_enable_x64
  config.model.dtype = "float64"
  with pytest.raises(app.UsageError, match="TPUs do not compute in"):
    process_setup.enable_float64_if_asked(config)
  assert not jax.config.jax_enable_x64


def test_checkpoint_dir_is_absolute_for_local_workdirs(tmp_path, monkeypatch):
  # Orbax's tensorstore refuses relative local paths at the first save.
  monkeypatch.chdir(tmp_path)
  assert os.fspath(checkpointing.checkpoint_dir("runs/demo")) == os.fspath(
      tmp_path / "runs" / "demo" / "checkpoints")
  assert os.fspath(checkpointing.checkpoint_dir("gs://bucket/run")) == (
      "gs://bucket/run/checkpoints")


@pytest.mark.slow
@pytest.mark.training_processes
def test_config_typo_fails_fast(tmp_path):
  result = th.run(tmp_path / "typo", ["--config.num_train_stepz=5"])
  assert result.returncode != 0
  assert "num_train_stepz" in result.stderr
  assert "JAX process" not in result.stderr  # Before JAX is even started.
  assert not (tmp_path / "typo").exists()


@pytest.mark.slow
@pytest.mark.training_processes
def test_batch_size_must_divide_by_devices(tmp_path):
  result = th.run(tmp_path / "odd", ["--config.batch_size=7"], devices=2)
  assert result.returncode != 0
  assert "config.batch_size=7" in result.stderr
  assert "multiple of the number of devices (2)" in result.stderr


@pytest.mark.slow
@pytest.mark.training_processes
@pytest.mark.parametrize("flag,message", [
    ("--config.optimizer.learning_rate=-0.0001",
     "error: config.optimizer.learning_rate=-0.0001 must be > 0"),
    ("--config.loss.variance_source=bogus",
     "error: config.loss.variance_source='bogus': use one of ['z', 'mu', "
     "'mixture']"),
    ("--config.model.norm=batchnorm", "error: model.norm='batchnorm': use one "
     "of ['batch', 'group', 'affine', 'none']"),
], ids=["learning_rate", "variance_source", "norm"])
def test_bad_config_values_are_one_line_errors(tmp_path, flag, message):
  result = th.run(tmp_path / "run", [flag])
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == message
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()  # Checked before anything is made.


@pytest.mark.slow
@pytest.mark.training_processes
def test_workdir_that_is_a_file_is_a_one_line_error(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  result = th.run(tmp_path / "file")
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: --workdir={tmp_path / 'file'} is a file, not a folder")
  assert "Traceback" not in result.stderr
