"""One step of Algorithm 1 in process, on one device: the discriminator's
start step, the alternating update, the EMA, the learning-rate schedule and
gradient clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import celebahq
from mixvae import train_state as train_state_lib
from mixvae import trainer as trainer_lib


def _config(**overrides):
  config = celebahq.get_config("test")
  for path, value in overrides.items():
    block, _, field = path.rpartition(".")
    (config[block] if block else config)[field] = value
  return config


def _batch(seed=0, batch=8):
  x = np.random.default_rng(seed).uniform(-1, 1, (batch, 32, 32, 3))
  return {"image": jnp.asarray(x, jnp.float32),
          "index": jnp.arange(batch, dtype=jnp.int32)}


_COMPILED = {}  # config JSON -> (trainer, jitted step): each compiles once.


def _steps(config, num_steps, state=None):
  """`num_steps` jitted steps on one device; (initial, final state, metrics)."""
  key = config.to_json()
  if key not in _COMPILED:
    trainer = trainer_lib.Trainer(config, axis_name=None)
    _COMPILED[key] = trainer, jax.jit(trainer.step_fn)
  trainer, step = _COMPILED[key]
  initial = trainer.init_state() if state is None else state
  state, metrics = initial, []
  for i in range(num_steps):
    state, m = step(state, _batch(i))
    metrics.append(m)
  return initial, state, metrics


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                   jax.tree.leaves(b)))


def test_discriminator_untouched_before_its_start_step():
  initial, state, metrics = _steps(_config(**{"loss.disc_start_step": 2}), 2)
  assert int(state.step) == 2
  for field in ("disc_params", "disc_opt_state", "disc_batch_stats"):
    assert _equal(getattr(state, field), getattr(initial, field)), field
  # Its loss is still computed and logged.
  assert all(np.isfinite(m["loss/discriminator"]) for m in metrics)
  _, later, _ = _steps(_config(**{"loss.disc_start_step": 2}), 1, state)
  assert not _equal(later.disc_params, initial.disc_params)
  # The generator trains from step 0 (without the adversarial term before).
  assert not _equal(state.vae_params, initial.vae_params)


def test_alternating_update_uses_the_updated_generator():
  def run(scheme, **overrides):
    _, state, metrics = _steps(
        _config(**{"training.update_scheme": scheme}, **overrides), 1)
    return state, {k: float(v) for k, v in metrics[0].items()}

  simultaneous, m_sim = run("simultaneous")
  alternating, m_alt = run("alternating")
  # The generator's update is the same; the discriminator's loss is not (it
  # saw the updated generator's reconstructions) ...
  assert _equal(alternating.vae_params, simultaneous.vae_params)
  changed = abs(m_alt["loss/discriminator"] / m_sim["loss/discriminator"] - 1)
  assert changed > 1e-4, (m_alt, m_sim)
  # ... unless the generator does not move. (Compared by the loss and the
  # gradient norm: Adam's first update is +-lr for any gradient, so round-off
  # flips the parameters of near-zero gradient.)
  frozen = {"optimizer.learning_rate": 1e-30}
  _, m_alt = run("alternating", **frozen)
  _, m_sim = run("simultaneous", **frozen)
  for k in ("loss/discriminator", "grad_norm/disc", "disc/fake_logit_mean"):
    # The mean logit is near 0 (~1e-2): round-off of the second decoder pass
    # is judged against 1e-6 absolute.
    np.testing.assert_allclose(m_alt[k], m_sim[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_ema_update():
  decay = 0.9
  initial, state, _ = _steps(_config(**{"training.ema_decay": decay}), 2)
  _, one, _ = _steps(_config(**{"training.ema_decay": decay}), 1)
  # ema_2 = d ema_1 + (1 - d) p_2, with ema_1 = d p_0 + (1 - d) p_1.
  expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                          one.ema_params, state.vae_params)
  for x, y in zip(jax.tree.leaves(state.ema_params),
                  jax.tree.leaves(expected)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  ema_1 = jax.tree.map(lambda p0, p1: decay * p0 + (1 - decay) * p1,
                       initial.vae_params, one.vae_params)
  for x, y in zip(jax.tree.leaves(one.ema_params), jax.tree.leaves(ema_1)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_ema_decay_zero_is_the_raw_weights():
  # The `reference` preset: evaluation and grids see the raw weights.
  assert celebahq.get_config("reference").training.ema_decay == 0.0
  _, state, _ = _steps(_config(**{"training.ema_decay": 0.0}), 2)
  for x, y in zip(jax.tree.leaves(state.ema_params),
                  jax.tree.leaves(state.vae_params)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_cosine_schedule_with_warmup():
  config = _config(**{"optimizer.schedule": "cosine",
                      "optimizer.warmup_steps": 10})
  schedule = train_state_lib.make_schedule(config.optimizer, 1e-3, 110)
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 5, 10, 60, 110)],
      [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
  constant = train_state_lib.make_schedule(_config().optimizer, 1e-3, 110)
  assert float(constant(0)) == float(constant(100)) == 1e-3


def test_gradient_clipping():
  grads = {"w": jnp.asarray([3.0, 4.0]), "b": jnp.asarray([0.0])}  # norm 5
  params = jax.tree.map(jnp.zeros_like, grads)
  # eps = 1: Adam's first update keeps the gradient's magnitude.
  config = _config(**{"optimizer.grad_clip_norm": 1.0, "optimizer.eps": 1.0})
  clipped = train_state_lib.make_optimizer(config.optimizer, 1e-3, 100)
  plain = optax.adam(1e-3, b1=config.optimizer.b1, b2=config.optimizer.b2,
                     eps=1.0)
  update, _ = clipped.update(grads, clipped.init(params), params)
  expected, _ = plain.update(jax.tree.map(lambda g: g / 5.0, grads),
                             plain.init(params), params)
  unclipped, _ = plain.update(grads, plain.init(params), params)
  for k in grads:
    np.testing.assert_allclose(update[k], expected[k], rtol=1e-6)
  assert not np.allclose(update["w"], unclipped["w"])


@pytest.mark.parametrize("variant", ["vae", "beta_vae"])
def test_baselines_have_no_discriminator(variant):
  config = celebahq.get_config(variant)
  small = _config(**{"loss.family": "standard",
                     "loss.beta_adversarial": 0.0})
  assert config.loss.beta_adversarial == 0
  trainer = trainer_lib.Trainer(small, axis_name=None)
  assert trainer.discriminator is None and trainer.disc_tx is None
  initial, state, metrics = _steps(small, 1)
  assert state.disc_params == {} and state.disc_opt_state == {}
  assert "loss/discriminator" not in metrics[0]
  assert not _equal(state.vae_params, initial.vae_params)
