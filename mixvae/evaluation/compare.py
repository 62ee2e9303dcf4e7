"""Runs side by side: a markdown table of their evaluations, joined figures."""

from __future__ import annotations

import os
from typing import Any, Sequence

from etils import epath
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

from mixvae import nested  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae.evaluation import figures as figures_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from mixvae.evaluation import results as results_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def describe(result: dict[str, Any]) -> str:
  """'mixture VAE-GAN', 'VAE', 'beta-VAE (beta=4)', ... from a results dict."""
  gan = "-GAN" if result.get("beta_adversarial", 0.0) > 0 else ""
  if result.get("loss_family") == "mixture":
    return f"mixture VAE{gan}"
  beta = float(result.get("beta", 1.0))
  if beta == 1.0:
    return f"VAE{gan}"
  return f"β-VAE{gan} (β={beta:g})"


def _fmt(value, digits: int = 4) -> str:
  if value is None:
    return "–"
  if isinstance(value, str):
    return value
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  value = float(value)
  if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
    return f"{value:.3g}"
  return f"{value:.{digits}g}"


# (header, key in the flattened results dict, digits; 0: as stored).
COLUMNS = (
    ("L1 ↓", "reconstruction/l1", 3),
    ("PSNR dB ↑", "reconstruction/psnr", 4),
    ("SSIM ↑", "reconstruction/ssim", 3),
    ("LPIPS ↓", "reconstruction/lpips", 3),
    ("FID recon ↓", "fid/reconstruction", 4),
    ("FID prior T=1 ↓", "fid/prior_t1", 4),
    ("KID recon ↓", "kid/reconstruction", 3),
    ("KID prior T=1 ↓", "kid/prior_t1", 3),
    ("sharpness recon ↑", "sharpness/reconstruction_vs_data", 3),
    ("sharpness prior T=1 ↑", "sharpness/prior_t1_vs_data", 3),
    ("active units", "latents/active_units", 0),
    ("bimodal latents", "latents/bimodal_latents", 0),
    ("median σ", "latents/sigma/quantiles/q50", 3),
    ("σ < 0.01", "latents/sigma/fraction_below_0.01", 3),
    ("KL / dim", "latents/kl_per_dim_mean", 3),
    ("aggregate KL", "latents/aggregate_kl_total", 3),
)


def load(workdirs: Sequence[str], *, step: int | None = None,
         params: str = "ema") -> list[tuple[str, dict[str, Any]]]:
  """[(workdir, its eval/<step>.json)] (FileNotFoundError says what to run)."""
  return [(os.fspath(w), results_lib.read_results(w, step, params))
          for w in workdirs]


def markdown_table(entries: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """One markdown table, a row per (workdir, results)."""
  header = (["run", "model", "step", "test images"]
            + [c[0] for c in COLUMNS])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
  for workdir, result in entries:
    name = os.path.basename(os.path.normpath(workdir))
    cells = [name, describe(result), _fmt(result.get("step")),
             _fmt(result.get("num_examples"))]
    flat = nested.flatten(result)
    for _, key, digits in COLUMNS:
      value = flat.get(key)
      cells.append(_fmt(value, digits) if digits else _fmt(value))
    lines.append("| " + " | ".join(cells) + " |")
  notes = []
  if any("fid_skipped" in r for _, r in entries):
    notes.append("FID/KID: – where no Inception weights were given "
                 "(see launch/convert_inception.py).")
  if any("lpips_skipped" in r for _, r in entries):
    notes.append("LPIPS: – where no LPIPS weights were given "
                 "(see launch/convert_lpips.py).")
  note = next((r["fid_note"] for _, r in entries if "fid_note" in r), None)
  if note:
    notes.append(f"FID: {note}.")
  crit = next((nested.flatten(r).get("latents/bimodality_criterion")
               for _, r in entries), None)
  if crit:
    notes.append(f"Bimodal: {crit}.")
  return "\n".join(lines + [""] + notes)


def side_by_side(entries: Sequence[tuple[str, dict[str, Any]]],
                 out_dir: str, *, dpi: int = 100) -> dict[str, str]:
  """Joins each figure all runs' figures/ have, left to right; {name: path}."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = {}
  for name in figures_lib.FIGURE_NAMES:
    paths = [epath.Path(w) / "figures" / f"{name}.png" for w, _ in entries]
    if not all(p.exists() for p in paths):
      continue
    images = []
    for p in paths:
      with p.open("rb") as f:
        images.append(np.asarray(Image.open(f).convert("RGB")))
    width = sum(im.shape[1] for im in images) / dpi
    height = max(im.shape[0] for im in images) / dpi + 0.4
    fig = plt.figure(figsize=(width, height), dpi=dpi)
    left = 0.0
    for (workdir, result), im in zip(entries, images):
      w = im.shape[1] / dpi / width
      h = im.shape[0] / dpi / height
      ax = fig.add_axes([left, 1.0 - 0.4 / height - h, w, h])
      ax.imshow(im, interpolation="none")
      ax.set_axis_off()
      fig.text(left + w / 2, 1.0 - 0.2 / height,
               f"{os.path.basename(os.path.normpath(workdir))}: "
               f"{describe(result)}", ha="center", va="center", fontsize=11)
      left += w
    target = out / f"{name}.png"
    with target.open("wb") as f:
      fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
    written[name] = os.fspath(target)
  return written
