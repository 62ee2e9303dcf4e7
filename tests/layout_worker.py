"""Trains the `test` config (float64 by default) on one device layout and
saves the run.

  python tests/layout_worker.py OUT.npz --steps=4 [--dtype=float32]
      [--processes=2 --process_id=I --port=P]
      [--bug=device_noise|unsync_batchnorm]

The device count comes from XLA_FLAGS (simulated CPU devices). Process 0
writes OUT.npz: every leaf of the initial and final states, under
'initial/<path>' and 'final/<path>', and 'metrics/<name>' [steps] float64.
`--bug` plants a layout bug (for measuring what the layout test catches):
noise keyed by the example's position on its device, or BatchNorm statistics
of each device alone.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from configs import celebahq
from mixvae import data as data_lib
from mixvae import models
from mixvae import replication
from mixvae import train_step
from mixvae import trainer as trainer_lib


def _flat(tree, prefix):
  return {f"{prefix}/{jax.tree_util.keystr(path)}": np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--dtype", default="float64")
  parser.add_argument("--bug", choices=("device_noise", "unsync_batchnorm"))
  args = parser.parse_args()
  if args.processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{args.port}", args.processes,
                               args.process_id)
  jax.config.update("jax_enable_x64", args.dtype == "float64")

  config = celebahq.get_config("test")
  config.model.dtype = config.discriminator.dtype = args.dtype
  trainer = trainer_lib.Trainer(config)
  if args.bug == "device_noise":
    keys = train_step.example_keys
    train_step.example_keys = lambda key, stream, index: keys(
        key, stream, jnp.arange(index.shape[0]))
  elif args.bug == "unsync_batchnorm":
    trainer.vae = models.build_vae(config.model, axis_name=None)
    trainer.discriminator = models.build_discriminator(config.discriminator,
                                                       axis_name=None)
  initial = trainer.init_state()
  state = trainer.replicate(initial)
  batches = data_lib.TrainIterator(config)
  step = trainer.pmap_step()
  metrics = []
  for _ in range(args.steps):
    state, m = step(state, next(batches))
    metrics.append(replication.unreplicate(m))
  final = replication.unreplicate(state)
  if jax.process_index() == 0:
    names = [k for k in metrics[0] if k.startswith("loss/")]
    np.savez(args.out, **_flat(initial, "initial"), **_flat(final, "final"),
             **{f"metrics/{k}": np.array([m[k] for m in metrics])
                for k in names})
  batches.close()


if __name__ == "__main__":
  main()
