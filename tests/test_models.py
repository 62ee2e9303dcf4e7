"""Tests of mixvae.models: the networks of Section 3.4 / Fig. 3 and the PatchGAN.

256x256 models are only traced (`jax.eval_shape`); real forward passes use the
tiny `test` variant of configs/celebahq.py (32x32, width 16, 3 stages).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import celebahq
from mixvae import models
from mixvae.models import layers

B = 2


def init_key(seed):
  # Initialization with the default threefry keys compiles slowly on CPU
  # (seconds per model); 'rbg' keys keep the real forward passes fast.
  return jax.random.key(seed, impl="rbg")


def get_config(arg=None, **model_overrides):
  config = celebahq.get_config(arg)
  for key, value in model_overrides.items():
    config.model[key] = value
  return config


def _batch_norm_discriminator_config(**model_overrides):
  """The test config with a BatchNorm discriminator and no dropout."""
  config = get_config("test", **model_overrides)
  config.discriminator.norm = "batch"
  config.discriminator.dropout = 0.0
  return config


def abstract_variables(config, batch_size=B):
  return models.abstract_networks(config, batch_size)


def images(config, batch_size=B, seed=0):
  m = config.model
  return jax.random.uniform(jax.random.key(seed),
                            (batch_size, m.resolution, m.resolution,
                             m.channels), minval=-1.0, maxval=1.0)


# ---- Shapes -----------------------------------------------------------------


@pytest.mark.parametrize("variant", [None, "reference"])
def test_shapes_at_256_via_eval_shape(variant):
  config = get_config(variant)
  vae, disc, vae_vars, disc_vars = abstract_variables(config)
  x = jax.ShapeDtypeStruct((B, 256, 256, 3), jnp.float32)
  rngs = {"sample": jax.random.key(1)}

  mu, logvar = jax.eval_shape(
      lambda v, x: vae.apply(v, x, method="encode"), vae_vars, x)
  out = jax.eval_shape(lambda v, x: vae.apply(v, x, rngs=rngs), vae_vars, x)
  generated = jax.eval_shape(
      lambda v: vae.apply(v, 3, method="generate", rngs=rngs), vae_vars)
  logits = jax.eval_shape(lambda v, x: disc.apply(v, x), disc_vars, x)

  assert mu.shape == logvar.shape == (B, 512)
  assert out.mu.shape == out.logvar.shape == out.z.shape == (B, 512)
  assert out.reconstruction.shape == (B, 256, 256, 3)
  assert generated.shape == (3, 256, 256, 3)
  assert logits.shape == (B, 32, 32, 1)  # H/8 x W/8, one logit per patch.
  for a in (mu, logvar, out.z, out.reconstruction, logits):
    assert a.dtype == jnp.float32


@pytest.mark.parametrize("resolution,num_stages,bottom", [
    (32, 3, 4), (64, 6, 1), (1024, 6, 16)])
def test_shapes_at_other_resolutions(resolution, num_stages, bottom):
  config = get_config(resolution=resolution, num_stages=num_stages)
  vae, disc, vae_vars, disc_vars = abstract_variables(config)
  x = jax.ShapeDtypeStruct((B, resolution, resolution, 3), jnp.float32)
  features = jax.eval_shape(
      lambda v, x: vae.apply(v, x, method=lambda m, x: m.encoder(x)),
      vae_vars, x)
  out = jax.eval_shape(lambda v, x: vae.apply(v, x), vae_vars, x)
  logits = jax.eval_shape(lambda v, x: disc.apply(v, x), disc_vars, x)
  assert features.shape == (B, bottom, bottom, 64)
  assert out.reconstruction.shape == (B, resolution, resolution, 3)
  assert logits.shape == (B, resolution // 8, resolution // 8, 1)
  # The sampler's heads read the flattened bottom: 2 * (bottom^2 * 64 + 1) * d.
  counts = models.trainable_param_counts(vae_vars)
  assert counts["sampler"] == 2 * (bottom * bottom * 64 + 1) * 512


def test_residual_blocks_shapes_and_parameter_counts():
  x = jax.ShapeDtypeStruct((B, 16, 16, 128), jnp.float32)
  norm = layers.NormSpec(kind="affine")
  expected = {
      models.IdResBlock: ((B, 16, 16, 128), 312_448),
      models.ConvResBlock: ((B, 8, 8, 128), 329_216),
      models.ConvResBlockTrans: ((B, 32, 32, 128), 312_448),
  }
  for cls, (shape, n) in expected.items():
    block = cls(128, norm=norm)
    v = jax.eval_shape(block.init, jax.random.key(0), x)
    y = jax.eval_shape(block.apply, v, x)
    assert y.shape == shape, cls.__name__
    assert models.param_counts.count(v) == n, cls.__name__


def test_id_res_block_rejects_a_channel_mismatch():
  with pytest.raises(ValueError, match="Id-ResBlock"):
    models.IdResBlock(8).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_encode_rejects_images_of_the_wrong_size():
  config = get_config("test")
  vae, _, vae_vars, _ = abstract_variables(config)
  x = jax.ShapeDtypeStruct((B, 64, 64, 3), jnp.float32)
  with pytest.raises(ValueError, match="32, 32, 3"):
    jax.eval_shape(lambda v, x: vae.apply(v, x, method="encode"), vae_vars, x)


@pytest.mark.parametrize("norm", layers.NORMS)
def test_tiny_forward_pass(norm):
  config = get_config("test", norm=norm)
  config.discriminator.norm = norm
  vae = models.build_vae(config.model)
  disc = models.build_discriminator(config.discriminator)
  x = images(config)
  rngs = {"sample": jax.random.key(2), "dropout": jax.random.key(3)}
  # Op by op (no jit): the small per-operation compilations are shared by the
  # tests, which is faster overall than compiling each test's whole graph.
  variables = models.init_vae(vae, init_key(0))
  disc_vars = models.init_discriminator(disc, init_key(1), vae.image_shape)
  mu, logvar = vae.apply(variables, x, method="encode")
  out, state = vae.apply(variables, x, train=True, rngs=rngs,
                         mutable=["batch_stats"])
  logits, _ = disc.apply(disc_vars, out.reconstruction, train=True, rngs=rngs,
                         mutable=["batch_stats"])
  assert ("batch_stats" in variables) == (norm == "batch")
  assert mu.shape == logvar.shape == out.z.shape == (B, 16)
  assert out.reconstruction.shape == (B, 32, 32, 3)
  assert logits.shape == (B, 4, 4, 1)
  for a in (mu, logvar, out.z, out.reconstruction, logits):
    assert np.all(np.isfinite(a))
  assert not np.allclose(out.z, out.mu)  # Training samples (Eq. 6).
  if norm == "batch":
    # Training updated the running statistics.
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new))
  else:
    # Every normalization but 'batch' behaves the same in training and eval.
    np.testing.assert_allclose(out.mu, mu, rtol=1e-5, atol=1e-5)


def test_tanh_output_is_bounded_and_linear_is_not():
  config = get_config("test", decoder_output="tanh")
  vae = models.build_vae(config.model)
  variables = models.init_vae(vae, init_key(0))
  z = 30.0 * jax.random.normal(jax.random.key(1), (4, 16))
  x_tanh = vae.apply(variables, z, method="decode")
  assert np.all(np.abs(x_tanh) <= 1.0)
  linear = vae.clone(decoder_output="linear")
  x_lin = linear.apply(variables, z, method="decode")
  np.testing.assert_allclose(np.tanh(x_lin), x_tanh, rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(x_lin)) > 1.0


# ---- Parameter counts ---------------------------------------------------------


def test_reference_parameter_counts():
  _, _, vae_vars, disc_vars = abstract_variables(get_config("reference"))
  counts = models.trainable_param_counts(vae_vars, disc_vars)
  assert counts == {"encoder": 5_867_584, "sampler": 1_049_600,
                    "decoder": 4_040_556, "discriminator": 411_075}
  assert counts["encoder"] + counts["sampler"] + counts["decoder"] == 10_957_740
  # 'affine' keeps no statistics.
  assert models.non_trainable_count(vae_vars) == 0
  assert models.non_trainable_count(disc_vars) == 0


def test_paper_preset_has_the_same_trainable_parameters_plus_statistics():
  """'batch': same VAE counts; + running statistics = the reference's
  10,982,066 (VAE) Keras total. The paper preset does not normalize the
  logits (final_norm=False: 2 parameters and 2 statistics fewer); with the
  logits' norm put back, the discriminator gives the reference's 412,101."""
  _, _, vae_vars, disc_vars = abstract_variables(get_config())
  counts = models.trainable_param_counts(vae_vars, disc_vars)
  assert counts == {"encoder": 5_867_584, "sampler": 1_049_600,
                    "decoder": 4_040_556, "discriminator": 411_073}
  assert 10_957_740 + models.non_trainable_count(vae_vars) == 10_982_066
  assert 411_073 + models.non_trainable_count(disc_vars) == 412_097
  config = get_config()
  config.discriminator.final_norm = True
  _, _, _, disc_vars = abstract_variables(config)
  assert models.trainable_param_counts(
      discriminator_variables=disc_vars) == {"discriminator": 411_075}
  assert 411_075 + models.non_trainable_count(disc_vars) == 412_101


def test_final_norm_flag():
  config = get_config("reference")
  config.discriminator.final_norm = False
  _, _, _, disc_vars = abstract_variables(config)
  # The logits' 1-channel affine (scale + bias) is gone.
  assert models.trainable_param_counts(
      discriminator_variables=disc_vars) == {"discriminator": 411_073}


# ---- The sampler (Eq. 6) ----------------------------------------------------


def _reparametrize(mu, logvar, key=None, deterministic=False):
  rngs = {} if key is None else {"sample": key}
  return models.VAE(latent_dim=mu.shape[-1]).apply(
      {}, mu, logvar, deterministic=deterministic, method="reparametrize",
      rngs=rngs)


def test_sampler_same_key_same_z_different_keys_differ():
  mu = jnp.arange(8.0).reshape(2, 4)
  logvar = jnp.full((2, 4), -1.0)
  z1 = _reparametrize(mu, logvar, jax.random.key(0))
  z2 = _reparametrize(mu, logvar, jax.random.key(0))
  z3 = _reparametrize(mu, logvar, jax.random.key(1))
  np.testing.assert_array_equal(z1, z2)
  assert np.all(z1 != z3)
  assert np.all(z1 != mu)


def test_reparametrize_draws_each_example_from_its_own_key():
  mu = jnp.arange(12.0).reshape(3, 4)
  logvar = jnp.linspace(-2.0, 1.0, 12).reshape(3, 4)
  keys = jax.random.split(jax.random.key(7), 3)
  z = models.reparametrize(mu, logvar, keys)
  for i in range(3):  # The same sample alone as in the batch.
    np.testing.assert_allclose(
        z[i], models.reparametrize(mu[i:i + 1], logvar[i:i + 1],
                                   keys[i:i + 1])[0], rtol=1e-6)
  eps = jax.random.normal(keys[1], (4,))
  np.testing.assert_allclose(z[1], mu[1] + jnp.exp(logvar[1] / 2) * eps,
                             rtol=1e-6)


def test_sampler_deterministic_path_returns_mu_without_a_key():
  mu = jnp.arange(8.0).reshape(2, 4)
  z = _reparametrize(mu, jnp.zeros_like(mu), deterministic=True)
  np.testing.assert_array_equal(z, mu)


def test_sampler_moments_match_mu_and_sigma():
  n, d = 20_000, 6
  mu_1 = jnp.array([-3.0, -1.0, 0.0, 0.5, 2.0, 10.0])
  logvar_1 = jnp.array([-4.0, -1.0, 0.0, 0.5, 1.0, 2.0])
  mu = jnp.broadcast_to(mu_1, (n, d))
  logvar = jnp.broadcast_to(logvar_1, (n, d))
  z = np.asarray(_reparametrize(mu, logvar, jax.random.key(42)))
  sigma = np.exp(np.asarray(logvar_1) / 2)
  # 5 standard errors: a wrong sigma (e.g. exp(logvar)) fails by far.
  np.testing.assert_array_less(np.abs(z.mean(0) - mu_1), 5 * sigma / np.sqrt(n))
  np.testing.assert_array_less(np.abs(z.std(0) - sigma),
                               5 * sigma / np.sqrt(2 * n))


def test_vae_call_samples_in_training_and_uses_mu_in_evaluation():
  config = get_config("test", norm="affine")
  vae = models.build_vae(config.model)
  variables = models.init_vae(vae, init_key(0))
  x = images(config)
  evaluation = vae.apply(variables, x)  # No 'sample' key needed.
  np.testing.assert_array_equal(evaluation.z, evaluation.mu)
  a = vae.apply(variables, x, train=True, rngs={"sample": jax.random.key(1)})
  b = vae.apply(variables, x, train=True, rngs={"sample": jax.random.key(1)})
  c = vae.apply(variables, x, train=True, rngs={"sample": jax.random.key(2)})
  np.testing.assert_array_equal(a.z, b.z)
  assert not np.allclose(a.z, c.z)
  np.testing.assert_allclose(a.mu, evaluation.mu, rtol=1e-6)
  # The reconstruction is decoded from the returned z.
  np.testing.assert_allclose(
      a.reconstruction, vae.apply(variables, a.z, method="decode"),
      rtol=1e-5, atol=1e-5)


# ---- Synchronized BatchNorm ---------------------------------------------------


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def test_batch_norm_under_pmap_matches_one_device():
  n_dev = jax.local_device_count()
  assert n_dev == 8
  config = _batch_norm_discriminator_config(norm="batch")
  batch = 2 * n_dev
  x = images(config, batch_size=batch, seed=3)

  def run(vae, disc, vae_vars, disc_vars, x):
    out, vae_state = vae.apply(vae_vars, x, train=True, deterministic=True,
                               mutable=["batch_stats"])
    logits, disc_state = disc.apply(disc_vars, x, train=True,
                                    mutable=["batch_stats"])
    return out, logits, vae_state, disc_state

  vae1 = models.build_vae(config.model)
  disc1 = models.build_discriminator(config.discriminator)
  vae_vars = models.init_vae(vae1, init_key(0))
  disc_vars = models.init_discriminator(disc1, init_key(1),
                                        vae1.image_shape)
  single = jax.jit(functools.partial(run, vae1, disc1))(vae_vars, disc_vars, x)

  vae8 = models.build_vae(config.model, axis_name="batch")
  disc8 = models.build_discriminator(config.discriminator, axis_name="batch")
  mapped = jax.pmap(functools.partial(run, vae8, disc8), axis_name="batch",
                    in_axes=(None, None, 0))(
                        vae_vars, disc_vars, x.reshape(n_dev, 2, *x.shape[1:]))

  out1, logits1, vae_state1, disc_state1 = single
  out8, logits8, vae_state8, disc_state8 = mapped
  merge = lambda a: np.asarray(a).reshape(batch, *a.shape[2:])
  tol = dict(rtol=2e-4, atol=2e-4)
  for a, b in zip(out8, out1):
    np.testing.assert_allclose(merge(a), b, **tol)
  np.testing.assert_allclose(merge(logits8), logits1, **tol)
  # Every device holds the same updated statistics, equal to one device's.
  for state8, state1 in ((vae_state8, vae_state1), (disc_state8, disc_state1)):
    for d in range(n_dev):
      _assert_trees_close(jax.tree.map(lambda a: a[d], state8), state1, **tol)
  # The statistics did move (so the comparison above is not vacuous).
  assert not np.allclose(
      jax.tree.leaves(vae_state1)[0], jax.tree.leaves(vae_vars["batch_stats"])[0])


def test_batch_norm_without_axis_name_differs_under_pmap():
  """Control: unsynchronized per-device statistics give different logits."""
  config = _batch_norm_discriminator_config()
  x = images(config, batch_size=16, seed=3)
  disc = models.build_discriminator(config.discriminator)
  disc_vars = models.init_discriminator(disc, init_key(1), (32, 32, 3))
  run = lambda v, x: disc.apply(v, x, train=True, mutable=["batch_stats"])[0]
  single = run(disc_vars, x)
  mapped = jax.pmap(run, in_axes=(None, 0))(disc_vars, x.reshape(8, 2, 32, 32, 3))
  assert not np.allclose(np.asarray(mapped).reshape(single.shape), single,
                         rtol=2e-4, atol=2e-4)


# ---- bfloat16 compute ---------------------------------------------------------


def test_bfloat16_compute_float32_params_close_outputs():
  config = get_config("test")
  x = images(config, seed=5)
  vae32 = models.build_vae(config.model)
  disc32 = models.build_discriminator(config.discriminator)
  config.model.dtype = "bfloat16"
  config.discriminator.dtype = "bfloat16"
  vae16 = models.build_vae(config.model)
  disc16 = models.build_discriminator(config.discriminator)

  variables = jax.jit(functools.partial(models.init_vae, vae16))(init_key(0))
  disc_vars = jax.jit(functools.partial(
      models.init_discriminator, disc16, image_shape=vae16.image_shape))(
          init_key(1))
  for leaf in jax.tree.leaves((variables, disc_vars)):
    assert leaf.dtype == jnp.float32

  @jax.jit  # One compilation instead of one per operation.
  def run(variables, disc_vars, x):
    return (vae16.apply(variables, x), vae32.apply(variables, x),
            disc16.apply(disc_vars, x), disc32.apply(disc_vars, x))

  out16, out32, logits16, logits32 = run(variables, disc_vars, x)
  # The bfloat16 model really computes in bfloat16 (it is not bit-identical).
  assert not np.array_equal(out16.reconstruction, out32.reconstruction)
  for a16, a32 in ((out16.mu, out32.mu), (out16.logvar, out32.logvar),
                   (out16.reconstruction, out32.reconstruction),
                   (logits16, logits32)):
    assert a16.dtype == jnp.float32  # Outputs are returned in float32.
    assert np.all(np.isfinite(a16))
    rel = np.linalg.norm(a16 - a32) / np.linalg.norm(a32)
    assert rel < 0.05, rel


# ---- Normalization factory and config validation ------------------------------


@pytest.mark.parametrize("channels,groups,expected", [
    (128, 32, 32), (3, 32, 3), (48, 32, 24), (16, 4, 4), (5, 4, 1), (7, 1, 1)])
def test_group_count(channels, groups, expected):
  assert layers.group_count(channels, groups) == expected


def test_norm_spec_rejects_unknown_kind():
  with pytest.raises(ValueError, match="norm 'layer'"):
    layers.NormSpec(kind="layer")


@pytest.mark.parametrize("field,value,message", [
    ("resolution", 48, "power of two"),
    ("resolution", 16, "power of two"),
    ("resolution", 2048, "power of two"),
    ("num_stages", 6, "num_stages <= 5"),  # 32 / 2**6 < 1.
    ("latent_dim", 0, "latent_dim=0 must be a positive integer"),
    ("encoder_blocks", -1, "encoder_blocks=-1"),
    ("norm", "layer", "model.norm='layer'"),
    ("input_norm", "batch", "model.input_norm"),
    ("activation", "relu6", "model.activation"),
    ("decoder_output", "sigmoid", "model.decoder_output"),
    ("dtype", "float16", "model.dtype"),
    ("batch_norm_momentum", 1.0, "batch_norm_momentum"),
])
def test_invalid_model_config_raises(field, value, message):
  config = get_config("test")
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    models.build_vae(config.model)


@pytest.mark.parametrize("field,value,message", [
    ("features", (16, 16, 16, 8, 8, 2), "must end with 1"),
    ("strides", (2, 2), "same length"),
    ("norm", "layer", "discriminator.norm"),
    ("dropout", 1.0, "discriminator.dropout"),
    ("leaky_relu_slope", -0.1, "leaky_relu_slope"),
    ("dtype", "float16", "discriminator.dtype"),
])
def test_invalid_discriminator_config_raises(field, value, message):
  config = get_config("test")
  config.discriminator[field] = value
  with pytest.raises(ValueError, match=message):
    models.build_discriminator(config.discriminator)


def test_discriminator_dropout_only_in_training():
  config = get_config("test")
  config.discriminator.norm = "affine"
  disc = models.build_discriminator(config.discriminator)
  disc_vars = models.init_discriminator(disc, init_key(0), (32, 32, 3))
  x = images(config)
  evaluation = disc.apply(disc_vars, x)  # No 'dropout' key needed.
  np.testing.assert_array_equal(evaluation, disc.apply(disc_vars, x))
  a = disc.apply(disc_vars, x, train=True, rngs={"dropout": jax.random.key(1)})
  b = disc.apply(disc_vars, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)
  assert not np.allclose(a, evaluation)


def test_batch_norm_under_shard_map_matches_one_device():
  """The same synchronization through `jax.shard_map` (newer JAX's pmap)."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  config = _batch_norm_discriminator_config()
  x = images(config, batch_size=16, seed=4)
  disc1 = models.build_discriminator(config.discriminator)
  disc8 = models.build_discriminator(config.discriminator, axis_name="batch")
  disc_vars = models.init_discriminator(disc1, init_key(1), (32, 32, 3))
  run = lambda disc: (
      lambda v, x: disc.apply(v, x, train=True, mutable=["batch_stats"]))
  logits1, state1 = run(disc1)(disc_vars, x)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  logits8, state8 = jax.jit(jax.shard_map(
      run(disc8), mesh=mesh, in_specs=(P(), P("batch")),
      out_specs=(P("batch"), P())))(disc_vars, x)
  np.testing.assert_allclose(logits8, logits1, rtol=2e-4, atol=2e-4)
  _assert_trees_close(state8, state1, rtol=2e-4, atol=2e-4)
