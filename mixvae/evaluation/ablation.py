"""The ablation's table: each run's metrics over seeds, and the paper's claims.

Input: for each run of the grid (`RUNS`), the evaluations (`eval/<step>.json`)
of its seeds. Each metric is reported as mean +- sample standard deviation
over seeds; a row is marked against the paper's row where Welch's t-test
(unequal variances, two-sided) gives p < `ALPHA` (needs >= 2 seeds per row).
The claims (`CLAIMS`) are judged by the rules written next to them:
'supported', 'not supported' or 'inconclusive at this scale'.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import scipy.stats

from mixvae import nested

# (config variant, what it isolates): the paper's row first.
RUNS = (("paper", "the full method: KL_G + KL_I + L1 + PatchGAN"),
        ("no_gan", "the adversarial term (beta_4 = 0)"),
        ("no_kli", "the individual-variance term KL_I (beta_2 = 0)"),
        ("vae", "the mixture KL vs the standard KL (Eq. 10, beta = 1) + L1"),
        ("beta_vae", "the 'opposite of beta-VAE' framing (beta = 4) + L1"))
ALPHA = 0.05

# (column, key in the flattened results, larger is better or None).
METRICS = (
    ("L1", "reconstruction/l1", False),
    ("PSNR dB", "reconstruction/psnr", True),
    ("SSIM", "reconstruction/ssim", True),
    ("LPIPS", "reconstruction/lpips", False),
    ("FID recon", "fid/reconstruction", False),
    ("FID prior", "fid/prior_t1", False),
    ("KID recon", "kid/reconstruction", False),
    ("KID prior", "kid/prior_t1", False),
    ("sharpness recon", "sharpness/reconstruction_vs_data", True),
    ("sharpness prior", "sharpness/prior_t1_vs_data", True),
    ("active units", "latents/active_units", None),
    ("KL / dim", "latents/kl_per_dim_mean", None),
    ("bimodal latents", "latents/bimodal_latents", None),
    ("median σ", "latents/sigma/quantiles/q50", None),
    ("σ < 0.01", "latents/sigma/fraction_below_0.01", None),
)


def collect(results: dict[str, Sequence[dict[str, Any]]]
            ) -> dict[str, dict[str, list[float]]]:
  """{run: {metric key: [value per seed]}} of the metrics every seed has."""
  table = {}
  for run, seeds in results.items():
    flat = [nested.flatten(r) for r in seeds]
    table[run] = {key: [float(f[key]) for f in flat] for _, key, _ in METRICS
                  if flat and all(key in f for f in flat)}
  return table


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
  """Two-sided p of Welch's t-test; None below 2 values a side; 0 or 1 when
  both sides are constant (different or equal)."""
  if len(a) < 2 or len(b) < 2:
    return None
  if np.std(a) == 0 and np.std(b) == 0:
    return 0.0 if np.mean(a) != np.mean(b) else 1.0
  return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def _stats(values: Sequence[float]) -> dict[str, float]:
  return {"mean": float(np.mean(values)),
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          "n": len(values)}


def _compare(table, run: str, other: str, key: str) -> tuple[float, float]:
  """(mean of run - mean of other, Welch p or nan) for one metric."""
  a, b = table.get(run, {}).get(key), table.get(other, {}).get(key)
  if not a or not b:
    return math.nan, math.nan
  p = welch_p(a, b)
  return float(np.mean(a) - np.mean(b)), math.nan if p is None else p


def _better(table, key: str, larger: bool, run: str, others: Sequence[str]
            ) -> str:
  """'supported' if `run` beats each of `others` on `key` with p < ALPHA;
  'not supported' if one beats it so; else 'inconclusive'."""
  outcomes = []
  for other in others:
    diff, p = _compare(table, run, other, key)
    if math.isnan(diff):
      return "inconclusive"
    ahead = diff > 0 if larger else diff < 0
    significant = not math.isnan(p) and p < ALPHA
    outcomes.append("win" if ahead and significant else
                    "loss" if significant and diff != 0 else "tie")
  if "loss" in outcomes:
    return "not supported"
  return "supported" if all(o == "win" for o in outcomes) else "inconclusive"


def _sharper(table) -> str:
  return _better(table, "sharpness/reconstruction_vs_data", True, "paper",
                 ("vae", "beta_vae"))


def _gan_sharpens(table) -> str:
  return _better(table, "sharpness/reconstruction_vs_data", True, "paper",
                 ("no_gan",))


def _no_collapse(table) -> str:
  collapsed = table.get("paper", {}).get("latents/sigma/fraction_below_0.01")
  if not collapsed:
    return "inconclusive"
  if np.mean(collapsed) > 0.01:
    return "not supported"
  if max(collapsed) > 0:
    return "inconclusive"
  return _better(table, "latents/sigma/quantiles/q50", True, "paper",
                 ("no_kli",))


def _bimodal(table) -> str:
  counts = table.get("paper", {}).get("latents/bimodal_latents")
  if not counts:
    return "inconclusive"
  if max(counts) == 0:
    return "not supported"
  if min(counts) == 0:
    return "inconclusive"
  return _better(table, "latents/bimodal_latents", True, "paper", ("vae",))


# (claim, rule, judge(table) -> verdict).
CLAIMS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("Reconstructions are sharper than the VAE's and the β-VAE's",
     "supported if the paper's sharpness recon (high-frequency share vs the "
     "test images) is higher than each baseline's with Welch p < 0.05; not "
     "supported if a baseline's is higher with p < 0.05", _sharper),
    ("The PatchGAN term sharpens the reconstructions",
     "the same rule, the paper's row against no_gan", _gan_sharpens),
    ("KL_I keeps the individual posteriors from collapsing to a Dirac delta",
     "supported if no seed of the paper's row has a posterior σ < 0.01 and "
     "its median σ is higher than no_kli's (p < 0.05); not supported if over "
     "1% of its σ are < 0.01", _no_collapse),
    ("Latents of the mixture model are bimodal (Fig. 6)",
     "supported if every seed of the paper's row has bimodal latents and "
     "more than the VAE (p < 0.05); not supported if no seed has any",
     _bimodal),
)


def summarize(results: dict[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
  """The table as JSON: per run and metric mean/std/n, the p-value against
  the paper's row, and the verdict of each claim."""
  table = collect(results)
  rows = {}
  for run, metrics in table.items():
    rows[run] = {}
    for _, key, _ in METRICS:
      if key in metrics:
        p = (_compare(table, run, "paper", key)[1] if run != "paper"
             else math.nan)
        rows[run][key] = dict(_stats(metrics[key]),
                              p_vs_paper=None if math.isnan(p) else p)
  return {"runs": rows, "alpha": ALPHA,
          "claims": [{"claim": c, "rule": r, "verdict": judge(table)}
                     for c, r, judge in CLAIMS]}


def _cell(entry: dict[str, float] | None) -> str:
  if entry is None:
    return "–"
  mean = entry["mean"]
  text = f"{mean:.3g}" if abs(mean) < 1000 else f"{mean:.0f}"
  if entry["n"] > 1:
    text += f" ± {entry['std']:.2g}"
  p = entry.get("p_vs_paper")
  if p is not None and p < ALPHA:
    text += " *"
  return text


def markdown(summary: dict[str, Any]) -> str:
  """The table (mean ± std over seeds; * p < alpha against the paper's row)
  and one line per claim with its verdict and rule."""
  header = ["run", "isolates", "seeds"] + [
      name + ("" if larger is None else " ↑" if larger else " ↓")
      for name, _, larger in METRICS]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
  isolates = dict(RUNS)
  for run, metrics in summary["runs"].items():
    seeds = max((m["n"] for m in metrics.values()), default=0)
    lines.append("| " + " | ".join(
        [run, isolates.get(run, ""), str(seeds)] +
        [_cell(metrics.get(key)) for _, key, _ in METRICS])
                 + " |")
  lines += ["", f"Mean ± standard deviation over seeds; * Welch's t-test "
            f"against the paper's row, p < {summary['alpha']:g}. Sharpness: "
            "high-frequency share of the spectrum (above 0.25 cycles/pixel) "
            "over that of the test images (mixvae/evaluation/metrics.py).",
            ""]
  for claim in summary["claims"]:
    lines.append(f"- **{claim['claim']}**: {claim['verdict']} "
                 f"(rule: {claim['rule']}).")
  return "\n".join(lines)
