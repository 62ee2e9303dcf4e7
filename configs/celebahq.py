r"""CelebA-HQ 256x256: the paper's mixture-posterior VAE-GAN and its variants.

Usage:
  python launch/main.py --config=configs/celebahq.py --workdir=DIR
  python launch/inspect_model.py --config=configs/celebahq.py:reference

Variants (`--config=configs/celebahq.py:VARIANT`):
  (none)     the paper: Section 3.4 networks, synchronized BatchNorm.
  reference  the author's released Keras model and training: every
             normalization is a learnable per-channel scale and shift
             ('affine'), because the released code never ran its BatchNorms
             in training mode; Keras's Adam, raw weights, plain bilinear
             resizing, 300 Keras epochs.
  vae        the standard VAE baseline (Eq. 10), no discriminator.
  beta_vae   the beta-VAE baseline: `beta_vae,beta=4` (default beta 4).
  test       tiny (32x32, narrow, 3 stages, 20 steps) for the tests.

Override any field on the command line, e.g. `--config.num_train_steps=200`;
the config is locked, so a misspelt field fails at once.

Fields: the top level holds the run's seed, global batch and the loop's
schedule (every step count and interval, and what the loop keeps or draws);
each block holds the settings of one component (model, discriminator, data,
loss, optimizer, training = the update rule of Algorithm 1).
"""

import ml_collections

from mixvae import config_utils

VARIANTS = ("reference", "vae", "beta_vae", "test")


def get_config(arg=None):
  """Returns the locked config for `arg` (see the module docstring)."""
  arg = config_utils.parse_arg(arg, variants=VARIANTS, beta=4.0)
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- The VAE (Fig. 3 a-c). -------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.resolution = 256      # H = W; a power of two, 32 to 1024.
  config.model.channels = 3          # C of the images.
  config.model.width = 128           # Channels of every residual stage.
  config.model.num_stages = 6        # Down (encoder) / up (decoder) stages.
  config.model.encoder_blocks = 2    # Id-ResBlocks before each Conv-ResBlock.
  config.model.decoder_blocks = 1    # Id-ResBlocks before each Conv-ResBlock-Trans.
  config.model.bottleneck_channels = 64  # 1x1 conv after the last stage.
  config.model.latent_dim = 512      # d.
  config.model.input_norm = "layer"  # 'layer' (over H, W per channel) | 'none'.
  config.model.norm = "batch"        # 'batch' | 'group' | 'affine' | 'none'.
  config.model.norm_groups = 32      # For 'group'.
  config.model.batch_norm_momentum = 0.99
  config.model.norm_epsilon = 1e-3   # 'batch', 'group', input LayerNorm.
  config.model.activation = "relu"
  config.model.decoder_output = "linear"  # 'linear' (reference) | 'tanh'.
  config.model.dtype = "float32"     # Compute dtype; parameters stay float32.
  # Rematerialize each encoder/decoder stage in the backward pass: less
  # activation memory (larger per-device batches) for about one more forward.
  config.model.remat = False

  # ---- The PatchGAN discriminator (Section 3.3). -----------------------
  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.features = (128, 128, 128, 64, 64, 1)
  config.discriminator.strides = (2, 2, 2, 1, 1, 1)
  config.discriminator.kernel_size = 3
  config.discriminator.norm = "batch"  # 'batch' | 'group' | 'affine' | 'none'.
  config.discriminator.norm_groups = 32
  config.discriminator.batch_norm_momentum = 0.99
  config.discriminator.norm_epsilon = 1e-3
  # Normalize the logits too (the reference, where the norm is 'affine'). Off
  # otherwise: a 'batch' or 'group' norm of the one-channel logit map would
  # force its mean to 0 for each pass, hiding "all real" / "all fake".
  config.discriminator.final_norm = False
  config.discriminator.leaky_relu_slope = 0.3
  config.discriminator.dropout = 0.25
  config.discriminator.dtype = "float32"

  # ---- Data (mixvae/data; Section 4: 24,000 train / 6,000 test). -------
  config.batch_size = 16             # Global batch; divides by device count.
  config.data = ml_collections.ConfigDict()
  # 'tfds': the dataset prepared by launch/prepare_data.py in data_dir;
  # 'folder': image_dir read directly; 'embedded': scikit-image's 100 LFW
  # faces (a smoke-scale demo, no download; not CelebA-HQ); 'patches': crops
  # of scikit-image's photographs (configs/patches.py).
  config.data.source = "tfds"
  config.data.name = "face_folder"   # The TFDS builder ('tfds' source).
  config.data.data_dir = ""          # TFDS data_dir, local or gs://.
  config.data.image_dir = ""         # Folder of JPG/PNG ('folder' source).
  # Linked to config.model.resolution: overriding either changes both.
  config.data.resolution = config.model.get_ref("resolution")
  config.data.split = "paper"        # 'paper' (first N after sort) | 'reference'.
  config.data.sort = "alphabetical"  # 'alphabetical' | 'natural' (2 < 10).
  config.data.num_train = 24000      # Training images; 0 means 80%.
  config.data.num_test = 0           # Test crops ('patches' only).
  config.data.flip = True            # Horizontal flips (training only).
  # Bilinear resizing with antialiasing ('antialias') or without ('bilinear',
  # the reference code's); both rounded to uint8.
  config.data.resize = "antialias"
  config.data.eval_batch_size = 0    # Global; 0 means config.batch_size.
  config.data.num_parallel_calls = -1  # Decode parallelism; -1: AUTOTUNE.
  config.data.num_threads = 0        # tf.data thread pool; 0: all cores.
  config.data.prefetch = 2           # Batches kept ahead on the devices.

  # ---- Training (Algorithm 1). ------------------------------------------
  # Epochs = steps x batch_size / num_train: 800,000 steps are 533 epochs of
  # 24,000 at batch 16, 333 at batch 10.
  config.num_train_steps = 800_000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3        # The last K checkpoints are kept.
  config.image_every_steps = 5_000   # Image grids; 0: none.
  config.num_grid_images = 16
  config.profile_steps = 0  # >0: profile that many steps (TensorBoard).
  config.eval_every_steps = 5_000    # Evaluate the test split; 0: never.

  # Evaluation inside training (mixvae/evaluation/evaluate.py): the EMA
  # weights on the test split, at eval_every_steps and at the end, written to
  # WORKDIR/eval/<step>.json and TensorBoard under eval/.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_examples = 0       # The first N test examples; 0: all.
  # FID/KID and LPIPS weights (.npz); '': $MIXVAE_INCEPTION_WEIGHTS /
  # $MIXVAE_LPIPS_WEIGHTS, or skipped with a log line.
  config.eval.inception_weights = ""
  config.eval.lpips_weights = ""
  # A directory for the test images' Inception features, shared by runs on
  # the same test split (mixvae/evaluation/feature_cache.py); '': none.
  config.eval.feature_cache = ""
  # Also keep the best checkpoint by this metric ('': only the last K):
  # l1 | psnr | ssim | lpips | fid_recon | fid_prior | kid_recon | kid_prior.
  config.eval.best_metric = ""

  # Loss (Eq. 22 for the generator, Eq. 23 for the discriminator; see
  # mixvae/losses.py for the sign and reduction conventions).
  config.loss = ml_collections.ConfigDict()
  config.loss.family = "mixture"     # 'mixture' (the paper) | 'standard' (Eq. 10).
  config.loss.beta_kl_global = 1.0   # beta_1, KL_G (Eq. 19).
  config.loss.beta_kl_individual = 0.5  # beta_2, KL_I (Eq. 20).
  config.loss.beta_reconstruction = 1000.0  # beta_3, L1 (Eq. 21).
  config.loss.beta_adversarial = 100.0  # beta_4, PatchGAN; 0 turns it off.
  config.loss.beta = 1.0             # Weight of Eq. 10 ('standard' family).
  config.loss.variance_source = "z"  # Eq. 18: 'z' (paper) | 'mu' (ref.) | 'mixture'.
  config.loss.kl_global_eps = 1e-6   # Inside log(var_bar) of Eq. 19.
  config.loss.batch_reduction = "mean"  # Per-example terms: 'mean' | 'sum'.
  config.loss.pixel_reduction = "mean"  # L1 per example: 'mean' | 'sum'.
  config.loss.disc_start_step = 0    # Adversarial terms from this step on.

  # Two Adam optimizers, as in the reference code.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4  # Generator (VAE).
  config.optimizer.disc_learning_rate = 1e-4
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-7
  # 'optax': eps + sqrt(v_hat); 'keras': eps + sqrt(v), both bias corrections
  # in the step size (= optax's with eps / sqrt(1 - b2^t)).
  config.optimizer.eps_form = "optax"
  config.optimizer.schedule = "constant"  # 'constant' | 'cosine'.
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0  # 0: no clipping.

  config.training = ml_collections.ConfigDict()
  # 'simultaneous': both updates from one forward pass (reference code);
  # 'alternating': the discriminator sees the updated generator's output.
  config.training.update_scheme = "simultaneous"
  config.training.ema_decay = 0.999  # EMA of the VAE params, for evaluation.

  if arg.variant == "reference":
    config.model.norm = "affine"
    config.discriminator.norm = "affine"
    config.discriminator.final_norm = True
    # The released dropout never fired either (no `training=True` anywhere).
    config.discriminator.dropout = 0.0
    # The released losses: var_bar from mu, no epsilon in the log, KL_I
    # scaled by 0.1 and L1 by 5000 (mean-reduced), batch 10, the seeded
    # random 80/20 split.
    config.loss.variance_source = "mu"
    config.loss.kl_global_eps = 0.0
    config.loss.beta_kl_individual = 0.1
    config.loss.beta_reconstruction = 5000.0
    config.batch_size = 10
    config.data.split = "reference"
    # The released training: Keras's Adam, raw weights evaluated (EMA off),
    # bilinear resizing without antialiasing.
    config.optimizer.eps_form = "keras"
    config.training.ema_decay = 0.0
    config.data.resize = "bilinear"
    # Its Keras epoch is 30,000 files // batch 10 = 3,000 steps (1.25 passes
    # over the 24,000 training images); its weights readme: 300-400 epochs.
    # The lower end: 300 x 3,000 steps.
    config.num_train_steps = 900_000
  elif arg.variant in ("vae", "beta_vae"):
    # Baselines in the same code: Eq. 10 (beta = 1: VAE; beta_vae,beta=B),
    # the same L1 reconstruction, no discriminator.
    config.loss.family = "standard"
    config.loss.beta = 1.0 if arg.variant == "vae" else arg.beta
    config.loss.beta_adversarial = 0.0
  elif arg.variant == "test":
    small_model(config, width=16, latent_dim=16)
    config.batch_size = 8
    config.num_train_steps = 20
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    config.image_every_steps = 10
    config.eval_every_steps = 0
    config.num_grid_images = 4
    config.optimizer.learning_rate = 1e-3
    config.optimizer.disc_learning_rate = 1e-3

  config.lock()
  return config


def small_model(config: ml_collections.ConfigDict, *, width: int,
                latent_dim: int) -> None:
  """The embedded 32x32 faces (80 train / 20 test) and a narrow 3-stage model
  (bottleneck width/2, norm groups width/4), for the tests and the demo."""
  config.data.source = "embedded"
  config.data.num_train = 80
  config.model.resolution = 32
  config.model.width = width
  config.model.num_stages = 3
  config.model.encoder_blocks = 1
  config.model.decoder_blocks = 1
  config.model.bottleneck_channels = width // 2
  config.model.latent_dim = latent_dim
  config.model.norm_groups = width // 4
  config.discriminator.features = (width,) * 3 + (width // 2,) * 2 + (1,)
  config.discriminator.norm_groups = width // 4
