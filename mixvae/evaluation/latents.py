"""Latent-space health: collapse, Dirac-like posteriors, bimodal latents.

Float64 NumPy on the whole test split's posteriors, mu and logvar [N, d]
(sigma^2 = exp(logvar)).

* Active units (Burda et al. 2016): j is active when A_j = Var_x(mu_j(x)) >
  `ACTIVE_THRESHOLD` = 0.01 (a unit collapsed to the prior has A_j = 0).
* KL per dimension: the data mean of the standard VAE's KL term (Eq. 10).
* Aggregate posterior q(z) = 1/N sum_i N(mu_i, sigma_i^2) (Eq. 14, alpha_i
  = 1/N): exact per-dim mean E[mu_j], variance Var(mu_j) + E[sigma_j^2] and
  KL(N(mean, var) || N(0, 1)): the paper's KL_G (Eq. 19) on the whole split.
* Sigmas: quantiles over all entries, fractions below 0.01 and 0.1
  (Dirac-like posteriors, Section 3.1's failure for beta < 1), medians.
* Bimodal latents (Fig. 6, "198 of 512"), over the posterior means. A latent
  is bimodal (`bimodality`, on standardized values) when all of:
    1. a 2-component GMM (EM, best of 3 inits) beats one Gaussian by delta
       BIC = 2 (LL2 - LL1) - 3 log N > `BIC_THRESHOLD` = 10 ("very strong",
       Kass & Raftery 1995);
    2. the fitted density has two modes, its valley <= `DIP_RATIO` = 0.9 x
       the lower peak (a GMM(2) can be unimodal: tails and skew pass 1);
    3. the data show the valley: samples within (right - left peak) / 6 of
       it <= `DATA_DIP_RATIO` = 0.6 x those of the smaller peak (a flat
       histogram also gets a two-bump fit);
    4. the smaller weight >= `MIN_WEIGHT` = 0.1 (outliers are no mode).
  Constant latents (std < 1e-8) are not. On 400 samples it flags every
  latent of 0.5 N(-1, 0.4^2) + 0.5 N(1, 0.4^2), ~0.5% of uniform ones, and
  no Gaussian, Laplace, Student-t(3), log-normal, exponential or 3%-outlier
  Gaussian ones; with few samples it has little power.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ACTIVE_THRESHOLD = 0.01
BIC_THRESHOLD = 10.0
DIP_RATIO = 0.9
DATA_DIP_RATIO = 0.6
MIN_WEIGHT = 0.1
SARLE_THRESHOLD = 5.0 / 9.0
_VAR_FLOOR = 1e-3       # Component variance floor, in standardized units.
_EM_ITERATIONS = 300
_GRID_POINTS = 257
SIGMA_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _check(mu: np.ndarray, logvar: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray | None]:
  mu = np.asarray(mu, np.float64)
  if mu.ndim != 2:
    raise ValueError(f"expected mu [N, d]; got shape {mu.shape}")
  if logvar is not None:
    logvar = np.asarray(logvar, np.float64)
    if logvar.shape != mu.shape:
      raise ValueError(f"mu {mu.shape} and logvar {logvar.shape} differ")
  return mu, logvar


def active_units(mu: np.ndarray, threshold: float = ACTIVE_THRESHOLD
                 ) -> tuple[int, np.ndarray]:
  """(number of active units, A [d] = Var over the data of mu_j)."""
  mu, _ = _check(mu)
  activity = mu.var(axis=0)
  return int(np.sum(activity > threshold)), activity


def kl_per_dimension(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
  """Mean over the data of 1/2 (sigma^2 + mu^2 - 1 - log sigma^2), [d]."""
  mu, logvar = _check(mu, logvar)
  return 0.5 * np.mean(np.exp(logvar) + mu ** 2 - 1.0 - logvar, axis=0)


def aggregate_posterior(mu: np.ndarray, logvar: np.ndarray
                        ) -> dict[str, np.ndarray]:
  """Mean, variance and KL to N(0, 1) per dimension of q(z) (Eq. 14)."""
  mu, logvar = _check(mu, logvar)
  mean = mu.mean(axis=0)
  var = mu.var(axis=0) + np.exp(logvar).mean(axis=0)
  kl = 0.5 * (var + mean ** 2 - 1.0 - np.log(var))
  return {"mean": mean, "var": var, "kl": kl}


def sigma_distribution(logvar: np.ndarray) -> dict[str, Any]:
  """Quantiles of sigma over all entries, small-sigma fractions, medians."""
  _, logvar = _check(np.zeros_like(logvar), logvar)
  sigma = np.exp(0.5 * logvar)
  quantiles = np.quantile(sigma, SIGMA_QUANTILES)
  return {
      "quantiles": {f"q{round(q * 100):02d}": float(v)
                    for q, v in zip(SIGMA_QUANTILES, quantiles)},
      "geometric_mean": float(np.exp(np.mean(0.5 * logvar))),
      "fraction_below_0.01": float(np.mean(sigma < 0.01)),
      "fraction_below_0.1": float(np.mean(sigma < 0.1)),
      "median_per_dim": np.median(sigma, axis=0),
  }


def sarle_coefficient(x: np.ndarray) -> np.ndarray:
  """Sarle's bimodality coefficient of each column of x [N, d], [d].

  BC = (g^2 + 1) / (k + 3 (N-1)^2 / ((N-2)(N-3))), g, k the bias-corrected
  skewness, excess kurtosis; > 5/9 (uniform) suggests bimodality; Gaussian 1/3.
  """
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  if n < 4:
    raise ValueError(f"need at least 4 samples; got {n}")
  c = x - x.mean(axis=0)
  m2 = np.mean(c ** 2, axis=0)
  safe = np.where(m2 > 0, m2, 1.0)
  g1 = np.mean(c ** 3, axis=0) / safe ** 1.5
  g2 = np.mean(c ** 4, axis=0) / safe ** 2 - 3.0
  skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
  kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6.0)
  bc = (skew ** 2 + 1.0) / (kurt + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
  return np.where(m2 > 0, bc, 0.0)


def _normal_logpdf(x, mean, var):
  return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def _log_components(x, weight, mean1, mean2, var1, var2):
  """(log w N(x; m1, v1), log (1 - w) N(x; m2, v2)), each [d, N]."""
  return (np.log(weight)[:, None] + _normal_logpdf(x, mean1[:, None],
                                                   var1[:, None]),
          np.log1p(-weight)[:, None] + _normal_logpdf(x, mean2[:, None],
                                                      var2[:, None]))


def _em(x: np.ndarray, weight, mean1, mean2, var1, var2):
  """EM for two-component 1-D mixtures, vectorized over rows of x [d, N]."""
  prev = None
  for _ in range(_EM_ITERATIONS):
    log1, log2 = _log_components(x, weight, mean1, mean2, var1, var2)
    top = np.maximum(log1, log2)
    log_total = top + np.log(np.exp(log1 - top) + np.exp(log2 - top))
    ll = log_total.sum(axis=1)
    r = np.exp(log1 - log_total)                # Responsibility of comp. 1.
    n1 = np.clip(r.sum(axis=1), 1e-9, None)
    n2 = np.clip((1.0 - r).sum(axis=1), 1e-9, None)
    weight = np.clip(n1 / x.shape[1], 1e-6, 1 - 1e-6)
    mean1 = (r * x).sum(axis=1) / n1
    mean2 = ((1.0 - r) * x).sum(axis=1) / n2
    var1 = np.maximum((r * (x - mean1[:, None]) ** 2).sum(axis=1) / n1,
                      _VAR_FLOOR)
    var2 = np.maximum(((1.0 - r) * (x - mean2[:, None]) ** 2).sum(axis=1)
                      / n2, _VAR_FLOOR)
    if prev is not None and np.all(np.abs(ll - prev) < 1e-9 * x.shape[1]):
      break
    prev = ll
  # The log-likelihood of the final parameters.
  ll = np.logaddexp(*_log_components(x, weight, mean1, mean2, var1,
                                     var2)).sum(axis=1)
  return ll, (weight, mean1, mean2, var1, var2)


def _mixture_modes(weight, mean1, mean2, var1, var2):
  """(dip [d], (left peak, valley, right peak) [3, d]) between the means.

  dip: density at the valley / at the lower outer peak; 1 (positions NaN)
  where the fitted density has one mode.
  """
  t = np.linspace(0.0, 1.0, _GRID_POINTS)[None, :]
  lo, hi = np.minimum(mean1, mean2)[:, None], np.maximum(mean1, mean2)[:, None]
  grid = lo + (hi - lo) * t
  density = (weight[:, None] * np.exp(_normal_logpdf(grid, mean1[:, None],
                                                     var1[:, None]))
             + (1 - weight)[:, None] * np.exp(
                 _normal_logpdf(grid, mean2[:, None], var2[:, None])))
  d = density.shape[0]
  ratios = np.ones(d)
  where = np.full((3, d), np.nan)
  for row in range(d):
    f = density[row]
    peaks = [i for i in range(1, len(f) - 1)
             if f[i] >= f[i - 1] and f[i] > f[i + 1]]
    # The ends count as peaks when the density falls away from them.
    if f[0] > f[1]:
      peaks.insert(0, 0)
    if f[-1] > f[-2]:
      peaks.append(len(f) - 1)
    if len(peaks) < 2:
      continue
    left, right = peaks[0], peaks[-1]
    valley = left + int(np.argmin(f[left:right + 1]))
    ratios[row] = f[valley] / min(f[left], f[right])
    where[:, row] = grid[row, [left, valley, right]]
  return ratios, where


def _empirical_dip(x: np.ndarray, where: np.ndarray) -> np.ndarray:
  """Criterion 3's sample-count ratio [d]; 1 where the mixture is unimodal."""
  left, valley, right = where
  ratios = np.ones(x.shape[0])
  ok = np.isfinite(left)
  half = (right - left) / 6.0
  def count(center):
    return np.sum(np.abs(x - center[:, None]) <= half[:, None], axis=1)
  with np.errstate(invalid="ignore"):
    c_left = count(np.where(ok, left, 0.0))
    c_valley = count(np.where(ok, valley, 0.0))
    c_right = count(np.where(ok, right, 0.0))
  lower = np.minimum(c_left, c_right)
  ratios = np.where(ok & (lower > 0), c_valley / np.maximum(lower, 1), 1.0)
  return ratios


def bimodality(values: np.ndarray, *, bic_threshold: float = BIC_THRESHOLD,
               dip_ratio: float = DIP_RATIO,
               data_dip_ratio: float = DATA_DIP_RATIO,
               min_weight: float = MIN_WEIGHT) -> dict[str, np.ndarray]:
  """The bimodality criterion of the module docstring, per column of [N, d].

  Returns:
    {'bimodal': bool [d], 'delta_bic', 'dip', 'data_dip' (criteria 1-3),
    'weights' (the smaller component's), 'sarle': [d] each; 'means', 'stds':
    [d, 2] of the components (original units, ordered by mean)}.
  """
  x = np.asarray(values, np.float64)
  if x.ndim == 1:
    x = x[:, None]
  n, d = x.shape
  if n < 8:
    raise ValueError(f"the bimodality test needs at least 8 samples; got {n}")
  center, scale = x.mean(axis=0), x.std(axis=0)
  constant = scale < 1e-8
  safe_scale = np.where(constant, 1.0, scale)
  xs = ((x - center) / safe_scale).T                     # [d, N], std 1.
  ll1 = np.sum(_normal_logpdf(xs, 0.0, 1.0), axis=1)    # MLE: mean 0, var 1.
  sorted_x = np.sort(xs, axis=1)
  half = n // 2
  inits = []
  # Split at the median; at the quartiles; at the widest gap's side.
  low, high = sorted_x[:, :half], sorted_x[:, half:]
  inits.append((np.full(d, 0.5), low.mean(1), high.mean(1),
                np.maximum(low.var(1), _VAR_FLOOR),
                np.maximum(high.var(1), _VAR_FLOOR)))
  q1, q3 = np.quantile(xs, 0.25, axis=1), np.quantile(xs, 0.75, axis=1)
  inits.append((np.full(d, 0.5), q1, q3, np.full(d, 0.5), np.full(d, 0.5)))
  inits.append((np.full(d, 0.8), np.zeros(d), np.quantile(xs, 0.95, axis=1),
                np.full(d, 0.8), np.full(d, 0.2)))
  best_ll, best = None, None
  for init in inits:
    ll, params = _em(xs, *init)
    if best_ll is None:
      best_ll, best = ll, params
    else:
      better = ll > best_ll
      best_ll = np.where(better, ll, best_ll)
      best = tuple(np.where(better, p, b) for p, b in zip(params, best))
  weight, m1, m2, v1, v2 = best
  delta_bic = 2.0 * (best_ll - ll1) - 3.0 * math.log(n)
  dip, where = _mixture_modes(weight, m1, m2, v1, v2)
  data_dip = _empirical_dip(xs, where)
  small_weight = np.minimum(weight, 1.0 - weight)
  bimodal = ((delta_bic > bic_threshold) & (dip <= dip_ratio)
             & (data_dip <= data_dip_ratio) & (small_weight >= min_weight)
             & ~constant)
  delta_bic = np.where(constant, 0.0, delta_bic)
  order = m1 <= m2
  means = np.stack([np.where(order, m1, m2), np.where(order, m2, m1)], 1)
  stds = np.sqrt(np.stack([np.where(order, v1, v2),
                           np.where(order, v2, v1)], 1))
  return {
      "bimodal": bimodal,
      "delta_bic": delta_bic,
      "dip": np.where(constant, 1.0, dip),
      "data_dip": np.where(constant, 1.0, data_dip),
      "weights": small_weight,
      "means": means * safe_scale[:, None] + center[:, None],
      "stds": stds * safe_scale[:, None],
      "sarle": sarle_coefficient(x),
  }


def bimodality_ranking(result: dict[str, np.ndarray]) -> np.ndarray:
  """Latents, most bimodal first: by delta BIC, then by dip and delta BIC."""
  key = np.where(result["bimodal"], 1e12 + result["delta_bic"],
                 -result["dip"] * 1e6 + np.clip(result["delta_bic"], -1e5,
                                                1e5))
  return np.argsort(-key, kind="stable")


def latent_summary(mu: np.ndarray, logvar: np.ndarray, *,
                   active_threshold: float = ACTIVE_THRESHOLD
                   ) -> dict[str, Any]:
  """Every statistic of the module docstring: scalars and per-dim lists."""
  mu, logvar = _check(mu, logvar)
  n, d = mu.shape
  num_active, activity = active_units(mu, active_threshold)
  kl = kl_per_dimension(mu, logvar)
  aggregate = aggregate_posterior(mu, logvar)
  sigmas = sigma_distribution(logvar)
  bimodal = bimodality(mu) if n >= 8 else None
  summary = {
      "num_examples": n,
      "latent_dim": d,
      "active_units": num_active,
      "active_threshold": active_threshold,
      "kl_total": float(kl.sum()),
      "kl_per_dim_mean": float(kl.mean()),
      "aggregate_mean_abs_max": float(np.abs(aggregate["mean"]).max()),
      "aggregate_var_mean": float(aggregate["var"].mean()),
      "aggregate_kl_total": float(aggregate["kl"].sum()),
      "sigma": {k: v for k, v in sigmas.items() if k != "median_per_dim"},
      "per_dim": {
          "activity": activity.tolist(),
          "kl": kl.tolist(),
          "aggregate_mean": aggregate["mean"].tolist(),
          "aggregate_var": aggregate["var"].tolist(),
          "aggregate_kl": aggregate["kl"].tolist(),
          "sigma_median": sigmas["median_per_dim"].tolist(),
      },
  }
  if bimodal is not None:
    summary["bimodal_latents"] = int(bimodal["bimodal"].sum())
    summary["bimodal_sarle"] = int(np.sum(bimodal["sarle"] > SARLE_THRESHOLD))
    summary["bimodality_criterion"] = (
        f"GMM(2) vs Gaussian: delta BIC > {BIC_THRESHOLD:g}, fitted density "
        f"valley <= {DIP_RATIO:g} x lower peak, data valley <= "
        f"{DATA_DIP_RATIO:g} x lower peak, smaller weight >= {MIN_WEIGHT:g}; "
        "over the posterior means mu (mixvae/evaluation/latents.py)")
    summary["per_dim"].update(
        bimodal=bimodal["bimodal"].astype(int).tolist(),
        delta_bic=bimodal["delta_bic"].tolist(),
        sarle=bimodal["sarle"].tolist())
  return summary
