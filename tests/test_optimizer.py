"""Adam's epsilon in optax's and Keras's form (`config.optimizer.eps_form`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import celebahq
from mixvae import config_utils
from mixvae import train_state as train_state_lib

LR, B1, B2, EPS = 1e-4, 0.5, 0.999, 1e-7


def _optimizer(eps_form):
  config = celebahq.get_config("test").optimizer
  config.b1, config.b2, config.eps, config.eps_form = B1, B2, EPS, eps_form
  return train_state_lib.make_optimizer(config, LR, 100)


def _keras_updates(grads):
  """Keras's Adam in float64: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
  update_t = -lr_t m_t / (sqrt(v_t) + eps), m and v without bias correction."""
  m = v = np.zeros_like(grads[0])
  out = []
  for t, g in enumerate(grads, start=1):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    lr_t = LR * np.sqrt(1 - B2**t) / (1 - B1**t)
    out.append(-lr_t * m / (np.sqrt(v) + EPS))
  return out


def _run(tx, grads):
  params = jnp.zeros(grads[0].shape, jnp.float32)
  state, out = tx.init(params), []
  for g in grads:
    update, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    out.append(np.asarray(update, np.float64))
  return out, state


def test_keras_form_matches_the_closed_form_on_a_gradient_stream():
  # Five steps; per element a fixed scale from tiny (1e-7, below eps) to
  # large, random signs and sizes, and one element that is 0 at step 1.
  scales = np.array([1e-7, 3e-7, 1e-5, 1e-3, 0.1, 1.0, 40.0])
  rng = np.random.default_rng(0)
  grads = [scales * rng.standard_normal(scales.shape) for _ in range(5)]
  grads[0][-1] = 0.0
  expected = _keras_updates(np.asarray(grads, np.float32).astype(np.float64))
  got, _ = _run(_optimizer("keras"), grads)
  for t, (a, b) in enumerate(zip(got, expected), start=1):
    # float32 arithmetic, as in Keras: 1 - b2^t loses ~1e-5 of its digits.
    np.testing.assert_allclose(a, b, rtol=3e-5, atol=0, err_msg=f"step {t}")
  # optax's form differs, most where |g| is near eps.
  optax_form, _ = _run(_optimizer("optax"), grads)
  assert not np.allclose(optax_form[-1][:3], expected[-1][:3], rtol=1e-2)


def test_keras_form_at_step_one():
  # Step 1: optax gives -lr g / (|g| + eps), Keras -lr g / (|g| + eps /
  # sqrt(1 - b2)): its eps is 31.6x larger.
  g = np.array([1e-7, -1e-5, 1e-3, -1.0])
  keras, _ = _run(_optimizer("keras"), [g])
  plain, _ = _run(_optimizer("optax"), [g])
  ratio = (np.abs(g) + EPS) / (np.abs(g) + EPS / np.sqrt(1 - B2))
  np.testing.assert_allclose(keras[0] / plain[0], ratio, rtol=3e-5)
  np.testing.assert_allclose(ratio[2], 1 - 3.05e-3, rtol=1e-5)  # 0.31%.
  assert ratio[0] < 0.07  # Tiny gradients: 16x smaller steps.


def test_both_forms_keep_the_adam_state_layout():
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
  schedule = optax.constant_schedule(LR)  # make_optimizer's, for any config.
  reference = optax.adam(schedule, b1=B1, b2=B2, eps=EPS).init(params)
  for form in ("optax", "keras"):
    state = _optimizer(form).init(params)
    assert jax.tree.structure(state) == jax.tree.structure(reference), form
  # 'optax' is optax.adam itself, bit for bit.
  grads = [np.linspace(-1, 1, 5) * 10.0**-k for k in range(4)]
  ours, state = _run(_optimizer("optax"), grads)
  theirs, _ = _run(optax.adam(schedule, b1=B1, b2=B2, eps=EPS), grads)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a, b)
  assert int(state[0].count) == len(grads)


@pytest.mark.parametrize("field,value,message", [
    ("optimizer.eps_form", "torch",
     "config.optimizer.eps_form='torch': use one of ['optax', 'keras']"),
    ("data.resize", "nearest",
     "config.data.resize='nearest': use one of ['antialias', 'bilinear']"),
])
def test_bad_values_are_named(field, value, message):
  config = celebahq.get_config("test")
  block, name = field.split(".")
  config[block][name] = value
  with pytest.raises(ValueError) as info:
    config_utils.validate(config)
  assert str(info.value) == message
