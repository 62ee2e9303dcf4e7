"""The paper's figures (Figs. 4-6) and image grids, as PNG files.

`write_figures` (one process only), for a run from `evaluate.load_run`:
  traversal.png (Fig. 4): one test image decoded at z = mu but z_i = mu_i +
    a sigma_i, z_j = mu_j + b sigma_j, a, b in `traversal_steps`, sigma its
    posterior std (the centre tile is its reconstruction).
  interpolation.png (Fig. 5): (1 - a) mu(x1) + a mu(x2), a = k / (n - 1), or
    slerp, decoded, for seeded random pairs of test images (at both ends).
  latent_histograms.png (Fig. 6): joint and marginal histograms of two
    latents' posterior means over the first N test images (paper: 400).
  bimodality.png: the most and least bimodal latents' marginals, delta BIC.
  reconstructions.png: test images over their posterior means' decodings.
  prior_samples.png: decoded z ~ N(0, T^2 I).
Sizes are fixed in inches (`figure_inches`), saved uncropped at `dpi`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

from etils import epath
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from mixvae import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae import image_grid  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae.evaluation import latents as latents_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

FIGURE_NAMES = ("traversal", "interpolation", "latent_histograms",
                "bimodality", "reconstructions", "prior_samples")
DPI = 100
TILE = 1.2          # Inches per image tile.
LEFT, RIGHT, BOTTOM, TOP = 1.0, 0.3, 0.8, 0.6  # Margins of grid figures.
PANEL = 2.5         # Inches per histogram panel.


@dataclasses.dataclass
class FigureOptions:
  """What the figures show (the `launch/figures.py` flags)."""
  traversal_image: int = 0
  traversal_latents: tuple[int, int] = (0, 2)
  traversal_steps: tuple[float, ...] = (-20.0, -10.0, 0.0, 10.0, 20.0)
  interpolation_pairs: int = 4
  interpolation_steps: int = 6
  interpolation: str = "linear"      # 'linear' | 'slerp'.
  histogram_images: int = 400
  histogram_latents: tuple[int, int] | None = (0, 1)  # None: most bimodal.
  histogram_bins: int = 40          # At most; fewer for few images.
  bimodality_panels: int = 4         # Most and least bimodal, each.
  num_reconstructions: int = 8
  num_samples: int = 16
  temperature: float = 1.0
  seed: int = 0
  dpi: int = DPI


def grid_inches(rows: int, cols: int) -> tuple[float, float]:
  """(width, height) in inches of a grid figure of rows x cols tiles."""
  return (LEFT + RIGHT + cols * TILE, BOTTOM + TOP + rows * TILE)


def figure_inches(name: str, options: FigureOptions) -> tuple[float, float]:
  """The size in inches of figure `name` under `options`."""
  if name == "traversal":
    n = len(options.traversal_steps)
    return grid_inches(n, n)
  if name == "interpolation":
    return grid_inches(options.interpolation_pairs,
                       options.interpolation_steps + 2)
  if name == "latent_histograms":
    return (7.0, 7.0)
  if name == "bimodality":
    return (0.5 + options.bimodality_panels * PANEL, 0.4 + 2 * PANEL)
  if name == "reconstructions":
    return grid_inches(2, options.num_reconstructions)
  if name == "prior_samples":
    cols = max(1, math.ceil(math.sqrt(options.num_samples)))
    return grid_inches(math.ceil(options.num_samples / cols), cols)
  raise ValueError(f"unknown figure {name!r}; one of {FIGURE_NAMES}")


def figure_pixels(name: str, options: FigureOptions) -> tuple[int, int]:
  """(width, height) in pixels of the saved PNG."""
  w, h = figure_inches(name, options)
  return (int(round(w * options.dpi)), int(round(h * options.dpi)))


# -------------------------------------------------------------- drawing ---


def _grid_figure(tiles: np.ndarray, *, col_labels: Sequence[str],
                 row_labels: Sequence[str], xlabel: str, ylabel: str,
                 title: str, path: epath.Path, dpi: int) -> None:
  """Tiles [R, C, H, W, 3] in [-1, 1] as one labelled image grid."""
  rows, cols = tiles.shape[:2]
  flat = tiles.reshape((rows * cols,) + tiles.shape[2:])
  grid = image_grid.make_grid(flat, columns=cols, padding=2)
  width, height = grid_inches(rows, cols)
  fig = plt.figure(figsize=(width, height), dpi=dpi)
  ax = fig.add_axes([LEFT / width, BOTTOM / height, cols * TILE / width,
                     rows * TILE / height])
  ax.imshow(grid, extent=(0, cols, rows, 0), interpolation="lanczos"
            if grid.shape[1] < cols * TILE * dpi else "antialiased",
            aspect="auto")
  for labels, n, axis in ((col_labels, cols, ax.xaxis),
                          (row_labels, rows, ax.yaxis)):
    axis.set_ticks(np.arange(n) + 0.5 if any(labels) else [])
    if any(labels):
      axis.set_ticklabels(labels, fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  _save(fig, path, dpi)


def _save(fig, path: epath.Path, dpi: int) -> None:
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  plt.close(fig)


# -------------------------------------------------------------- the data --


def _encode(model: inference.Model, x: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
  """(mu, logvar) [n, d] as float64 NumPy."""
  return tuple(np.asarray(v, np.float64) for v in model.encode(x))


def _decode(model: inference.Model, z: np.ndarray, batch: int = 32
            ) -> np.ndarray:
  """Images [n, H, W, C] as NumPy, decoded `batch` latents at a time."""
  z = np.asarray(z, np.float32)
  return np.concatenate([np.asarray(model.decode(z[i:i + batch]))
                         for i in range(0, len(z), batch)])


def scan_test_split(run, model: inference.Model, *, keep: Sequence[int],
                    num_encode: int) -> tuple[dict[int, np.ndarray],
                                              np.ndarray, np.ndarray]:
  """({i: image} for keep, mu and logvar [n, d] of the first num_encode)."""
  iterator = data_lib.EvalIterator(run.config, process_index=0,
                                   process_count=1, local_device_count=1)
  keep = set(int(i) for i in keep)
  images: dict[int, np.ndarray] = {}
  mus, logvars = [], []
  encoded = 0
  for batch in iterator:
    x = batch["image"][0]
    index = batch["index"][0]
    valid = batch["mask"][0]
    for row in np.flatnonzero(valid):
      if int(index[row]) in keep:
        images[int(index[row])] = x[row]
    if encoded < num_encode:
      mu, logvar = _encode(model, x)
      take = [r for r in np.flatnonzero(valid) if index[r] < num_encode]
      mus.append(mu[take])
      logvars.append(logvar[take])
      encoded += len(take)
    if encoded >= min(num_encode, iterator.num_examples) and keep <= set(
        images):
      break
  missing = keep - set(images)
  if missing:
    raise ValueError(f"test images {sorted(missing)[:5]} requested but the "
                     f"test split has {iterator.num_examples} images")
  return images, np.concatenate(mus), np.concatenate(logvars)


# ------------------------------------------------------------- figures ----


def _check_latent(i: int, d: int, what: str) -> None:
  if not 0 <= i < d:
    raise ValueError(f"{what}: latent {i} is not in [0, {d})")


def traversal(model: inference.Model, image: np.ndarray, options: FigureOptions,
              path: epath.Path) -> None:
  i, j = options.traversal_latents
  for k in (i, j):
    _check_latent(k, model.latent_dim, "traversal_latents")
  mu, logvar = _encode(model, image[None])
  mu, sigma = mu[0], np.exp(0.5 * logvar[0])
  steps = list(options.traversal_steps)
  z = []
  for b in steps:          # Rows: latent j.
    for a in steps:        # Columns: latent i.
      v = mu.copy()
      v[i] += a * sigma[i]
      v[j] += b * sigma[j]
      z.append(v)
  tiles = _decode(model, np.stack(z)).reshape(
      (len(steps), len(steps)) + image.shape)
  labels = [f"{s:+g}σ" if s else "μ" for s in steps]
  _grid_figure(
      tiles, col_labels=labels, row_labels=labels,
      xlabel=f"z_{i} = μ_{i} + a·σ_{i}   (σ_{i} = {sigma[i]:.3g})",
      ylabel=f"z_{j} = μ_{j} + b·σ_{j}   (σ_{j} = {sigma[j]:.3g})",
      title=f"Latent traversal of test image {options.traversal_image} "
            f"(Fig. 4)", path=path, dpi=options.dpi)


def interpolation_pairs(num_examples: int, options: FigureOptions
                        ) -> list[tuple[int, int]]:
  """Seeded random disjoint pairs of test indices."""
  n = min(2 * options.interpolation_pairs, num_examples)
  if n < 2:
    raise ValueError("interpolation needs at least 2 test images")
  rng = np.random.default_rng(options.seed)
  chosen = rng.choice(num_examples, size=n, replace=False)
  return [(int(chosen[k]), int(chosen[k + 1])) for k in range(0, n - 1, 2)]


def interpolation(model: inference.Model, images: dict[int, np.ndarray],
                  pairs: Sequence[tuple[int, int]], options: FigureOptions,
                  path: epath.Path) -> None:
  if options.interpolation not in ("linear", "slerp"):
    raise ValueError(f"interpolation={options.interpolation!r}: use "
                     "'linear' or 'slerp'")
  steps = options.interpolation_steps
  alphas = [k / (steps - 1) for k in range(steps)]
  rows = []
  for a, b in pairs:
    if options.interpolation == "slerp":
      decoded = np.asarray(model.interpolate(images[a], images[b], steps))
    else:
      mu, _ = _encode(model, np.stack([images[a], images[b]]))
      decoded = _decode(model, [(1 - t) * mu[0] + t * mu[1] for t in alphas])
    rows.append(np.concatenate([images[a][None], decoded, images[b][None]]))
  tiles = np.stack(rows)
  _grid_figure(
      tiles, col_labels=["x₁"] + [f"{t:.2g}" for t in alphas] + ["x₂"],
      row_labels=[f"{a}→{b}" for a, b in pairs],
      xlabel=f"α ({options.interpolation}: decoded "
             "(1-α)·μ(x₁) + α·μ(x₂))" if options.interpolation == "linear"
      else "α (spherical interpolation between μ(x₁) and μ(x₂))",
      ylabel="test image pair", title="Interpolation between posterior "
      "means (Fig. 5)", path=path, dpi=options.dpi)


def _bins(n: int, options: FigureOptions) -> int:
  """At most `histogram_bins`, fewer for few samples (2 sqrt(n), >= 8)."""
  return max(1, min(options.histogram_bins, max(8, int(2 * math.sqrt(n)))))


def latent_histograms(mu: np.ndarray, latents: tuple[int, int],
                      options: FigureOptions, path: epath.Path) -> None:
  i, j = latents
  for k in (i, j):
    _check_latent(k, mu.shape[1], "histogram_latents")
  x, y = mu[:, i], mu[:, j]
  fig = plt.figure(figsize=figure_inches("latent_histograms", options),
                   dpi=options.dpi)
  grid = fig.add_gridspec(2, 2, width_ratios=(4, 1.2), height_ratios=(1.2, 4),
                          left=0.12, right=0.97, bottom=0.1, top=0.9,
                          wspace=0.05, hspace=0.05)
  ax = fig.add_subplot(grid[1, 0])
  top = fig.add_subplot(grid[0, 0], sharex=ax)
  right = fig.add_subplot(grid[1, 1], sharey=ax)
  bins = _bins(len(mu), options)
  ax.hist2d(x, y, bins=bins, cmap="viridis")
  ax.set_xlabel(f"μ_{i} (posterior mean of z_{i})")
  ax.set_ylabel(f"μ_{j} (posterior mean of z_{j})")
  top.hist(x, bins=bins, color="tab:blue")
  top.set_ylabel("count")
  top.tick_params(labelbottom=False)
  right.hist(y, bins=bins, orientation="horizontal", color="tab:blue")
  right.set_xlabel("count")
  right.tick_params(labelleft=False)
  fig.suptitle(f"Joint and marginal histograms of z_{i}, z_{j} over "
               f"{len(mu)} test images (Fig. 6)", fontsize=10)
  _save(fig, path, options.dpi)


def bimodality_panel(mu: np.ndarray, result: dict[str, np.ndarray],
                     options: FigureOptions, path: epath.Path) -> None:
  ranking = latents_lib.bimodality_ranking(result)
  k = options.bimodality_panels
  fig = plt.figure(figsize=figure_inches("bimodality", options),
                   dpi=options.dpi)
  axes = fig.subplots(2, k, squeeze=False)
  rows = (("most", ranking[:k]), ("least", ranking[::-1][:k]))
  for r, (label, chosen) in enumerate(rows):
    for c in range(k):
      ax = axes[r, c]
      if c >= len(chosen):
        ax.axis("off")
        continue
      dim = int(chosen[c])
      ax.hist(mu[:, dim], bins=_bins(len(mu), options),
              color="tab:red" if result["bimodal"][dim] else "tab:gray")
      flag = "bimodal" if result["bimodal"][dim] else "unimodal"
      ax.set_title(f"{label}: z_{dim}, ΔBIC {result['delta_bic'][dim]:.0f}"
                   f" ({flag})", fontsize=8)
      ax.set_xlabel(f"μ_{dim}", fontsize=8)
      ax.set_ylabel("count", fontsize=8)
      ax.tick_params(labelsize=7)
  fig.suptitle(f"Most and least bimodal latents: "
               f"{int(result['bimodal'].sum())} of {mu.shape[1]} bimodal "
               f"over {len(mu)} test images", fontsize=10)
  fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.86,
                      wspace=0.35, hspace=0.6)
  _save(fig, path, options.dpi)


def reconstructions(model: inference.Model, images: np.ndarray,
                    options: FigureOptions, path: epath.Path) -> None:
  recon = np.asarray(model.reconstruct(images))
  n = len(images)
  tiles = np.stack([images, recon])
  _grid_figure(tiles, col_labels=[str(k) for k in range(n)],
               row_labels=["input", "recon."], xlabel="test image",
               ylabel="", title="Test images and reconstructions from the "
               "posterior mean", path=path, dpi=options.dpi)


def prior_samples(model: inference.Model, options: FigureOptions,
                  path: epath.Path) -> None:
  rng = np.random.default_rng(options.seed)
  z = options.temperature * rng.standard_normal(
      (options.num_samples, model.latent_dim))
  samples = _decode(model, z)
  cols = max(1, math.ceil(math.sqrt(options.num_samples)))
  rows = math.ceil(options.num_samples / cols)
  pad = rows * cols - options.num_samples
  if pad:
    samples = np.concatenate([samples, np.ones((pad,) + samples.shape[1:],
                                               samples.dtype)])
  tiles = samples.reshape((rows, cols) + model.image_shape)
  _grid_figure(tiles, col_labels=[""] * cols, row_labels=[""] * rows,
               xlabel="", ylabel="",
               title=f"Prior samples, z ~ N(0, {options.temperature:g}² I)",
               path=path, dpi=options.dpi)


def write_figures(run, out_dir: str | None = None,
                  options: FigureOptions | None = None) -> dict[str, str]:
  """Writes every figure of the module docstring; {name: path}."""
  options = options or FigureOptions()
  out = epath.Path(out_dir or os.path.join(run.workdir, "figures"))
  out.mkdir(parents=True, exist_ok=True)
  model = inference.Model(run.vae, run.variables)
  num_test = data_lib.EvalIterator(
      run.config, process_index=0, process_count=1,
      local_device_count=1).num_examples
  if not 0 <= options.traversal_image < num_test:
    raise ValueError(f"traversal_image={options.traversal_image}: the test "
                     f"split has {num_test} images")
  pairs = interpolation_pairs(num_test, options)
  n_recon = min(options.num_reconstructions, num_test)
  keep = ({options.traversal_image} | {k for p in pairs for k in p}
          | set(range(n_recon)))
  images, mu, _ = scan_test_split(run, model, keep=sorted(keep),
                                  num_encode=options.histogram_images)
  paths = {}

  def path(name):
    paths[name] = os.fspath(out / f"{name}.png")
    return out / f"{name}.png"

  traversal(model, images[options.traversal_image], options,
            path("traversal"))
  interpolation(model, images, pairs,
                dataclasses.replace(options, interpolation_pairs=len(pairs)),
                path("interpolation"))
  bimodal = latents_lib.bimodality(mu) if len(mu) >= 8 else None
  hist_latents = options.histogram_latents
  if hist_latents is None:
    if bimodal is None:
      hist_latents = (0, 1)
    else:
      ranking = latents_lib.bimodality_ranking(bimodal)
      hist_latents = (int(ranking[0]), int(ranking[1]))
  latent_histograms(mu, hist_latents, options, path("latent_histograms"))
  if bimodal is not None:
    bimodality_panel(mu, bimodal, options, path("bimodality"))
  reconstructions(model, np.stack([images[k] for k in range(n_recon)]),
                  dataclasses.replace(options, num_reconstructions=n_recon),
                  path("reconstructions"))
  prior_samples(model, options, path("prior_samples"))
  return paths


def figure_sizes_for(run_options: FigureOptions, num_test: int
                     ) -> dict[str, tuple[int, int]]:
  """The pixel sizes `write_figures` produces for a split of `num_test`."""
  pairs = min(run_options.interpolation_pairs, num_test // 2)
  recon = min(run_options.num_reconstructions, num_test)
  sizes = {}
  for name in FIGURE_NAMES:
    opts = dataclasses.replace(run_options, interpolation_pairs=pairs,
                               num_reconstructions=recon)
    sizes[name] = figure_pixels(name, opts)
  return sizes
