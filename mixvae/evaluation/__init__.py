"""Offline evaluation of a run: metrics, latent health, figures, comparison.

Modules:
  metrics    L1, PSNR, SSIM (dm-pix); Frechet distance and KID maths.
  latents    active units, KL per dimension, the aggregate posterior, the
             individual sigmas, the bimodality criterion.
  inception  the FID Inception-v3 in Flax (weights from a local .npz).
  lpips      LPIPS (VGG16, v0.1) in Flax (weights from a local .npz).
  weights    reading and checking those weight files (launch/convert_*.py
             write them).
  evaluate   restoring a run; the pass over the test split; results.
  figures    the paper's Figs. 4-6 and image grids as PNG files.
  compare    one markdown table and side-by-side figures of runs.
"""
