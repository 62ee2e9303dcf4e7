"""Image metrics: reconstruction (L1, PSNR, SSIM) and FID / KID maths.

Reconstruction metrics: per example, JAX (in the jitted eval step), images
in the model's range [-1, 1]. L1: mean |x - x_hat| over pixels and channels
of the raw decoder output (the training loss's L1 term). PSNR (dB, capped at
`PSNR_CAP_DB`) and SSIM (dm-pix defaults: 11x11 Gaussian window, sigma 1.5,
k1 0.01, k2 0.03; mean over image and channels) compare displayed images:
mapped to [0, 1] and clipped (a 'linear' decoder can leave [-1, 1]).

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018): float64 NumPy on
features [N, n]. FID = ||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of the
fitted Gaussians; the trace from the eigenvalues of the symmetric
S1^(1/2) S2 S1^(1/2) (those of S1 S2), stable for singular covariances.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

PSNR_CAP_DB = 100.0


def to_unit_range(images: jax.Array) -> jax.Array:
  """Maps images in [-1, 1] to [0, 1], clipping."""
  return jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)


def l1_per_example(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Mean |x - x_hat| of each image [B, H, W, C] -> [B], in model range."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - x_hat.astype(jnp.float32)),
                  axis=(1, 2, 3))


def psnr_per_example(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """PSNR in dB of each image pair [B, H, W, C] -> [B] (see module doc)."""
  a, b = to_unit_range(x), to_unit_range(x_hat)
  mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
  value = pix.psnr(a, b)
  return jnp.where(mse > 10.0 ** (-PSNR_CAP_DB / 10.0),
                   jnp.minimum(value, PSNR_CAP_DB), PSNR_CAP_DB)


def ssim_per_example(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """SSIM of each image pair [B, H, W, C] -> [B] (dm-pix, on [0, 1])."""
  return pix.ssim(to_unit_range(x), to_unit_range(x_hat), max_val=1.0)


def reconstruction_metrics(x: jax.Array, x_hat: jax.Array
                           ) -> dict[str, jax.Array]:
  """{'l1', 'psnr', 'ssim'}, each [B], for images x and reconstructions."""
  return {"l1": l1_per_example(x, x_hat),
          "psnr": psnr_per_example(x, x_hat),
          "ssim": ssim_per_example(x, x_hat)}


# Sharpness: the share of an image's spectral power above this radial
# frequency (cycles per pixel; Nyquist is 0.5 along each axis).
HIGH_FREQUENCY_CUTOFF = 0.25


def high_frequency_share(images: jax.Array) -> jax.Array:
  """Sharpness of each image [B, H, W, C] (model range) -> [B] in [0, 1].

  The luminance (channel mean of the displayed image, in [0, 1]) minus its
  mean; its power spectrum |FFT2|^2; the fraction of the power at radial
  frequencies sqrt(fx^2 + fy^2) > HIGH_FREQUENCY_CUTOFF. Blur lowers it;
  a flat image gives 0. Compared between reconstructions (or samples) and
  the test inputs, as a ratio of means (1: as sharp as the data).
  """
  grey = jnp.mean(to_unit_range(images.astype(jnp.float32)), axis=-1)
  grey = grey - jnp.mean(grey, axis=(1, 2), keepdims=True)
  power = jnp.square(jnp.abs(jnp.fft.fft2(grey)))
  fy = jnp.fft.fftfreq(grey.shape[1])[:, None]
  fx = jnp.fft.fftfreq(grey.shape[2])[None, :]
  high = jnp.hypot(fy, fx) > HIGH_FREQUENCY_CUTOFF
  total = jnp.sum(power, axis=(1, 2))
  return jnp.sum(jnp.where(high, power, 0.0), axis=(1, 2)) / jnp.maximum(
      total, jnp.finfo(jnp.float32).tiny)


# ------------------------------------------------------------ FID and KID --


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [n], covariance [n, n]) of features [N, n], float64, ddof 1."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"need features [N >= 2, n]; got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(
      f.shape[1], f.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root (round-off negative eigenvalues -> 0)."""
  w, v = np.linalg.eigh((matrix + matrix.T) * 0.5)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or (
      s1.shape != (mu1.size, mu1.size)):
    raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; "
                     f"sigma {s1.shape}, {s2.shape}")
  root1 = _psd_sqrt(s1)
  middle = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh((middle + middle.T) * 0.5)
  tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
  diff = mu1 - mu2
  value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
  return max(value, 0.0)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID between two feature sets [N1, n] and [N2, n]."""
  return frechet_distance(*feature_statistics(features1),
                          *feature_statistics(features2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3,
                      gamma: float | None = None, coef0: float = 1.0
                      ) -> np.ndarray:
  """k(x, y) = (gamma x.y + coef0)^degree, gamma = 1 / n by default."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, **kernel_kwargs) -> float:
  """The unbiased estimator of MMD^2 between samples x [m, n] and y [k, n].

  1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(k(k-1)) sum_{i != j} k(y_i, y_j)
  - 2/(m k) sum_{i, j} k(x_i, y_j).
  """
  m, k = len(x), len(y)
  if m < 2 or k < 2:
    raise ValueError(f"need at least 2 samples on each side; got {m} and {k}")
  kxx = polynomial_kernel(x, x, **kernel_kwargs)
  kyy = polynomial_kernel(y, y, **kernel_kwargs)
  kxy = polynomial_kernel(x, y, **kernel_kwargs)
  term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
  term_y = (kyy.sum() - np.trace(kyy)) / (k * (k - 1))
  return float(term_x + term_y - 2.0 * kxy.mean())


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0
                              ) -> tuple[float, float]:
  """KID: (mean, std) of `mmd2_unbiased` (cubic kernel) over random subsets.

  Each draws min(subset_size, N1, N2) rows of each set without replacement;
  when that is both whole sets, one subset is used (std 0).
  """
  f1 = np.asarray(features1, np.float64)
  f2 = np.asarray(features2, np.float64)
  size = min(subset_size, len(f1), len(f2))
  if size == len(f1) == len(f2):
    return mmd2_unbiased(f1, f2), 0.0
  rng = np.random.default_rng(seed)
  values = [mmd2_unbiased(f1[rng.choice(len(f1), size, replace=False)],
                          f2[rng.choice(len(f2), size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))
