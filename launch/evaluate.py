r"""Evaluates a run's checkpoint over the whole test split.

  python launch/evaluate.py --workdir=workdirs/demo
  python launch/evaluate.py --workdir=DIR --step=1500 --params=raw \
      --inception_weights=inception_fid.npz --lpips_weights=lpips_vgg.npz \
      --temperatures=1.0,0.8

Every test example is seen exactly once over all hosts (on a multi-host
slice run the same command on every host with --multihost). Writes
`DIR/eval/<step>.json` (`<step>_raw.json` for --params=raw) and the same
scalars to TensorBoard under `DIR/eval`:
  reconstruction  L1 (model range [-1, 1]), PSNR and SSIM (dm-pix, [0, 1]),
                  LPIPS (VGG16 v0.1; skipped with a message when no
                  --lpips_weights, see launch/convert_lpips.py);
  fid, kid        of the reconstructions and of prior samples (one per test
                  image and temperature) against the test images, from the
                  Inception-v3 pool features; skipped with a message when
                  no --inception_weights (see launch/convert_inception.py);
  latents         active units, KL per dimension, the aggregate posterior
                  against N(0, 1), the individual sigmas, bimodal latents.
See mixvae/evaluation/ for every definition.
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import process_setup

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's directory.")
flags.DEFINE_string("step", None, "Checkpoint step, or 'best' (by the "
                    "run's config.eval.best_metric); default: the latest.")
flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw generator "
                  "parameters.")
flags.DEFINE_string("inception_weights", None, "The FID Inception .npz "
                    "(default $MIXVAE_INCEPTION_WEIGHTS); none: no FID/KID.")
flags.DEFINE_string("lpips_weights", None, "The LPIPS-VGG16 .npz (default "
                    "$MIXVAE_LPIPS_WEIGHTS); none: no LPIPS.")
flags.DEFINE_list("temperatures", ["1.0"], "Prior-sample temperatures for "
                  "FID/KID.")
flags.DEFINE_integer("eval_batch_size", None, "Global eval batch (default: "
                     "the run's config.data.eval_batch_size or batch_size).")
config_flags.DEFINE_config_file(
    "config", None, "Only for a run without WORKDIR/config.json: its config "
    "file (e.g. configs/demo.py).", lock_config=True)
process_setup.define_multihost_flags()
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  process_setup.quiet_library_logs()
  process_setup.initialize_distributed()  # Before anything touches JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import results  # pylint: disable=g-import-not-at-top
  run = evaluate.load_run(FLAGS.workdir, step=FLAGS.step,
                          params=FLAGS.params, config=FLAGS.config)
  logging.info("Evaluating %s at step %d (%s parameters) on %d processes, "
               "%d devices", FLAGS.workdir, run.step, run.params_kind,
               jax.process_count(), jax.device_count())
  result = evaluate.evaluate(
      run, inception_weights=FLAGS.inception_weights,
      lpips_weights=FLAGS.lpips_weights,
      temperatures=[float(t) for t in FLAGS.temperatures],
      batch_size=FLAGS.eval_batch_size)
  path = results.write_results(result)
  if jax.process_index() == 0:
    printed = {k: v for k, v in result.items() if k != "latents"}
    printed["latents"] = {k: v for k, v in result["latents"].items()
                          if k != "per_dim"}
    print(json.dumps(printed, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
  process_setup.run(main)
