r"""The ablation's runs: natural-image patches, sized for a 2-core CPU.

  python launch/ablation.py --config=configs/patches.py --seeds=3 --workdir=DIR

The data: 32x32 crops of the RGB photographs scikit-image bundles, 40,000 for
training and 5,000 for test, cut from photographs held out whole
(mixvae/data/patches.py; no download). The model: the demo's narrow
three-stage network (width 32, 64 latents) with the paper's BatchNorm. The variants share
data, steps, architecture and optimizer and differ only in the loss:

  paper      KL_G + KL_I + L1 + PatchGAN (Eqs. 19-23), the full method;
  no_gan     the same without the PatchGAN (beta_4 = 0);
  no_kli     the same without KL_I (beta_2 = 0);
  vae        the standard VAE (Eq. 10, beta = 1) + L1, no discriminator;
  beta_vae   the beta-VAE (Eq. 10, beta = 4 or beta=B) + L1.

`seed=S` sets the run's seed (initialization, noise and data order; the
crops are the same for every seed), e.g. `patches.py:no_kli,seed=2`.
"""

from configs import celebahq

VARIANTS = ("paper", "no_gan", "no_kli", "vae", "beta_vae")


def get_config(arg=None):
  """The config of one ablation run (`VARIANTS`, `beta=B`, `seed=S`)."""
  from mixvae import config_utils  # pylint: disable=g-import-not-at-top
  parsed = config_utils.parse_arg(arg, variants=VARIANTS, beta=4.0, seed=0)
  variant = parsed.variant or "paper"
  config = celebahq.get_config(
      f"beta_vae,beta={parsed.beta}" if variant == "beta_vae" else
      "vae" if variant == "vae" else None)
  config.unlock()
  # The paper's BatchNorm, not the demo's GroupNorm: normalizing each
  # example's features on its own hides its mean colour and brightness, and
  # on these crops every loss then ignores its latents (README).
  celebahq.small_model(config, width=32, latent_dim=64)
  config.data.update(dict(source="patches", num_train=40_000, num_test=5_000))
  config.seed = parsed.seed
  # 1,500 steps and FID/KID on 300 test crops: the grid (5 runs x 3 seeds,
  # two at once) took 82 minutes on a 2-core CPU (README).
  config.update(dict(batch_size=16, num_train_steps=1500, log_every_steps=100,
                     checkpoint_every_steps=500, image_every_steps=0,
                     num_grid_images=16))
  config.eval_every_steps = config.get_ref("num_train_steps")  # At the end.
  config.eval.num_examples = 300
  config.optimizer.update(dict(learning_rate=5e-4, disc_learning_rate=2e-4))
  config.loss.disc_start_step = 400
  config.training.ema_decay = 0.99
  if variant == "no_gan":
    config.loss.beta_adversarial = 0.0
  elif variant == "no_kli":
    config.loss.beta_kl_individual = 0.0
  config.lock()
  return config
