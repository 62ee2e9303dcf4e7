r"""Writes the paper's figures for a run into WORKDIR/figures/.

  python launch/figures.py --workdir=workdirs/demo
  python launch/figures.py --workdir=DIR --traversal_latents=0,2 \
      --interpolation=slerp --histogram_latents=auto

traversal.png (Fig. 4), interpolation.png (Fig. 5), latent_histograms.png
(Fig. 6), bimodality.png (most and least bimodal latents),
reconstructions.png and prior_samples.png; see mixvae/evaluation/figures.py.
Runs on one host.
"""

import logging as py_logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

import process_setup

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's directory.")
flags.DEFINE_string("step", None, "Checkpoint step, or 'best' (by the "
                    "run's config.eval.best_metric); default: the latest.")
flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw parameters.")
flags.DEFINE_string("out_dir", None, "Default: WORKDIR/figures.")
flags.DEFINE_integer("traversal_image", 0, "Test image of Fig. 4.")
flags.DEFINE_list("traversal_latents", ["0", "2"], "The two latents i, j of "
                  "Fig. 4 (the paper's z_0 and z_2).")
flags.DEFINE_list("traversal_steps", ["-20", "-10", "0", "10", "20"],
                  "Offsets from mu in units of the image's own sigma.")
flags.DEFINE_integer("interpolation_pairs", 4, "Rows of Fig. 5.")
flags.DEFINE_integer("interpolation_steps", 6, "Columns of Fig. 5 "
                     "(alpha = k / (n - 1)).")
flags.DEFINE_enum("interpolation", "linear", ["linear", "slerp"],
                  "Fig. 5: linear (the paper) or spherical.")
flags.DEFINE_integer("histogram_images", 400, "Test images of Fig. 6.")
flags.DEFINE_list("histogram_latents", ["0", "1"], "The two latents of "
                  "Fig. 6, or 'auto' for the two most bimodal.")
flags.DEFINE_integer("bimodality_panels", 4, "Most / least bimodal latents "
                     "shown, each.")
flags.DEFINE_integer("num_samples", 16, "Prior samples.")
flags.DEFINE_float("temperature", 1.0, "Prior-sample temperature.")
flags.DEFINE_integer("seed", 0, "Pairs of Fig. 5 and prior samples.")
flags.DEFINE_integer("dpi", 100, "Pixels per inch of the PNG files.")
config_flags.DEFINE_config_file(
    "config", None, "Only for a run without WORKDIR/config.json.",
    lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  py_logging.getLogger("absl").setLevel(py_logging.ERROR)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from mixvae.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import figures  # pylint: disable=g-import-not-at-top
  hist = FLAGS.histogram_latents
  options = figures.FigureOptions(
      traversal_image=FLAGS.traversal_image,
      traversal_latents=tuple(int(v) for v in FLAGS.traversal_latents),
      traversal_steps=tuple(float(v) for v in FLAGS.traversal_steps),
      interpolation_pairs=FLAGS.interpolation_pairs,
      interpolation_steps=FLAGS.interpolation_steps,
      interpolation=FLAGS.interpolation,
      histogram_images=FLAGS.histogram_images,
      histogram_latents=None if hist == ["auto"] else tuple(
          int(v) for v in hist),
      bimodality_panels=FLAGS.bimodality_panels,
      num_samples=FLAGS.num_samples, temperature=FLAGS.temperature,
      seed=FLAGS.seed, dpi=FLAGS.dpi)
  if len(options.traversal_latents) != 2 or (
      options.histogram_latents is not None
      and len(options.histogram_latents) != 2):
    raise app.UsageError("--traversal_latents and --histogram_latents take "
                         "two latent indices")
  run = evaluate.load_run(FLAGS.workdir, step=FLAGS.step,
                          params=FLAGS.params, config=FLAGS.config)
  paths = figures.write_figures(run, FLAGS.out_dir, options)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  process_setup.run(main)
