r"""The demo: the paper's model on the embedded LFW faces, on a CPU.

  python launch/main.py --config=configs/demo.py --workdir=workdirs/demo

A smoke-scale demo, not CelebA-HQ: the 100 grey 25x25 LFW face crops that
scikit-image ships (no download), replicated to RGB and resized to 32x32,
80 for training and 20 for test. The model is the paper's architecture,
narrowed and with three stages for 32x32 (4x4 at the bottom), trained with
the paper's losses (Eqs. 19-23) and weights. It finishes in a few minutes on a
2-core CPU and writes reconstructions and prior samples to WORKDIR/images/.

Variants: `demo.py:vae` and `demo.py:beta_vae,beta=B` train the baselines on
the same data and steps.
"""

from configs import celebahq


def get_config(arg=None):
  """The demo config; `arg` is passed to configs/celebahq.py's variants."""
  variant = arg if arg and arg.split(",")[0] in ("vae", "beta_vae") else None
  if arg and variant is None:
    raise ValueError(f"configs/demo.py takes 'vae' or 'beta_vae,beta=B', got "
                     f"{arg!r}")
  config = celebahq.get_config(variant)
  config.unlock()
  celebahq.small_model(config, width=32, latent_dim=64)
  config.model.norm = "group"
  config.discriminator.norm = "group"
  config.update(dict(batch_size=16, num_train_steps=1500, log_every_steps=50,
                     checkpoint_every_steps=500, image_every_steps=500,
                     eval_every_steps=500, num_grid_images=16))
  config.optimizer.update(dict(learning_rate=5e-4, disc_learning_rate=2e-4))
  config.loss.disc_start_step = 300
  config.training.ema_decay = 0.99
  config.lock()
  return config
