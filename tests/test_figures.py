"""mixvae/evaluation figures and comparison: the PNG files of a tiny run,
their pixel sizes, the comparison table and the side-by-side figures."""

import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from eval_helpers import workdir  # pylint: disable=unused-import
from mixvae.evaluation import compare
from mixvae.evaluation import evaluate
from mixvae.evaluation import figures

# Pixel sizes at 100 dpi with the defaults and the test split's 20 images:
# grids are 1.3 in of margins plus 1.2 in per tile wide, 1.4 in plus 1.2 in
# per tile high.
EXPECTED_PIXELS = {
    "traversal": (130 + 5 * 120, 140 + 5 * 120),        # 5 x 5 tiles.
    "interpolation": (130 + 8 * 120, 140 + 4 * 120),    # 4 pairs, 6 + 2.
    "latent_histograms": (700, 700),
    "bimodality": (50 + 4 * 250, 40 + 2 * 250),
    "reconstructions": (130 + 8 * 120, 140 + 2 * 120),
    "prior_samples": (130 + 4 * 120, 140 + 4 * 120),    # 16 in 4 x 4.
}


@pytest.fixture(scope="module")
def written(workdir):
  run = evaluate.load_run(workdir)
  return figures.write_figures(run)


def test_every_figure_is_written_with_its_pixel_size(workdir, written):
  assert set(written) == set(figures.FIGURE_NAMES)
  for name, path in written.items():
    assert path == os.path.join(workdir, "figures", f"{name}.png")
    with Image.open(path) as image:
      assert image.format == "PNG"
      assert image.size == EXPECTED_PIXELS[name], name
      pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{name} looks blank"
  assert figures.figure_sizes_for(figures.FigureOptions(), 20) == (
      EXPECTED_PIXELS)


def test_options_change_the_figures(workdir, tmp_path):
  run = evaluate.load_run(workdir)
  options = figures.FigureOptions(
      traversal_steps=(-10.0, 0.0, 10.0), interpolation="slerp",
      interpolation_pairs=2, histogram_latents=None, num_samples=6,
      dpi=50)
  paths = figures.write_figures(run, os.fspath(tmp_path), options)
  for name, path in paths.items():
    with Image.open(path) as image:
      assert image.size == figures.figure_pixels(name, options), name
  with Image.open(paths["traversal"]) as image:
    assert image.size == (int(round((1.3 + 3 * 1.2) * 50)),
                          int(round((1.4 + 3 * 1.2) * 50)))


def test_bad_options(workdir, tmp_path):
  run = evaluate.load_run(workdir)
  with pytest.raises(ValueError, match="latent 99"):
    figures.write_figures(run, os.fspath(tmp_path), figures.FigureOptions(
        traversal_latents=(0, 99)))
  with pytest.raises(ValueError, match="test split has 20"):
    figures.write_figures(run, os.fspath(tmp_path), figures.FigureOptions(
        traversal_image=20))


def test_interpolation_pairs_are_disjoint_and_seeded():
  options = figures.FigureOptions(interpolation_pairs=4, seed=3)
  pairs = figures.interpolation_pairs(20, options)
  flat = [i for p in pairs for i in p]
  assert len(pairs) == 4 and len(set(flat)) == 8
  assert pairs == figures.interpolation_pairs(20, options)


def _result(workdir, family, beta, adversarial, l1, lpips=None):
  result = {"step": 3, "num_examples": 20, "loss_family": family,
            "beta": beta, "beta_adversarial": adversarial,
            "reconstruction": {"l1": l1, "psnr": 20.0, "ssim": 0.5},
            "latents": {"active_units": 5, "bimodal_latents": 2,
                        "sigma": {"quantiles": {"q50": 0.9},
                                  "fraction_below_0.01": 0.0},
                        "kl_per_dim_mean": 0.1, "aggregate_kl_total": 0.2,
                        "bimodality_criterion": "GMM"},
            "fid_skipped": "no weights"}
  if lpips is None:
    result["lpips_skipped"] = "no weights"
  else:
    result["reconstruction"]["lpips"] = lpips
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  with open(os.path.join(workdir, "eval", "3.json"), "w") as f:
    json.dump(result, f)
  return result


def test_compare_table_and_side_by_side(workdir, written, tmp_path):
  del written
  runs = []
  for name, family, beta, adv in (("mix", "mixture", 1.0, 100.0),
                                  ("vae", "standard", 1.0, 0.0),
                                  ("beta", "standard", 4.0, 0.0)):
    target = tmp_path / name
    shutil.copytree(os.path.join(workdir, "figures"), target / "figures")
    _result(os.fspath(target), family, beta, adv, 0.1,
            lpips=0.25 if name == "mix" else None)
    runs.append(os.fspath(target))
  entries = compare.load(runs)
  table = compare.markdown_table(entries)
  lines = table.splitlines()
  assert lines[0].startswith("| run | model | step |")
  assert "| mix | mixture VAE-GAN | 3 | 20 | 0.1 | 20 | 0.5 | 0.25 |" in table
  assert "| vae | VAE | 3 | 20 | 0.1 | 20 | 0.5 | – |" in table
  assert "LPIPS: – where no LPIPS weights" in table
  assert "| vae | VAE |" in table and "| beta | β-VAE (β=4) |" in table
  assert "FID/KID: – where no Inception weights" in table
  joined = compare.side_by_side(entries, os.fspath(tmp_path / "out"))
  assert set(joined) == set(figures.FIGURE_NAMES)
  with Image.open(joined["traversal"]) as image:
    width, height = image.size
  assert width == 3 * EXPECTED_PIXELS["traversal"][0]
  assert height == EXPECTED_PIXELS["traversal"][1] + 40
  with pytest.raises(FileNotFoundError, match="launch/evaluate.py"):
    compare.load([os.fspath(tmp_path / "out")])
