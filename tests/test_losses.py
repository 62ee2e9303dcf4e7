"""Tests of mixvae.losses against float64 NumPy and across device layouts."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from mixvae import losses

B, D = 16, 6  # Global batch and latent size; B divides by 8 devices.
SOURCES = losses.VARIANCE_SOURCES


def _latents(seed=0, batch=B, dim=D):
  rng = np.random.default_rng(seed)
  mu = rng.normal(0.3, 1.5, (batch, dim)).astype(np.float32)
  logvar = rng.normal(-1.0, 0.8, (batch, dim)).astype(np.float32)
  z = (mu + np.exp(logvar / 2) * rng.normal(size=(batch, dim))).astype(
      np.float32)
  return mu, z, logvar


def _images(seed=1, batch=B, size=8):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  x_hat = rng.normal(0, 0.7, (batch, size, size, 3)).astype(np.float32)
  real = rng.normal(1.0, 3.0, (batch, size // 8 + 1, size // 8 + 1, 1))
  fake = rng.normal(-1.0, 3.0, (batch, size // 8 + 1, size // 8 + 1, 1))
  return x, x_hat, real.astype(np.float32), fake.astype(np.float32)


# ---------------------------------------------------------------------------
# Independent float64 NumPy evaluations of the paper's equations.
# ---------------------------------------------------------------------------


def np_moments(mu, z, logvar, source):
  mu, z, logvar = (np.asarray(a, np.float64) for a in (mu, z, logvar))
  mu_bar = mu.mean(axis=0)  # Eq. 17
  if source == "z":
    var_bar = ((z - mu_bar) ** 2).mean(axis=0)  # Eq. 18
  else:
    var_bar = ((mu - mu_bar) ** 2).mean(axis=0)
    if source == "mixture":
      var_bar = var_bar + np.exp(logvar).mean(axis=0)
  return mu_bar, var_bar


def np_kl_global(mu, z, logvar, source, eps=losses.KL_GLOBAL_EPS):
  m, v = np_moments(mu, z, logvar, source)
  return 0.5 * np.sum(v + m**2 - 1 - np.log(v + eps))  # Eq. 19


def np_kl_individual(logvar, reduction="mean"):
  s2 = np.exp(np.float64(logvar))
  per = np.sum(s2 - 1 - np.float64(logvar), axis=1)  # Eq. 20
  return per.mean() if reduction == "mean" else per.sum()


def np_kl_standard(mu, logvar, reduction="mean"):
  mu, lv = np.float64(mu), np.float64(logvar)
  per = 0.5 * np.sum(np.exp(lv) + mu**2 - 1 - lv, axis=1)  # Eq. 10
  return per.mean() if reduction == "mean" else per.sum()


def np_bce(logits, label):
  p = 1 / (1 + np.exp(-np.float64(logits)))
  return -(label * np.log(p) + (1 - label) * np.log(1 - p))


# ---------------------------------------------------------------------------
# Values against NumPy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_mixture_moments_match_numpy(source):
  mu, z, logvar = _latents()
  mu_bar, var_bar = losses.mixture_moments(
      mu, z, logvar=logvar, variance_source=source)
  want_mu, want_var = np_moments(mu, z, logvar, source)
  assert mu_bar.shape == var_bar.shape == (D,)
  np.testing.assert_allclose(mu_bar, want_mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var_bar, want_var, rtol=1e-5)


def test_variance_sources_differ():
  # Guards against a source silently falling back to another one.
  mu, z, logvar = _latents()
  vars_ = [losses.mixture_moments(mu, z, logvar=logvar, variance_source=s)[1]
           for s in SOURCES]
  for i in range(len(vars_)):
    for j in range(i + 1, len(vars_)):
      assert not np.allclose(vars_[i], vars_[j])


@pytest.mark.parametrize("source", SOURCES)
def test_kl_global_matches_numpy(source):
  mu, z, logvar = _latents()
  got = losses.kl_global(mu, z, logvar=logvar, variance_source=source)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_kl_global(mu, z, logvar, source),
                             rtol=1e-5)


def test_kl_global_is_zero_at_the_prior():
  # Moments exactly (0, 1) per dimension: KL_G = 1/2 sum [1 + 0 - 1 - log 1].
  mu = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)
  got = losses.kl_global(mu, None, variance_source="mu", eps=0.0)
  np.testing.assert_allclose(got, 0.0, atol=1e-7)


@pytest.mark.parametrize("reduction", losses.BATCH_REDUCTIONS)
def test_kl_individual_matches_numpy(reduction):
  _, _, logvar = _latents()
  got = losses.kl_individual(logvar, batch_reduction=reduction)
  np.testing.assert_allclose(got, np_kl_individual(logvar, reduction),
                             rtol=1e-5)


@pytest.mark.parametrize("reduction", losses.BATCH_REDUCTIONS)
def test_kl_standard_matches_numpy(reduction):
  mu, _, logvar = _latents()
  got = losses.kl_standard(mu, logvar, batch_reduction=reduction)
  np.testing.assert_allclose(got, np_kl_standard(mu, logvar, reduction),
                             rtol=1e-5)


@pytest.mark.parametrize("pixel_reduction", ["mean", "sum"])
@pytest.mark.parametrize("batch_reduction", losses.BATCH_REDUCTIONS)
def test_l1_reconstruction_matches_numpy(pixel_reduction, batch_reduction):
  x, x_hat, _, _ = _images()
  per = np.abs(np.float64(x) - np.float64(x_hat)).reshape(B, -1)
  per = per.mean(1) if pixel_reduction == "mean" else per.sum(1)
  want = per.mean() if batch_reduction == "mean" else per.sum()
  got = losses.l1_reconstruction(x, x_hat, pixel_reduction=pixel_reduction,
                                 batch_reduction=batch_reduction)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_adversarial_terms_match_numpy():
  _, _, real, fake = _images()
  np.testing.assert_allclose(losses.generator_adversarial(fake),
                             np_bce(fake, 1).mean(), rtol=1e-5)
  np.testing.assert_allclose(
      losses.discriminator_adversarial(real, fake),
      np_bce(real, 1).mean() + np_bce(fake, 0).mean(), rtol=1e-5)
  np.testing.assert_allclose(
      losses.generator_adversarial(fake, batch_reduction="sum"),
      np_bce(fake, 1).reshape(B, -1).mean(1).sum(), rtol=1e-5)


def test_adversarial_terms_are_stable_for_large_logits():
  big = np.full((2, 4, 4, 1), 1e4, np.float32)
  # log sigmoid(-1e4) = -1e4: a naive log(sigmoid(.)) gives inf here.
  np.testing.assert_allclose(losses.generator_adversarial(-big), 1e4,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.generator_adversarial(big), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.discriminator_adversarial(-big, big), 2e4,
                             rtol=1e-6)
  grads = jax.grad(losses.discriminator_adversarial, argnums=(0, 1))(-big, big)
  assert all(np.isfinite(g).all() for g in grads)


def test_bad_arguments_raise_clear_errors():
  mu, z, logvar = _latents()
  with pytest.raises(ValueError, match="variance_source"):
    losses.kl_global(mu, z, variance_source="samples")
  with pytest.raises(ValueError, match="needs the samples z"):
    losses.kl_global(mu, None)
  with pytest.raises(ValueError, match="needs logvar"):
    losses.kl_global(mu, z, variance_source="mixture")
  with pytest.raises(ValueError, match="batch_reduction"):
    losses.kl_individual(logvar, batch_reduction="avg")
  with pytest.raises(ValueError, match="one shape"):
    losses.l1_reconstruction(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 1)))


# ---------------------------------------------------------------------------
# Device-count invariance: pmap, shard_map and jit on a sharded batch.
# ---------------------------------------------------------------------------

# Each case: name -> (function of (mu, z, logvar, axis_name) -> scalar).
_CW = np.random.default_rng(7).normal(size=(2, D)).astype(np.float32)


def _moments_scalar(mu, z, logvar, axis_name, mapping, source):
  # A scalar with random weights on every moment, so the gradient through
  # both mu_bar and var_bar is checked.
  m, v = losses.mixture_moments(mu, z, logvar=logvar, axis_name=axis_name,
                                mapping=mapping, variance_source=source)
  return jnp.sum(_CW[0] * m) + jnp.sum(_CW[1] * v)


def _kl_global(mu, z, logvar, axis_name, mapping, source):
  return losses.kl_global(mu, z, logvar=logvar, axis_name=axis_name,
                          mapping=mapping, variance_source=source)


def _kl_rest(mu, z, logvar, axis_name, mapping, source):
  del z, source
  return (losses.kl_individual(logvar, axis_name=axis_name, mapping=mapping)
          + 3.0 * losses.kl_standard(mu, logvar, axis_name=axis_name,
                                     mapping=mapping, batch_reduction="sum"))


_FUNCS = {"mixture_moments": _moments_scalar, "kl_global": _kl_global,
          "kl_individual+kl_standard": _kl_rest}


def _value_and_grads(fn, source, axis_name, mapping=None):
  f = functools.partial(fn, axis_name=axis_name, mapping=mapping,
                        source=source)
  return jax.value_and_grad(f, argnums=(0, 1, 2))


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _assert_same(got_value, got_grads, want_value, want_grads):
  assert _rel_err(got_value, want_value) <= 1e-5, (got_value, want_value)
  for name, g, w in zip(("mu", "z", "logvar"), got_grads, want_grads):
    assert np.asarray(g).shape == np.asarray(w).shape
    assert _rel_err(g, w) <= 1e-5, f"gradient wrt {name}: {g} vs {w}"


def name_uses_no_logvar(fn, source):
  return fn is not _kl_rest and source != "mixture"


def _reference(fn, source):
  mu, z, logvar = _latents()
  value, grads = jax.jit(_value_and_grads(fn, source, None))(mu, z, logvar)
  # A zero gradient would make the comparisons below prove nothing.
  assert np.abs(grads[0]).max() > 0 and np.abs(grads[2]).max() > 0 or (
      name_uses_no_logvar(fn, source))
  return (mu, z, logvar), value, grads


@pytest.mark.parametrize("num_devices", [2, 8])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(_FUNCS))
def test_pmap_equals_single_device(name, source, num_devices):
  fn = _FUNCS[name]
  inputs, want_value, want_grads = _reference(fn, source)
  split = [a.reshape(num_devices, B // num_devices, D) for a in inputs]
  value, grads = jax.pmap(_value_and_grads(fn, source, "batch", "pmap"),
                          axis_name="batch",
                          devices=jax.devices()[:num_devices])(*split)
  # Every device holds the global value; grads are per-device slices.
  np.testing.assert_array_equal(value, np.full(num_devices, value[0]))
  _assert_same(value[0], [g.reshape(B, D) for g in grads], want_value,
               want_grads)


def _mesh():
  return jax.make_mesh((jax.device_count(),), ("batch",))


def _shard(mesh, *arrays):
  sharding = NamedSharding(mesh, P("batch"))
  return [jax.device_put(a, sharding) for a in arrays]


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(_FUNCS))
def test_shard_map_equals_single_device(name, source, check_vma):
  fn = _FUNCS[name]
  inputs, want_value, want_grads = _reference(fn, source)
  mesh = _mesh()
  mapping = "shard_map" if check_vma else "pmap"
  f = jax.shard_map(_value_and_grads(fn, source, "batch", mapping), mesh=mesh,
                    in_specs=P("batch"),
                    out_specs=(P(), (P("batch"),) * 3), check_vma=check_vma)
  value, grads = jax.jit(f)(*_shard(mesh, *inputs))
  _assert_same(value, grads, want_value, want_grads)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(_FUNCS))
def test_jit_on_sharded_batch_equals_single_device(name, source):
  fn = _FUNCS[name]
  inputs, want_value, want_grads = _reference(fn, source)
  sharded = _shard(_mesh(), *inputs)
  assert len(sharded[0].sharding.device_set) == jax.device_count()
  value, grads = jax.jit(_value_and_grads(fn, source, None))(*sharded)
  _assert_same(value, grads, want_value, want_grads)


def test_pmap_image_terms_equal_single_device():
  x, x_hat, real, fake = _images()

  def total(x, x_hat, real, fake, axis_name=None):
    mapped = dict(axis_name=axis_name, mapping=axis_name and "pmap")
    return (losses.l1_reconstruction(x, x_hat, **mapped)
            + losses.generator_adversarial(fake, **mapped)
            + losses.discriminator_adversarial(real, fake, **mapped))

  vg = jax.value_and_grad(total, argnums=(1, 2, 3))
  want_value, want_grads = jax.jit(vg)(x, x_hat, real, fake)
  split = [a.reshape((8, B // 8) + a.shape[1:]) for a in (x, x_hat, real, fake)]
  value, grads = jax.pmap(functools.partial(vg, axis_name="batch"),
                          axis_name="batch")(*split)
  assert _rel_err(value[0], want_value) <= 1e-5
  for g, w in zip(grads, want_grads):
    assert _rel_err(g.reshape(w.shape), w) <= 1e-5


# ---------------------------------------------------------------------------
# Edge cases and dtypes.
# ---------------------------------------------------------------------------


def _all_terms(mu, z, logvar, source):
  return (losses.kl_global(mu, z, logvar=logvar, variance_source=source)
          + losses.kl_individual(logvar) + losses.kl_standard(mu, logvar))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", ["logvar=+20", "logvar=-20", "batch of 1",
                                  "identical rows"])
def test_finite_values_and_gradients(case, source):
  mu, z, logvar = _latents(batch=4)
  if case == "logvar=+20":
    logvar = np.full_like(logvar, 20.0)
  elif case == "logvar=-20":
    logvar = np.full_like(logvar, -20.0)
  elif case == "batch of 1":
    mu, z, logvar = mu[:1], z[:1], logvar[:1]
  else:
    mu, z, logvar = (np.repeat(a[:1], 4, axis=0) for a in (mu, z, logvar))
  value, grads = jax.value_and_grad(_all_terms, argnums=(0, 1, 2))(
      mu, z, logvar, source)
  assert np.isfinite(value)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()


def test_kl_global_eps_is_what_keeps_a_batch_of_one_finite():
  mu, _, _ = _latents(batch=1)
  assert np.isfinite(losses.kl_global(mu, None, variance_source="mu"))
  assert not np.isfinite(losses.kl_global(mu, None, variance_source="mu",
                                          eps=0.0))


@pytest.mark.parametrize("source", SOURCES)
def test_bfloat16_inputs_give_float32_results(source):
  mu, z, logvar = _latents()
  x, x_hat, real, fake = _images()
  f32 = [mu, z, logvar, x, x_hat, real, fake]
  bf16 = [jnp.asarray(a, jnp.bfloat16) for a in f32]
  rounded = [jnp.asarray(a, jnp.float32) for a in bf16]

  def terms(mu, z, logvar, x, x_hat, real, fake):
    return [
        *losses.mixture_moments(mu, z, logvar=logvar, variance_source=source),
        losses.kl_global(mu, z, logvar=logvar, variance_source=source),
        losses.kl_individual(logvar), losses.kl_standard(mu, logvar),
        losses.l1_reconstruction(x, x_hat),
        losses.generator_adversarial(fake),
        losses.discriminator_adversarial(real, fake),
    ]

  for got, exact, on_rounded in zip(terms(*bf16), terms(*f32),
                                    terms(*rounded)):
    assert got.dtype == jnp.float32
    # Computed in float32: only the inputs were rounded ...
    np.testing.assert_allclose(got, on_rounded, rtol=1e-6, atol=1e-6)
    # ... and that rounding (2^-8 relative) moves the results by little.
    np.testing.assert_allclose(got, exact, rtol=2e-2, atol=1e-2)


def test_docstrings_give_equations_shapes_and_axis_semantics():
  doc = losses.kl_global.__doc__
  assert "Eq. 19" in doc and "[B, d]" in doc and "axis_name" in doc
  assert "Eqs. 17-18" in losses.mixture_moments.__doc__
  assert "Eq. 20" in losses.kl_individual.__doc__
  assert "Eq. 10" in losses.kl_standard.__doc__
  assert "Eq. 21" in losses.l1_reconstruction.__doc__
  assert "Eq. 23" in losses.discriminator_adversarial.__doc__
  assert "global batch" in losses.__doc__


def test_an_axis_without_its_mapping_is_an_error():
  mu, z, _ = _latents()
  split = [a.reshape(2, B // 2, D) for a in (mu, z)]
  with pytest.raises(ValueError, match="needs mapping='pmap'"):
    jax.pmap(lambda m, z: losses.kl_global(m, z, axis_name="batch"),
             axis_name="batch", devices=jax.devices()[:2])(*split)
  with pytest.raises(ValueError, match="mapping='vmap'"):
    jax.pmap(lambda m, z: losses.kl_global(m, z, axis_name="batch",
                                           mapping="vmap"),
             axis_name="batch", devices=jax.devices()[:2])(*split)
