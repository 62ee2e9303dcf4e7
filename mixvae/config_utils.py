"""Run configs: parsing `--config=file.py:arg` arguments, and validation.

Config files follow the `get_config(arg)` convention: the text after the
colon is `arg`, e.g. `configs/celebahq.py:reference` or
`configs/celebahq.py:beta_vae,beta=4`.
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from mixvae import errors


# Fields added after runs were first saved, with the behaviour those runs
# had: a saved config.json without them is read with these values.
ADDED_FIELDS = {"data.resize": "antialias", "optimizer.eps_form": "optax",
                "eval_every_steps": 0, "eval.num_examples": 0,
                "eval.inception_weights": "", "eval.lpips_weights": "",
                "eval.best_metric": "", "data.num_test": 0,
                "eval.feature_cache": ""}


def with_added_fields(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config (nested dicts, as in config.json), with `ADDED_FIELDS`
  filled in where missing."""
  for key, value in ADDED_FIELDS.items():
    *blocks, name = key.split(".")
    node = saved
    for block in blocks:
      node = node.setdefault(block, {})
    node.setdefault(name, value)
  return saved


def parse_arg(arg: str | None, *, variants: tuple[str, ...] = (),
              **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config argument such as `"beta_vae,beta=4"`.

  Bare words select variants (each must be one of `variants`); `key=value`
  pairs override `defaults`, with the value cast to the default's type.

  Args:
    arg: the text after `:` in `--config=file.py:arg`, or None.
    variants: the names a bare word may take.
    **defaults: every accepted `key=value` and its default value.

  Returns:
    A locked ConfigDict with a `variant` field (the bare word, or `''`) and one
    field per default.

  Raises:
    errors.ConfigError: for an unknown variant, an unknown key, or a value
      that does not parse as the default's type.
  """
  result = dict(defaults, variant="")
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" not in part:
      if part not in variants:
        raise errors.ConfigError(
            f"unknown config variant {part!r}; choose one of {sorted(variants)}"
            " (e.g. --config=configs/celebahq.py:reference)")
      if result["variant"]:
        raise errors.ConfigError(
            f"config variants {result['variant']!r} and {part!r} were both "
            "given; pass at most one")
      result["variant"] = part
      continue
    key, value = (s.strip() for s in part.split("=", 1))
    if key not in defaults:
      raise errors.ConfigError(
          f"unknown config argument {key!r} in {arg!r}; accepted: "
          f"{sorted(defaults)}")
    result[key] = _cast(key, value, defaults[key])
  return ml_collections.ConfigDict(result)


def _cast(key: str, value: str, default: Any) -> Any:
  if isinstance(default, str):
    return value
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError) as e:
    raise errors.ConfigError(f"config argument {key}={value!r} is not a "
                             f"valid {type(default).__name__}") from e
  if isinstance(default, bool) or default is None:
    return parsed
  if isinstance(default, float) and isinstance(parsed, int):
    parsed = float(parsed)
  if not isinstance(parsed, type(default)):
    raise errors.ConfigError(f"config argument {key}={value!r} should be a "
                             f"{type(default).__name__}")
  return parsed


def require(ok: bool, message: str) -> None:
  """Raises `errors.ConfigError(message)` unless `ok`."""
  if not ok:
    raise errors.ConfigError(message)


def _one_of(config, field: str, allowed) -> None:
  value = config[field.rsplit(".", 1)[-1]]
  require(value in allowed, f"config.{field}={value!r}: use one of "
          f"{list(allowed)}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a run config once, before anything is built.

  The network blocks are checked by `models.validate_model_config` and
  `models.validate_discriminator_config`, the rest here.

  Raises:
    errors.ConfigError: naming the field, its value and what is allowed.
  """
  from mixvae import losses  # pylint: disable=g-import-not-at-top
  from mixvae import models  # pylint: disable=g-import-not-at-top
  from mixvae.data import images  # pylint: disable=g-import-not-at-top
  from mixvae.evaluation import results  # pylint: disable=g-import-not-at-top
  models.validate_model_config(config.model)
  models.validate_discriminator_config(config.discriminator)
  for field in ("batch_size", "num_train_steps", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"):
    require(config[field] > 0, f"config.{field}={config[field]} must be > 0")
  for field in ("image_every_steps", "profile_steps", "num_grid_images",
                "eval_every_steps"):
    require(config[field] >= 0, f"config.{field}={config[field]} must be >= 0")
  require(config.eval.num_examples >= 0, "config.eval.num_examples="
          f"{config.eval.num_examples} must be >= 0 (0: all)")
  _one_of(config.eval, "eval.best_metric", ("", *results.BEST_METRICS))
  require(not config.eval.best_metric or config.eval_every_steps > 0,
          f"config.eval.best_metric={config.eval.best_metric!r} needs "
          "config.eval_every_steps > 0")
  lc, oc, tc = config.loss, config.optimizer, config.training
  _one_of(lc, "loss.family", ("mixture", "standard"))
  _one_of(lc, "loss.variance_source", losses.VARIANCE_SOURCES)
  _one_of(lc, "loss.batch_reduction", losses.BATCH_REDUCTIONS)
  _one_of(lc, "loss.pixel_reduction", losses.PIXEL_REDUCTIONS)
  for field in ("beta_kl_global", "beta_kl_individual", "beta_reconstruction",
                "beta_adversarial", "beta", "kl_global_eps",
                "disc_start_step"):
    require(lc[field] >= 0, f"config.loss.{field}={lc[field]} must be >= 0")
  _one_of(oc, "optimizer.schedule", ("constant", "cosine"))
  _one_of(oc, "optimizer.eps_form", ("optax", "keras"))
  _one_of(config.data, "data.resize", images.RESIZE_MODES)
  for field in ("learning_rate", "disc_learning_rate"):
    require(oc[field] > 0, f"config.optimizer.{field}={oc[field]} must be > 0")
  for field in ("b1", "b2"):
    require(0 <= oc[field] < 1,
            f"config.optimizer.{field}={oc[field]} must be in [0, 1)")
  for field in ("eps", "warmup_steps", "grad_clip_norm"):
    require(oc[field] >= 0,
            f"config.optimizer.{field}={oc[field]} must be >= 0")
  _one_of(tc, "training.update_scheme", ("simultaneous", "alternating"))
  require(0 <= tc.ema_decay < 1,
          f"config.training.ema_decay={tc.ema_decay} must be in [0, 1)")
