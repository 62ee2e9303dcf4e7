r"""Compares evaluated runs: one markdown table, figures side by side.

  python launch/compare.py workdirs/mix workdirs/vae workdirs/beta_vae \
      --output_dir=workdirs/compare

Reads each run's eval/<step>.json (launch/evaluate.py; the latest unless
--step) and prints one markdown table (also written to
OUTPUT_DIR/comparison.md); joins each figure that every run has in
WORKDIR/figures/ (launch/figures.py) into OUTPUT_DIR/<figure>.png.
"""

import os

from absl import app
from absl import flags

import process_setup

FLAGS = flags.FLAGS
flags.DEFINE_integer("step", None, "Evaluation step (default: each run's "
                     "latest evaluated step).")
flags.DEFINE_enum("params", "ema", ["ema", "raw"], "Which evaluations.")
flags.DEFINE_string("output_dir", None, "Default: a 'compare' folder beside "
                    "the first run.")
flags.DEFINE_bool("figures", True, "Join the runs' figures side by side.")


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("give the run directories: compare.py DIR1 DIR2 ...")
  from mixvae.evaluation import compare  # pylint: disable=g-import-not-at-top
  try:
    entries = compare.load(workdirs, step=FLAGS.step, params=FLAGS.params)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  table = compare.markdown_table(entries)
  print(table)
  out = FLAGS.output_dir or os.path.join(
      os.path.dirname(os.path.normpath(workdirs[0])), "compare")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "comparison.md"), "w") as f:
    f.write(table + "\n")
  print(f"\nwrote {os.path.join(out, 'comparison.md')}")
  if FLAGS.figures:
    for name, path in compare.side_by_side(entries, out).items():
      print(f"{name}: {path}")


if __name__ == "__main__":
  process_setup.run(main)
