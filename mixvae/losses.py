"""The loss terms of "How to train your VAE" (Rivera, 2024) as pure JAX functions.

Shapes: `mu`, `z`, `logvar` [B, d]; images [B, H, W, C]; PatchGAN logits
[B, H/8, W/8, 1]. Statistics, logs and exps are computed in float32, or in
float64 for float64 inputs; results are scalars of that dtype.

Sign convention: Eqs. 22-23 print the likelihood terms with a minus. As losses
to minimise every term is non-negative and added (weights applied by the
trainer):
  generator     = b1 KL_G + b2 KL_I + b3 L1 + b4 H[1, D(x_hat)]
  discriminator = b4 (H[1, D(x)] + H[0, D(x_hat)])

Reductions: per-example terms take `batch_reduction='mean'` (the reference
code; weights independent of the batch size) or `'sum'` (the paper's sums).
KL_G is one term per global batch.

The global batch: with `axis_name=None` a function reduces over the arrays it
is given (under `jax.jit` on a sharded batch that is the global batch). Inside
`jax.pmap` or `jax.shard_map` pass the mapped axis name (or tuple of names)
and the `mapping`: the value is then that of the concatenated global batch on
every device, and its gradient with respect to a device's inputs is that
device's slice of the global gradient. `mapping` says how the caller's map
differentiates a value every device holds:
  'pmap'       `jax.pmap`, or `jax.shard_map(..., check_vma=False)`: every
               device's copy is differentiated, so the functions divide the
               gradient by the axis size;
  'shard_map'  `jax.shard_map` with varying-axes checking (its default): the
               value is differentiated once.
A mapped train step then `psum`s its parameter gradients ('pmap'), or takes
them as they come for parameters replicated over the axis ('shard_map').
"""

from __future__ import annotations

from typing import Hashable, Sequence

import jax
import jax.numpy as jnp

AxisName = Hashable | Sequence[Hashable] | None

# Added to var_bar inside log() in Eq. 19. The reference code adds nothing and
# returns NaN for a global batch of 1; 1e-6 is far below any healthy latent
# variance (KL_G pulls var_bar towards 1).
KL_GLOBAL_EPS = 1e-6

VARIANCE_SOURCES = ("z", "mu", "mixture")
BATCH_REDUCTIONS = ("mean", "sum")
PIXEL_REDUCTIONS = ("mean", "sum")
MAPPINGS = ("pmap", "shard_map")


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f"{name}={value!r}: use one of {list(allowed)}")


def _float(x: jax.Array) -> jax.Array:
  """x in float32, or float64 if it is float64."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _axis_size(axis_name: AxisName) -> int | jax.Array:
  return 1 if axis_name is None else jax.lax.psum(1, axis_name)


def _batch_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """Sum over the leading axis of the global batch."""
  s = jnp.sum(x, axis=0)
  return s if axis_name is None else jax.lax.psum(s, axis_name)


def _batch_mean(x: jax.Array, axis_name: AxisName) -> jax.Array:
  return _batch_sum(x, axis_name) / (x.shape[0] * _axis_size(axis_name))


def _reduce_batch(per_example: jax.Array, reduction: str,
                  axis_name: AxisName) -> jax.Array:
  _check("batch_reduction", reduction, BATCH_REDUCTIONS)
  if reduction == "mean":
    return _batch_mean(per_example, axis_name)
  return _batch_sum(per_example, axis_name)


def _global_value(value: jax.Array, axis_name: AxisName,
                  mapping: str | None) -> jax.Array:
  """`value` with its gradient divided by the axis size under 'pmap'."""
  if axis_name is None:
    return value
  if mapping is None:
    raise ValueError(
        f"axis_name={axis_name!r} needs mapping='pmap' (jax.pmap, or "
        "jax.shard_map with check_vma=False) or mapping='shard_map' (jax."
        "shard_map with its default check_vma=True): the two differentiate a "
        "replicated value differently")
  _check("mapping", mapping, MAPPINGS)
  if mapping == "shard_map":
    return value
  scaled = value / _axis_size(axis_name)
  return scaled + jax.lax.stop_gradient(value - scaled)


def mixture_moments(mu: jax.Array, z: jax.Array | None, *,
                    logvar: jax.Array | None = None,
                    axis_name: AxisName = None, mapping: str | None = None,
                    variance_source: str = "z"
                    ) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of the mixture posterior (Eqs. 17-18).

  Over the N examples of the global batch, per latent j:
    mu_bar_j  = 1/N sum_i mu_ij                       (Eq. 17)
    var_bar_j = 1/N sum_i (z_ij - mu_bar_j)^2         (Eq. 18, 'z')

  Args:
    mu: posterior means [B, d].
    z: samples z = mu + sigma eps (Eq. 6) [B, d]; needed for 'z'.
    logvar: log sigma^2 [B, d]; needed for 'mixture'.
    axis_name: the mapped axis the batch is split over, or None.
    mapping: 'pmap' or 'shard_map' when `axis_name` is set (module docstring).
    variance_source: 'z' (the paper), 'mu' (population variance of mu, the
      reference code) or 'mixture' (the exact var(mu) + mean(sigma^2)).

  Returns:
    (mu_bar, var_bar), each [d].
  """
  _check("variance_source", variance_source, VARIANCE_SOURCES)
  if mu.ndim != 2:
    raise ValueError(f"mu must be [batch, latents], got shape {mu.shape}")
  mu = _float(mu)
  mu_bar = _batch_mean(mu, axis_name)
  if variance_source == "z":
    if z is None or z.shape != mu.shape:
      raise ValueError(f"variance_source='z' (Eq. 18) needs the samples z, of "
                       f"one shape with mu {mu.shape}; got "
                       f"{None if z is None else z.shape}")
    var_bar = _batch_mean(jnp.square(_float(z) - mu_bar), axis_name)
  else:
    var_bar = _batch_mean(jnp.square(mu - mu_bar), axis_name)
    if variance_source == "mixture":
      if logvar is None:
        raise ValueError("variance_source='mixture' needs logvar")
      var_bar = var_bar + _batch_mean(jnp.exp(_float(logvar)), axis_name)
  return (_global_value(mu_bar, axis_name, mapping),
          _global_value(var_bar, axis_name, mapping))


def kl_global(mu: jax.Array, z: jax.Array | None, *,
              logvar: jax.Array | None = None, axis_name: AxisName = None,
              mapping: str | None = None, variance_source: str = "z",
              eps: float = KL_GLOBAL_EPS) -> jax.Array:
  """KL_G, the mixture posterior against N(0, I) (Eq. 19).

    KL_G = 1/2 sum_j [var_bar_j + mu_bar_j^2 - 1 - log(var_bar_j + eps)]

  with (mu_bar, var_bar) of `mixture_moments` over the global batch; one term
  per global batch.

  Args:
    mu, z, logvar: [B, d], as in `mixture_moments`.
    axis_name, mapping, variance_source: as in `mixture_moments`.
    eps: inside the log; `KL_GLOBAL_EPS` (the reference code: 0).

  Returns:
    A scalar.
  """
  mu_bar, var_bar = mixture_moments(
      mu, z, logvar=logvar, axis_name=axis_name, mapping=mapping,
      variance_source=variance_source)
  return 0.5 * jnp.sum(var_bar + jnp.square(mu_bar) - 1.0
                       - jnp.log(var_bar + eps))


def kl_individual(logvar: jax.Array, *, axis_name: AxisName = None,
                  mapping: str | None = None,
                  batch_reduction: str = "mean") -> jax.Array:
  """KL_I, against the collapse of each posterior to a Dirac delta (Eq. 20).

  Per example: sum_j [sigma_ij^2 - 1 - log sigma_ij^2] (no factor 1/2, as
  printed; the reference code's extra 0.1 is in beta_2).

  Args:
    logvar: log sigma^2 [B, d].
    axis_name, mapping: as in `mixture_moments`.
    batch_reduction: 'mean' (the reference code) or 'sum' (Eq. 20).
  """
  logvar = _float(logvar)
  per_example = jnp.sum(jnp.exp(logvar) - 1.0 - logvar, axis=-1)
  return _global_value(_reduce_batch(per_example, batch_reduction, axis_name),
                       axis_name, mapping)


def kl_standard(mu: jax.Array, logvar: jax.Array, *,
                axis_name: AxisName = None, mapping: str | None = None,
                batch_reduction: str = "mean") -> jax.Array:
  """The standard VAE's KL to N(0, I) (Eq. 10), for the VAE and beta-VAE.

  Per example: 1/2 sum_j [sigma_ij^2 + mu_ij^2 - 1 - log sigma_ij^2].

  Args:
    mu, logvar: [B, d].
    axis_name, mapping: as in `mixture_moments`.
    batch_reduction: 'mean' (the reference baseline) or 'sum' (Eq. 10).
  """
  mu, logvar = _float(mu), _float(logvar)
  per_example = 0.5 * jnp.sum(
      jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)
  return _global_value(_reduce_batch(per_example, batch_reduction, axis_name),
                       axis_name, mapping)


def l1_reconstruction(x: jax.Array, x_hat: jax.Array, *,
                      axis_name: AxisName = None, mapping: str | None = None,
                      pixel_reduction: str = "mean",
                      batch_reduction: str = "mean") -> jax.Array:
  """The L1 reconstruction error ||x - x_hat|| (Eq. 21, first term).

  Args:
    x, x_hat: images [B, H, W, C].
    axis_name, mapping: as in `mixture_moments`.
    pixel_reduction: per example, 'mean' over H, W, C (the reference code) or
      'sum' (the L1 norm).
    batch_reduction: 'mean' or 'sum'.
  """
  if x.shape != x_hat.shape:
    raise ValueError(f"x {x.shape} and x_hat {x_hat.shape} must have one shape")
  _check("pixel_reduction", pixel_reduction, PIXEL_REDUCTIONS)
  diff = jnp.abs(_float(x) - _float(x_hat)).reshape(x.shape[0], -1)
  per_example = (jnp.mean(diff, axis=-1) if pixel_reduction == "mean"
                 else jnp.sum(diff, axis=-1))
  return _global_value(_reduce_batch(per_example, batch_reduction, axis_name),
                       axis_name, mapping)


def _cross_entropy(logits: jax.Array, label: float, batch_reduction: str,
                   axis_name: AxisName) -> jax.Array:
  """H[label, sigmoid(logits)], mean over patches, then over the batch.

  -log sigmoid(l) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l):
  stable for large logits.
  """
  logits = _float(logits)
  per_patch = jax.nn.softplus(-logits if label == 1.0 else logits)
  per_example = jnp.mean(per_patch.reshape(logits.shape[0], -1), axis=-1)
  return _reduce_batch(per_example, batch_reduction, axis_name)


def generator_adversarial(fake_logits: jax.Array, *,
                          axis_name: AxisName = None,
                          mapping: str | None = None,
                          batch_reduction: str = "mean") -> jax.Array:
  """The generator's H[1, D(x_hat)] (Eqs. 21-22): non-saturating GAN loss.

  Args:
    fake_logits: PatchGAN logits of x_hat [B, h, w, 1].
    axis_name, mapping: as in `mixture_moments`.
    batch_reduction: 'mean' or 'sum'.
  """
  return _global_value(
      _cross_entropy(fake_logits, 1.0, batch_reduction, axis_name),
      axis_name, mapping)


def discriminator_adversarial(real_logits: jax.Array, fake_logits: jax.Array,
                              *, axis_name: AxisName = None,
                              mapping: str | None = None,
                              batch_reduction: str = "mean") -> jax.Array:
  """The discriminator's H[1, D(x)] + H[0, D(x_hat)] (Eq. 23).

  Args:
    real_logits: PatchGAN logits of x [B, h, w, 1].
    fake_logits: PatchGAN logits of x_hat [B, h, w, 1].
    axis_name, mapping: as in `mixture_moments`.
    batch_reduction: 'mean' or 'sum'.
  """
  value = (_cross_entropy(real_logits, 1.0, batch_reduction, axis_name)
           + _cross_entropy(fake_logits, 0.0, batch_reduction, axis_name))
  return _global_value(value, axis_name, mapping)
