"""The loss terms of "How to train your VAE" (Rivera, 2024) as pure JAX functions.

Every function here is pure (no module state), works under `jax.jit`,
`jax.grad`, `jax.pmap` and `jax.shard_map`, and computes its statistics, logs
and exps in float32 even when its inputs are bfloat16.

Shapes: `mu`, `z`, `logvar` are [B, d] (B examples on this device, d latents);
images are [B, H, W, C]; discriminator logits are [B, h, w, 1] (PatchGAN,
h = H/8, w = W/8).

Sign convention
  Eqs. 22 and 23 of the paper print the likelihood terms with a minus sign.
  Read as losses to **minimise**, every term is non-negative and is added:

    generator     = b1 * KL_G + b2 * KL_I + b3 * L1 + b4 * H[1, D(x_hat)]
    discriminator = b4 * (H[1, D(x)] + H[0, D(x_hat)])

  The weights b1..b4 are applied by the trainer, not here.

Reductions
  The paper writes sums over the minibatch; the author's code takes means.
  A per-example mean keeps the weights independent of the batch size, so
  `batch_reduction='mean'` is the default everywhere and `'sum'` gives the
  paper's literal sums. `kl_global` is one term per (global) batch in both.

The global batch and `axis_name`
  With `axis_name=None` the functions reduce over the arrays they are given.
  Under `jax.jit` on a batch sharded over devices that already is the global
  batch: XLA inserts the cross-device reductions.

  Inside `jax.pmap` or `jax.shard_map`, where each device holds a slice of the
  batch, pass the mapped axis name (a string or a tuple of names). Every
  function then returns the value for the concatenated global batch,
  identical on every device, and its gradient with respect to this device's
  inputs is this device's slice of the gradient of that global value, under
  both mappings and whatever the number of devices or hosts. A mapped train
  step therefore sums (`jax.lax.psum`) the parameter gradients of the terms
  over the axis. (Plain `jax.pmap` differentiates a replicated value once per
  device; the functions undo that factor so the two mappings agree.)
"""

from __future__ import annotations

from typing import Hashable, Sequence

import jax
import jax.numpy as jnp

AxisName = Hashable | Sequence[Hashable] | None

# Added to var_bar inside log() in Eq. 19. The reference code adds nothing and
# returns NaN for a global batch of 1 (var_bar = 0 for the 'mu' source). 1e-6
# keeps the log finite there and is far below any variance a healthy latent
# has (the term pushes var_bar towards 1), so it does not change training.
KL_GLOBAL_EPS = 1e-6

VARIANCE_SOURCES = ("z", "mu", "mixture")
BATCH_REDUCTIONS = ("mean", "sum")


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _axis_names(axis_name: AxisName) -> tuple[Hashable, ...]:
  if axis_name is None:
    return ()
  if isinstance(axis_name, (tuple, list)):
    return tuple(axis_name)
  return (axis_name,)


def _axis_size(axis_name: AxisName) -> int | jax.Array:
  """Number of devices along the mapped axis (1 when unmapped)."""
  if axis_name is None:
    return 1
  return jax.lax.psum(1, axis_name)


def _sum_over_axis(x: jax.Array, axis_name: AxisName) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _batch_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """Sums x over its leading (batch) axis and over the mapped devices."""
  return _sum_over_axis(jnp.sum(x, axis=0), axis_name)


def _batch_mean(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """Mean of x over the leading axis of the global batch."""
  return _batch_sum(x, axis_name) / (x.shape[0] * _axis_size(axis_name))


def _reduce_batch(per_example: jax.Array, reduction: str,
                  axis_name: AxisName) -> jax.Array:
  """Reduces a [B] vector of per-example values over the global batch."""
  if reduction == "mean":
    return _batch_mean(per_example, axis_name)
  if reduction == "sum":
    return _batch_sum(per_example, axis_name)
  raise ValueError(f"batch_reduction must be one of {BATCH_REDUCTIONS}, got "
                   f"{reduction!r}")


def _differentiates_per_device(x: jax.Array, axis_name: AxisName) -> bool:
  """Whether grad of a replicated value counts every device's copy.

  `jax.pmap` (and `jax.shard_map(..., check_vma=False)`) transposes `psum` into
  `psum`, so the gradient of a value that every device holds equals the number
  of devices times the gradient of that value. `jax.shard_map` with
  varying-manual-axes typing (the default) counts the value once. The typing
  tells the two apart: there, the per-device inputs vary over the axis.
  """
  names = _axis_names(axis_name)
  if not names:
    return False
  varying = _varying_axes(x)
  return not all(name in varying for name in names)


def _varying_axes(x: jax.Array) -> frozenset[Hashable]:
  """The mapped axes x varies over under shard_map's typing (empty if none)."""
  aval = jax.typeof(x)
  for get in (lambda a: a.vma, lambda a: a.mat.varying):
    try:
      return frozenset(get(aval))
    except AttributeError:
      continue
  return frozenset()


def _global_value(value: jax.Array, like: jax.Array,
                  axis_name: AxisName) -> jax.Array:
  """Makes the gradient of a globally reduced value a per-device slice.

  Args:
    value: a value reduced over the global batch (the same on every device).
    like: an input of this device (used only for its type).
    axis_name: the mapped axis, or None.

  Returns:
    `value` unchanged, with its gradient divided by the axis size where the
    mapping would count every device's copy (see `_differentiates_per_device`).
  """
  if not _differentiates_per_device(like, axis_name):
    return value
  scaled = value / _axis_size(axis_name)
  return scaled + jax.lax.stop_gradient(value - scaled)


def mixture_moments(
    mu: jax.Array,
    z: jax.Array | None,
    *,
    logvar: jax.Array | None = None,
    axis_name: AxisName = None,
    variance_source: str = "z",
) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of the mixture posterior (Eqs. 17-18).

  The posterior is the mixture (1/N) sum_i N(mu_i, sigma_i^2) of the
  individual posteriors (Eq. 14). Its moments are estimated from the global
  batch of N examples, per latent dimension j:

    mu_bar_j  = 1/N sum_i mu_ij                         (Eq. 17)
    var_bar_j = 1/N sum_i (z_ij - mu_bar_j)^2            (Eq. 18, 'z')

  Args:
    mu: posterior means, [B, d], B examples on this device.
    z: posterior samples z = mu + sigma * eps (Eq. 6), [B, d]. Needed for
      `variance_source='z'`; may be None otherwise.
    logvar: posterior log-variances log sigma^2, [B, d]. Needed for
      `variance_source='mixture'`.
    axis_name: the mapped axis (pmap or shard_map) the batch is split over, or
      None when the arrays hold the whole batch (see the module docstring).
      With an axis, the moments are those of the concatenated global batch,
      identical on every device, and gradients through them are this
      device's slices of the global gradients.
    variance_source: where var_bar comes from:
      'z':       Eq. 18, spread of the samples z around mu_bar (the paper).
      'mu':      population variance of mu over the batch (the reference code).
      'mixture': the exact variance of the mixture,
                 var(mu) + mean(sigma^2).

  Returns:
    (mu_bar, var_bar), each float32 [d].
  """
  if variance_source not in VARIANCE_SOURCES:
    raise ValueError(f"variance_source must be one of {VARIANCE_SOURCES}, got "
                     f"{variance_source!r}")
  if mu.ndim != 2:
    raise ValueError(f"mu must be [batch, latents], got shape {mu.shape}")
  mu = _f32(mu)
  mu_bar = _batch_mean(mu, axis_name)
  if variance_source == "z":
    if z is None:
      raise ValueError("variance_source='z' (Eq. 18) needs the samples z; "
                       "pass z or choose variance_source='mu' or 'mixture'")
    if z.shape != mu.shape:
      raise ValueError(f"z {z.shape} and mu {mu.shape} must have one shape")
    var_bar = _batch_mean(jnp.square(_f32(z) - mu_bar), axis_name)
  else:
    var_bar = _batch_mean(jnp.square(mu - mu_bar), axis_name)
    if variance_source == "mixture":
      if logvar is None:
        raise ValueError("variance_source='mixture' needs logvar: the mixture "
                         "variance is var(mu) + mean(exp(logvar))")
      var_bar = var_bar + _batch_mean(jnp.exp(_f32(logvar)), axis_name)
  return (_global_value(mu_bar, mu, axis_name),
          _global_value(var_bar, mu, axis_name))


def kl_global(
    mu: jax.Array,
    z: jax.Array | None,
    *,
    logvar: jax.Array | None = None,
    axis_name: AxisName = None,
    variance_source: str = "z",
    eps: float = KL_GLOBAL_EPS,
) -> jax.Array:
  """KL_G: the mixture posterior against the prior N(0, I) (Eq. 19).

    KL_G = 1/2 sum_j [var_bar_j + mu_bar_j^2 - 1 - log(var_bar_j + eps)]

  with mu_bar, var_bar from `mixture_moments` (Eqs. 17-18) over the global
  batch. Unlike the standard KL (Eq. 10) it asks only the *mean* of the
  individual means to be 0 and their spread to be 1, so individual posteriors
  are free to move apart. It is one term per global batch, whatever the
  batch reduction of the other terms.

  Args:
    mu: posterior means, [B, d].
    z: posterior samples, [B, d] (None unless variance_source='z').
    logvar: posterior log-variances, [B, d] (for variance_source='mixture').
    axis_name: the mapped axis the batch is split over, or None. With an axis
      the value is that of the concatenated global batch on every device and
      the gradient w.r.t. this device's mu, z, logvar is its slice of the
      global gradient (see the module docstring).
    variance_source: 'z' (the paper), 'mu' (the reference code) or
      'mixture'; see `mixture_moments`.
    eps: added to var_bar inside the log so that a global batch of 1 and
      var_bar -> 0 stay finite; default `KL_GLOBAL_EPS` = 1e-6 (the reference
      code uses 0).

  Returns:
    A float32 scalar.
  """
  mu_bar, var_bar = mixture_moments(
      mu, z, logvar=logvar, axis_name=axis_name,
      variance_source=variance_source)
  # The moments already carry the global-gradient convention; no rescaling.
  return 0.5 * jnp.sum(var_bar + jnp.square(mu_bar) - 1.0
                       - jnp.log(var_bar + eps))


def kl_individual(
    logvar: jax.Array,
    *,
    axis_name: AxisName = None,
    batch_reduction: str = "mean",
) -> jax.Array:
  """KL_I: keeps individual posteriors from collapsing to a Dirac delta (Eq. 20).

  Per example i:  sum_j [sigma_ij^2 - 1 - log sigma_ij^2],  sigma^2 = exp(logvar).

  This is 2 KL(N(mu_i, sigma_i^2) || N(mu_i, I)): it penalises variances far
  from 1 and ignores the means. As printed in the paper it has no factor 1/2;
  the reference code multiplies it by 0.1 and takes the batch mean, which
  mixvae expresses through the weight beta_2.

  Args:
    logvar: posterior log-variances, [B, d].
    axis_name: the mapped axis the batch is split over, or None.
    batch_reduction: 'mean' over the global batch (default, the reference
      code) or 'sum' (Eq. 20 as printed).

  Returns:
    A float32 scalar.
  """
  logvar = _f32(logvar)
  per_example = jnp.sum(jnp.exp(logvar) - 1.0 - logvar, axis=-1)
  value = _reduce_batch(per_example, batch_reduction, axis_name)
  return _global_value(value, logvar, axis_name)


def kl_standard(
    mu: jax.Array,
    logvar: jax.Array,
    *,
    axis_name: AxisName = None,
    batch_reduction: str = "mean",
) -> jax.Array:
  """The standard VAE's KL to N(0, I) (Eq. 10), for the VAE and beta-VAE baselines.

  Per example i:  1/2 sum_j [sigma_ij^2 + mu_ij^2 - 1 - log sigma_ij^2].

  Args:
    mu: posterior means, [B, d].
    logvar: posterior log-variances, [B, d].
    axis_name: the mapped axis the batch is split over, or None.
    batch_reduction: 'mean' over the global batch (default, the reference
      baseline) or 'sum' (Eq. 10 as printed).

  Returns:
    A float32 scalar.
  """
  mu, logvar = _f32(mu), _f32(logvar)
  per_example = 0.5 * jnp.sum(
      jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)
  value = _reduce_batch(per_example, batch_reduction, axis_name)
  return _global_value(value, mu, axis_name)


def l1_reconstruction(
    x: jax.Array,
    x_hat: jax.Array,
    *,
    axis_name: AxisName = None,
    pixel_reduction: str = "mean",
    batch_reduction: str = "mean",
) -> jax.Array:
  """L1 reconstruction error ||x - x_hat|| (Eq. 21, first term).

  Args:
    x: input images, [B, H, W, C].
    x_hat: reconstructions, [B, H, W, C].
    axis_name: the mapped axis the batch is split over, or None.
    pixel_reduction: per example, 'mean' absolute error over H, W, C
      (default, the reference code) or 'sum' (the L1 norm of Eq. 21).
    batch_reduction: 'mean' (default) or 'sum' over the global batch.

  Returns:
    A float32 scalar; the defaults give the mean absolute error over all
    elements of the global batch.
  """
  if x.shape != x_hat.shape:
    raise ValueError(f"x {x.shape} and x_hat {x_hat.shape} must have one shape")
  diff = jnp.abs(_f32(x) - _f32(x_hat)).reshape(x.shape[0], -1)
  if pixel_reduction == "mean":
    per_example = jnp.mean(diff, axis=-1)
  elif pixel_reduction == "sum":
    per_example = jnp.sum(diff, axis=-1)
  else:
    raise ValueError(f"pixel_reduction must be 'mean' or 'sum', got "
                     f"{pixel_reduction!r}")
  value = _reduce_batch(per_example, batch_reduction, axis_name)
  return _global_value(value, x_hat, axis_name)


def _cross_entropy(logits: jax.Array, label: float, batch_reduction: str,
                   axis_name: AxisName) -> jax.Array:
  """H[label, sigmoid(logits)] per patch, mean over patches, then over batch."""
  logits = _f32(logits)
  # -log sigmoid(l) = softplus(-l); -log(1 - sigmoid(l)) = softplus(l). The
  # softplus form never exponentiates a large positive number.
  per_patch = jax.nn.softplus(-logits if label == 1.0 else logits)
  per_example = jnp.mean(per_patch.reshape(logits.shape[0], -1), axis=-1)
  return _reduce_batch(per_example, batch_reduction, axis_name)


def generator_adversarial(
    fake_logits: jax.Array,
    *,
    axis_name: AxisName = None,
    batch_reduction: str = "mean",
) -> jax.Array:
  """The generator's adversarial term H[1, D(x_hat)] (Eqs. 21-22).

  Binary cross-entropy of the PatchGAN logits of reconstructions against the
  label "real", mean over patches, i.e. -mean log sigmoid(D(x_hat)) (the
  non-saturating GAN loss).

  Args:
    fake_logits: discriminator logits for x_hat, [B, h, w, 1].
    axis_name: the mapped axis the batch is split over, or None.
    batch_reduction: 'mean' (default) or 'sum' over the global batch.

  Returns:
    A float32 scalar.
  """
  value = _cross_entropy(fake_logits, 1.0, batch_reduction, axis_name)
  return _global_value(value, fake_logits, axis_name)


def discriminator_adversarial(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    *,
    axis_name: AxisName = None,
    batch_reduction: str = "mean",
) -> jax.Array:
  """The discriminator's loss H[1, D(x)] + H[0, D(x_hat)] (Eq. 23).

  Args:
    real_logits: discriminator logits for real images x, [B, h, w, 1].
    fake_logits: discriminator logits for reconstructions x_hat, [B, h, w, 1].
    axis_name: the mapped axis the batch is split over, or None.
    batch_reduction: 'mean' (default) or 'sum' over the global batch.

  Returns:
    A float32 scalar: the sum of the two cross-entropies, each a mean over
    patches.
  """
  value = (_cross_entropy(real_logits, 1.0, batch_reduction, axis_name)
           + _cross_entropy(fake_logits, 0.0, batch_reduction, axis_name))
  return _global_value(value, real_logits, axis_name)
