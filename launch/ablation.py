r"""Trains and evaluates the ablation grid over seeds, then one table.

  python launch/ablation.py --config=configs/patches.py --seeds=3 --workdir=DIR
  python launch/ablation.py --config=configs/patches.py --seeds=3 \
      --workdir=DIR --config.num_train_steps=20000   # Bigger, on a GPU.

Each (run, seed) of `mixvae.evaluation.ablation.RUNS` x `--seeds` is an
ordinary mixvae run in DIR/<run>_seed<S>: `launch/main.py
--config=FILE:<run>,seed=<S>` with the `--config.*` overrides given here,
evaluated by the training loop at its last step. Running the command again
skips finished runs and resumes interrupted ones. The runs share a JAX
compilation cache in DIR/jax_cache (the seeds of a run compile once) and the
test images' Inception features in DIR/feature_cache (computed once). With
--jobs=K, K runs train at once, each logging to DIR/<run>_seed<S>.log (on a
2-core CPU two runs at once finish the grid in ~0.6 of the time).

Writes DIR/ablation.md and DIR/ablation.json (per metric mean +- std over
seeds, Welch's t-test against the paper's row, a verdict per claim), and,
with --figures, each run's first seed's figures (launch/figures.py) side by
side in DIR/compare (launch/compare.py).
"""

from concurrent import futures
import contextlib
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import process_setup
from mixvae import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A config file whose variants are the runs' names "
    "(configs/patches.py); --config.* overrides apply to every run.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "The grid's directory.")
flags.DEFINE_integer("seeds", 3, "Seeds per run: 0 .. N-1.")
flags.DEFINE_list("runs", None, "A subset of the runs (default: all).")
flags.DEFINE_integer("jobs", 1, "Runs trained at once.")
flags.DEFINE_bool("figures", True, "Figures of each run side by side.")
flags.mark_flags_as_required(["config", "workdir"])

LAUNCH = os.path.dirname(os.path.abspath(__file__))


def _run(script: str, args: list[str], env: dict[str, str],
         log: str | None = None) -> None:
  """Runs launch/<script>, its output to `log` (appended) or inherited."""
  command = [sys.executable, os.path.join(LAUNCH, script), *args]
  logging.info("Running %s%s", " ".join(command), f" > {log}" if log else "")
  with open(log, "ab") if log else contextlib.nullcontext() as out:
    returncode = subprocess.run(
        command, env=env, check=False, stdout=out,
        stderr=out and subprocess.STDOUT).returncode
  if returncode:
    raise errors.UserError(
        f"{script} failed (its log: {log or 'above'}): {' '.join(command)}; "
        "fix it and run this command again (finished runs are kept)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mixvae.evaluation import ablation  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import results as results_lib  # pylint: disable=g-import-not-at-top
  names = [name for name, _ in ablation.RUNS]
  runs = FLAGS.runs or names
  unknown = sorted(set(runs) - set(names))
  if unknown or FLAGS.seeds < 1 or FLAGS.jobs < 1:
    raise app.UsageError(f"--runs takes some of {names} (got {unknown}), "
                         f"--seeds >= 1 (got {FLAGS.seeds}) and --jobs >= 1 "
                         f"(got {FLAGS.jobs})")
  path, _, arg = config_flags.get_config_filename(
      FLAGS["config"]).partition(":")
  overrides = [f"--config.{k}={v}" for k, v in
               config_flags.get_override_values(FLAGS["config"]).items()]
  if not FLAGS.config.eval.feature_cache:
    overrides.append("--config.eval.feature_cache=" + os.path.join(
        os.path.abspath(FLAGS.workdir), "feature_cache"))
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(os.path.abspath(FLAGS.workdir), "jax_cache"))
  last = FLAGS.config.num_train_steps
  start = time.time()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  grid = {(run, seed): os.path.join(FLAGS.workdir, f"{run}_seed{seed}")
          for run in runs for seed in range(FLAGS.seeds)}
  with futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
    pending = [pool.submit(
        _run, "main.py",
        [f"--config={path}:{','.join(filter(None, (run, arg)))},seed={seed}",
         f"--workdir={workdir}", *overrides], env,
        f"{workdir}.log" if FLAGS.jobs > 1 else None)
               for (run, seed), workdir in grid.items()
               if not results_lib.results_path(workdir, last).exists()]
    try:
      for future in futures.as_completed(pending):
        future.result()  # The first failure stops the runs not yet started.
    finally:
      pool.shutdown(cancel_futures=True)
  results = {run: [] for run in runs}
  for (run, _), workdir in grid.items():
    results[run].append(
        json.loads(results_lib.results_path(workdir, last).read_text()))
  summary = ablation.summarize(results)
  summary["command"] = " ".join(["python", "launch/ablation.py", *sys.argv[1:]])
  table = ablation.markdown(summary)
  with open(os.path.join(FLAGS.workdir, "ablation.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(FLAGS.workdir, "ablation.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  if FLAGS.figures:
    firsts = [os.path.join(FLAGS.workdir, f"{run}_seed0") for run in runs]
    for workdir in firsts:
      _run("figures.py", [f"--workdir={workdir}"], env)
    _run("compare.py", [*firsts, "--output_dir=" +
                        os.path.join(FLAGS.workdir, "compare")], env)
  logging.info("Ablation of %d runs x %d seeds: %.1f min in this command.",
               len(runs), FLAGS.seeds, (time.time() - start) / 60)


if __name__ == "__main__":
  process_setup.run(main)
