"""Offline evaluation of a run: metrics, latent health, figures, comparison.

Modules:
  metrics            L1, PSNR, SSIM (dm-pix); Frechet distance and KID maths.
  latents            active units, KL per dimension, the aggregate posterior,
                     the individual sigmas, the bimodality criterion.
  inception          the FID Inception-v3 in Flax (weights from a local .npz).
  convert_inception  the one-time TorchScript -> .npz converter (needs torch).
  evaluate           restoring a run; the pass over the test split; results.
  figures            the paper's Figs. 4-6 and image grids as PNG files.
  compare            one markdown table and side-by-side figures of runs.
"""
