r"""Prints the model's output shapes and trainable parameter counts, part by part.

Nothing is allocated: shapes come from `jax.eval_shape`, so even 1024x1024
models are inspected in seconds on a CPU.

Usage:
  python launch/inspect_model.py --config=configs/celebahq.py:reference
  python launch/inspect_model.py --config=configs/celebahq.py \
      --config.model.latent_dim=64 --config.model.norm=group

The last line is machine-readable (`parse_counts_line` reads it back); for
`:reference` it is (one line):
  trainable parameters: encoder=5867584 sampler=1049600 decoder=4040556
  discriminator=411075
"""

from __future__ import annotations

import re
import sys
from typing import Any, Sequence

from absl import app
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from mixvae import models

_COUNTS_PREFIX = "trainable parameters:"


def _shape(shape: Sequence[int]) -> str:
  """'[B, 4, 4, 64]' for (batch, 4, 4, 64)."""
  return "[" + ", ".join(["B", *map(str, shape[1:])]) + "]"


def summarize(config: ml_collections.ConfigDict, batch_size: int = 2
              ) -> list[str]:
  """The summary's lines for `config` (its `model` and `discriminator`).

  Args:
    config: a full config (e.g. `configs/celebahq.py`'s `get_config`).
    batch_size: the batch of the abstract inputs (shown as B).

  Returns:
    Printable lines; the last is `trainable parameters: encoder=N ...`.
  """
  vae, disc, vae_vars, disc_vars = models.abstract_networks(config,
                                                            batch_size)
  x = jax.ShapeDtypeStruct((batch_size, *vae.image_shape), jnp.float32)
  rngs = {models.SAMPLE_RNG: jax.random.key(0)}

  def run(fn):
    return jax.eval_shape(
        lambda v, x: vae.apply(v, x, method=fn, rngs=rngs), vae_vars, x)

  features = run(lambda m, x: m.encoder(x))
  out = run(lambda m, x: m(x))
  logits = jax.eval_shape(lambda v, x: disc.apply(v, x), disc_vars, x)
  counts = models.trainable_param_counts(vae_vars, disc_vars)
  m = config.model
  rows = [
      ("encoder", f"features {_shape(features.shape)} {features.dtype}",
       counts["encoder"]),
      ("sampler", f"mu, logvar, z {_shape(out.mu.shape)} {out.mu.dtype}",
       counts["sampler"]),
      ("decoder", f"image {_shape(out.reconstruction.shape)} "
       f"{out.reconstruction.dtype}", counts["decoder"]),
      ("vae (total)", "", sum(counts[p] for p in models.param_counts.VAE_PARTS)),
      ("discriminator", f"logits {_shape(logits.shape)} {logits.dtype}",
       counts["discriminator"]),
  ]
  lines = [
      f"VAE: {m.resolution}x{m.resolution}x{m.channels} images, latent "
      f"{m.latent_dim}, width {m.width}, {m.num_stages} stages, norm "
      f"{m.norm!r}, compute {m.dtype}",
      f"discriminator: features {tuple(config.discriminator.features)}, "
      f"strides {tuple(config.discriminator.strides)}, norm "
      f"{config.discriminator.norm!r}, compute {config.discriminator.dtype}",
      "",
      f"{'part':<15}{'output':<40}{'trainable params':>18}",
  ]
  lines += [f"{name:<15}{desc:<40}{n:>18,}" for name, desc, n in rows]
  lines.append(
      f"non-trainable (running statistics): vae="
      f"{models.non_trainable_count(vae_vars):,} discriminator="
      f"{models.non_trainable_count(disc_vars):,}")
  lines.append(counts_line(counts))
  return lines


def counts_line(counts: dict[str, int]) -> str:
  """`trainable parameters: encoder=N sampler=N decoder=N discriminator=N`."""
  return _COUNTS_PREFIX + "".join(f" {k}={v}" for k, v in counts.items())


def parse_counts_line(text: str) -> dict[str, int]:
  """Reads the counts back from the tool's output (its last such line)."""
  lines = [l for l in text.splitlines() if l.startswith(_COUNTS_PREFIX)]
  if not lines:
    raise ValueError(f"no line starting with {_COUNTS_PREFIX!r} in the output")
  return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  logging.info("inspecting config:\n%s", config)
  try:
    lines = summarize(config)
  except ValueError as e:  # A config problem: say what to fix, no traceback.
    sys.exit(f"inspect_model: invalid config: {e}")
  print("\n".join(lines), flush=True)


def _define_flags() -> Any:
  # Defined only when run as a script, so tests can import this module next to
  # other launch scripts that define a --config flag too.
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/celebahq.py:reference.",
      lock_config=True)
  flags.mark_flags_as_required(["config"])
  return config


if __name__ == "__main__":
  _CONFIG = _define_flags()
  app.run(main)
