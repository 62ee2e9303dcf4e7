"""Offline evaluation of a run: metrics, latent health, figures, comparison."""
