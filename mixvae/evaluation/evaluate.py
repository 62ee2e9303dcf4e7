"""The evaluation pass: every test example once, on every host and device.

`evaluate`, on a run from `load_run`:
  1. runs a pmapped step over this process's share of the test split (last
     batch padded and masked), keeping per example the posterior (mu,
     logvar), L1/PSNR/SSIM (`metrics`) and LPIPS (`lpips`) of the decoded
     posterior mean, and the sharpness (`metrics.high_frequency_share`)
     and Inception pool features of the image, its reconstruction and one
     prior sample z = T eps, eps ~ N(0, I), per temperature T (eps keyed by
     the test index: layout-independent); the test images' features come
     from `config.eval.feature_cache` once it has them (`feature_cache`);
  2. gathers all processes' rows, drops padding, orders them by test index
     and checks that each index appears exactly once;
  3. reduces them on every host: reconstruction metric means, latent health
     (`latents.latent_summary`), sharpness (mean high-frequency shares and
     their ratios to the test images'), FID and KID of the reconstructions
     and the prior samples against the test images.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixvae import checkpointing
from mixvae import config_utils
from mixvae import data as data_lib
from mixvae import errors
from mixvae import models
from mixvae import nested
from mixvae import replication
from mixvae import trainer as trainer_lib
from mixvae import workdir as workdir_lib
from mixvae.evaluation import feature_cache
from mixvae.evaluation import latents as latents_lib
from mixvae.evaluation import metrics as metrics_lib
from mixvae.evaluation import results
from mixvae.evaluation import weights as weights_lib

PARAMS = ("ema", "raw")
PRIOR_SEED = 1234  # Base key of the prior samples (fold in the test index).
FEATURE_DIM_FOR_FULL_RANK = 2049  # Fewer images: singular covariances.


# ------------------------------------------------------------ the run -----


@dataclasses.dataclass
class Run:
  """A restored run: its config, step and the VAE to evaluate."""
  workdir: str
  config: ml_collections.ConfigDict
  step: int
  params_kind: str
  vae: models.VAE
  variables: dict[str, Any]  # {'params', 'batch_stats'} of `vae`.


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's `WORKDIR/config.json` (FileNotFoundError if it is missing)."""
  path = epath.Path(workdir)
  if not path.exists():
    raise errors.MissingError(f"workdir {workdir} does not exist")
  config_path = path / workdir_lib.CONFIG_FILE
  if not config_path.exists():
    raise errors.MissingError(
        f"{config_path} not found: runs write it when training starts. For a "
        "run trained before that, pass its config explicitly (e.g. "
        "--config=configs/demo.py).")
  config = ml_collections.ConfigDict(nested.tuples(
      config_utils.with_added_fields(json.loads(config_path.read_text()))))
  config.lock()
  return config


def load_run(workdir: str, *, step: int | str | None = None,
             params: str = "ema",
             config: ml_collections.ConfigDict | None = None) -> Run:
  """Restores the VAE of `workdir` (local or gs://) at `step` (None: latest;
  'best': `results.best_step`).

  Args:
    params: 'ema' (the generator's EMA, as in training's image grids) or 'raw'.

  Raises:
    FileNotFoundError: no workdir, config.json or checkpoints, or none for
      `step` (the message lists the saved steps).
  """
  if params not in PARAMS:
    raise errors.ConfigError(f"params={params!r}: use one of {list(PARAMS)}")
  if not epath.Path(workdir).exists():
    raise errors.MissingError(f"workdir {workdir} does not exist")
  if config is None:
    config = load_config(workdir)
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  if not ckpt_dir.exists() or not any(
      p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise errors.MissingError(
        f"no checkpoints in {ckpt_dir}: train first (launch/main.py "
        f"--workdir={workdir})")
  if step == "best":
    step = results.best_step(workdir, config)
  elif isinstance(step, str):
    if not step.isdigit():
      raise errors.ConfigError(f"step={step!r}: give a number or 'best'")
    step = int(step)
  trainer = trainer_lib.Trainer(config, axis_name=None)
  manager = checkpointing.create_manager(
      os.fspath(workdir), max_to_keep=max(1, config.keep_checkpoints),
      read_only=True)
  try:
    restored = checkpointing.restore(manager, trainer.abstract_state(),
                                     step=step)
  finally:
    manager.close()
  if restored is None:
    raise errors.MissingError(f"no checkpoints in {ckpt_dir}")
  state, _ = restored
  chosen = state.ema_params if params == "ema" else state.vae_params
  variables = {"params": chosen, "batch_stats": state.vae_batch_stats}
  return Run(workdir=os.fspath(workdir), config=config, step=int(state.step),
             params_kind=params, vae=trainer.vae, variables=variables)


# ------------------------------------------------------------- the pass ---


def _prior_latents(index: jax.Array, latent_dim: int, temperature: float,
                   seed: int) -> jax.Array:
  """z = T * eps, eps from a key folded from each example's test index."""
  base = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.maximum(index, 0))
  eps = jax.vmap(lambda k: jax.random.normal(k, (latent_dim,)))(keys)
  return temperature * eps


def make_eval_step(vae: models.VAE, *,
                   feature_fn: Callable[[jax.Array], jax.Array] | None = None,
                   lpips_fn: Callable[[jax.Array, jax.Array], jax.Array]
                   | None = None,
                   temperatures: Sequence[float] = (1.0,),
                   seed: int = PRIOR_SEED,
                   data_features: bool = True) -> Callable:
  """(variables, batch) -> per-example outputs of one device's batch
  (without the test images' features if not `data_features`)."""

  def step(variables, batch):
    x = batch["image"]
    out = vae.apply(variables, x, train=False)
    result = {"mu": out.mu, "logvar": out.logvar, "index": batch["index"],
              "mask": batch["mask"],
              **metrics_lib.reconstruction_metrics(x, out.reconstruction)}
    if lpips_fn is not None:
      # Of the displayed image, as PSNR, SSIM and FID.
      result["lpips"] = lpips_fn(x, jnp.clip(out.reconstruction, -1.0, 1.0))
    images = {"data": x, "reconstruction": out.reconstruction}
    for t in temperatures:
      z = _prior_latents(batch["index"], vae.latent_dim, float(t), seed)
      images[f"prior_t{t:g}"] = vae.apply(variables, z, method="decode")
    for name, image in images.items():
      result[f"sharpness/{name}"] = metrics_lib.high_frequency_share(image)
      if feature_fn is not None and (data_features or name != "data"):
        result[f"features/{name}"] = feature_fn(image)
    return result
  return step


def collect(p_step: Callable, variables, iterator) -> dict[str, np.ndarray]:
  """This process's rows [rows, ...] of `p_step` (pmapped over the devices
  `variables` are replicated on), padding and 'mask' included."""
  parts: dict[str, list[np.ndarray]] = {}
  for batch in iterator:
    out = jax.device_get(p_step(variables, batch))
    for key, value in out.items():
      value = np.asarray(value)
      parts.setdefault(key, []).append(
          value.reshape((-1,) + value.shape[2:]))
  if not parts:
    raise ValueError("the test split is empty")
  return {k: np.concatenate(v) for k, v in parts.items()}


def combine(parts: Sequence[dict[str, np.ndarray]], num_examples: int
            ) -> dict[str, np.ndarray]:
  """All rows, unpadded, by test index; RuntimeError unless each occurs once."""
  rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  mask = rows.pop("mask").astype(bool)
  rows = {k: v[mask] for k, v in rows.items()}
  index = rows["index"]
  order = np.argsort(index, kind="stable")
  rows = {k: v[order] for k, v in rows.items()}
  if len(index) != num_examples or not np.array_equal(
      rows["index"], np.arange(num_examples)):
    counts = np.bincount(index[index >= 0], minlength=num_examples)
    raise RuntimeError(
        f"the evaluation pass saw {len(index)} examples for a test split of "
        f"{num_examples}: {int(np.sum(counts == 0))} missing, "
        f"{int(np.sum(counts > 1))} repeated")
  return rows


def gather_processes(local: dict[str, np.ndarray]
                     ) -> list[dict[str, np.ndarray]]:
  """Every process's rows, on every process (one part per process)."""
  if jax.process_count() == 1:
    return [local]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = {k: np.asarray(multihost_utils.process_allgather(v))
              for k, v in local.items()}  # [P, rows, ...]
  return [{k: v[p] for k, v in gathered.items()}
          for p in range(jax.process_count())]


# ------------------------------------------------------------ reduction ---


def summarize(rows: dict[str, np.ndarray], *, kid_subsets: int = 100,
              kid_subset_size: int = 1000) -> dict[str, Any]:
  """Reduces per-example rows to the results dict (see `evaluate`)."""
  n = len(rows["index"])
  result: dict[str, Any] = {"num_examples": int(n)}
  result["reconstruction"] = {
      k: float(np.mean(rows[k], dtype=np.float64))
      for k in ("l1", "psnr", "ssim", "lpips") if k in rows}
  result["latents"] = latents_lib.latent_summary(rows["mu"], rows["logvar"])
  share = {k.split("/", 1)[1]: float(np.mean(v, dtype=np.float64))
           for k, v in rows.items() if k.startswith("sharpness/")}
  result["sharpness"] = {
      **{f"{k}_vs_data": v / max(share["data"], 1e-12)
         for k, v in share.items() if k != "data"},
      "high_frequency_share": share}
  if "features/data" in rows:
    data = rows["features/data"]
    fid, kid, kid_std = {}, {}, {}
    for key in sorted(k for k in rows if k.startswith("features/")):
      name = key.split("/", 1)[1]
      if name != "data":
        fid[name] = metrics_lib.fid_from_features(rows[key], data)
        kid[name], kid_std[name] = metrics_lib.kernel_inception_distance(
            rows[key], data, num_subsets=kid_subsets,
            subset_size=kid_subset_size)
    result.update(fid=fid, kid=kid, kid_std=kid_std)
    if n < FEATURE_DIM_FOR_FULL_RANK:
      result["fid_note"] = (
          f"{n} test images < 2048 features: the covariances are rank "
          "deficient and FID is strongly biased upwards; compare runs only "
          "at the same number of images")
  return result


def _network_fn(spec: weights_lib.WeightsFile, make_fn: Callable,
                path_flag: str | None, *, flag: str):
  """(make_fn(weights), None), or (None, the skip message) without weights."""
  path = spec.resolve(path_flag)
  if path is None:
    return None, spec.skip(f"no weights given (--{flag})")
  return make_fn(spec.load(path)), None


class Evaluator:
  """The evaluation pass of one config, compiled once, for any variables of
  its VAE: `evaluator(variables, workdir=, step=)` -> the results dict.

  Args:
    config: the run's config; `config.eval.num_examples` > 0 evaluates only
      the first test examples; `config.eval.feature_cache` (a directory)
      keeps the test images' Inception features (`feature_cache`).
    vae: the module to evaluate.
    inception_weights: the Inception .npz, else $MIXVAE_INCEPTION_WEIGHTS;
      with neither, FID/KID are skipped ('fid_skipped' says why). A named
      file that does not exist is an error, raised here.
    lpips_weights: likewise for LPIPS ('lpips_skipped').
    temperatures: of the prior samples for FID/KID.
    batch_size: global (default: the config's).
    devices, process_index, process_count: this process's share (default:
      JAX's); tests simulate processes with them.
    source: the data source (default: built from the config).
    feature_fn, lpips_fn: traceable stand-ins for Inception ([B, H, W, C] ->
      [B, n]) and LPIPS ((x, x_hat) -> [B]), for tests.
  """

  def __init__(self, config: ml_collections.ConfigDict, vae: models.VAE, *,
               inception_weights: str | None = None,
               lpips_weights: str | None = None,
               temperatures: Sequence[float] = (1.0,),
               batch_size: int | None = None,
               devices: Sequence[jax.Device] | None = None,
               process_index: int | None = None,
               process_count: int | None = None, source=None,
               feature_fn: Callable | None = None,
               lpips_fn: Callable | None = None):
    from mixvae.evaluation import inception  # pylint: disable=g-import-not-at-top
    from mixvae.evaluation import lpips  # pylint: disable=g-import-not-at-top
    self.config, self.notes = config, {}
    inception_path = None
    if feature_fn is None:
      inception_path = inception.WEIGHTS.resolve(inception_weights)
      feature_fn, self.notes["fid_skipped"] = _network_fn(
          inception.WEIGHTS, inception.make_feature_fn, inception_path,
          flag="inception_weights")
    if lpips_fn is None and config.model.channels not in (1, 3):
      self.notes["lpips_skipped"] = lpips.WEIGHTS.skip(
          f"VGG16 takes 1 or 3 channels, the model has "
          f"{config.model.channels}")
    elif lpips_fn is None:
      lpips_fn, self.notes["lpips_skipped"] = _network_fn(
          lpips.WEIGHTS, lpips.make_distance_fn, lpips_weights,
          flag="lpips_weights")
    self.notes = {k: v for k, v in self.notes.items() if v}
    self.temperatures = [float(t) for t in temperatures]
    self.devices = list(jax.local_devices() if devices is None else devices)
    self.iterator = data_lib.EvalIterator(
        config, source=source, batch_size=batch_size,
        num_examples=config.eval.num_examples, process_index=process_index,
        process_count=process_count, local_device_count=len(self.devices))
    self.feature_cache = None  # feature_cache.cache_file, if one is used.
    if config.eval.feature_cache and inception_path:
      if jax.process_count() > 1:
        logging.info("config.eval.feature_cache is used by single-process "
                     "evaluations only; computing the test images' features")
      else:
        self.feature_cache = feature_cache.cache_file(
            config.eval.feature_cache, config.data.to_dict(),
            self.iterator.names, inception_path)
    self._p_steps = {data_features: jax.pmap(make_eval_step(
        vae, feature_fn=feature_fn, lpips_fn=lpips_fn,
        temperatures=self.temperatures, data_features=data_features),
                                             devices=self.devices)
                     for data_features in (True, False)}

  def local_rows(self, variables, *, data_features: bool = True
                 ) -> dict[str, np.ndarray]:
    """This process's per-example rows (with padding and 'mask')."""
    return collect(self._p_steps[data_features],
                   replication.replicate(variables, self.devices),
                   self.iterator)

  def rows(self, variables) -> dict[str, np.ndarray]:
    """The whole split's per-example rows (gathered from all processes);
    the test images' features from `feature_cache` when it has them."""
    cached = (feature_cache.load(self.feature_cache)
              if self.feature_cache else None)
    rows = combine(gather_processes(self.local_rows(
        variables, data_features=cached is None)), self.iterator.num_examples)
    if cached is not None:
      feature_cache.check(self.feature_cache, cached, rows["sharpness/data"])
      rows["features/data"] = cached["features"]
      logging.info("Read the test images' features from %s",
                   self.feature_cache)
    elif self.feature_cache:
      feature_cache.save(self.feature_cache, rows["features/data"],
                         rows["sharpness/data"])
      logging.info("Cached the test images' features in %s",
                   self.feature_cache)
    return rows

  def __call__(self, variables, *, workdir: str, step: int,
               params: str = "ema") -> dict[str, Any]:
    """The results dict of `variables`, saved as `WORKDIR/eval/<step>.json`."""
    loss = self.config.loss
    return {"workdir": os.fspath(workdir), "step": int(step), "params": params,
            "loss_family": loss.family, "beta": float(loss.beta),
            "beta_adversarial": float(loss.beta_adversarial),
            "temperatures": self.temperatures,
            **summarize(self.rows(variables)), **self.notes}


def evaluate(run: Run, **kwargs) -> dict[str, Any]:
  """The evaluation of the module docstring; `Evaluator`'s keyword
  arguments."""
  return Evaluator(run.config, run.vae, **kwargs)(
      run.variables, workdir=run.workdir, step=run.step,
      params=run.params_kind)
