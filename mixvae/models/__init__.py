"""The networks of Section 3.4 / Fig. 3 and the PatchGAN of Section 3.3.

Build from a config file's blocks:

  vae = models.build_vae(config.model, axis_name=None)
  disc = models.build_discriminator(config.discriminator, axis_name=None)
  variables = models.init_vae(vae, key)
  disc_variables = models.init_discriminator(disc, key, vae.image_shape)

Modules: `IdResBlock` (Id-ResBlock), `ConvResBlock` (Conv-ResBlock),
`ConvResBlockTrans` (Conv-ResBlock-Trans) in `resnet_blocks`; `Encoder`,
`Sampler` (Eq. 6), `Decoder`, `VAE` in `vae`; `PatchGANDiscriminator` in
`discriminator`; the normalization factory in `layers`.
"""

from mixvae.models.discriminator import build_discriminator
from mixvae.models.discriminator import DROPOUT_RNG
from mixvae.models.discriminator import init_discriminator
from mixvae.models.discriminator import PatchGANDiscriminator
from mixvae.models.discriminator import validate_discriminator_config
from mixvae.models.layers import NormSpec
from mixvae.models.param_counts import abstract_networks
from mixvae.models.param_counts import non_trainable_count
from mixvae.models.param_counts import trainable_param_counts
from mixvae.models.resnet_blocks import ConvResBlock
from mixvae.models.resnet_blocks import ConvResBlockTrans
from mixvae.models.resnet_blocks import IdResBlock
from mixvae.models.vae import build_vae
from mixvae.models.vae import Decoder
from mixvae.models.vae import Encoder
from mixvae.models.vae import init_vae
from mixvae.models.vae import reparametrize
from mixvae.models.vae import SAMPLE_RNG
from mixvae.models.vae import Sampler
from mixvae.models.vae import VAE
from mixvae.models.vae import VAEOutput
from mixvae.models.vae import validate_model_config
