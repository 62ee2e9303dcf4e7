"""The networks of Section 3.4 / Fig. 3 and the PatchGAN of Section 3.3.

  vae = models.build_vae(config.model, axis_name=None)
  disc = models.build_discriminator(config.discriminator, axis_name=None)
  variables = models.init_vae(vae, key)
  disc_variables = models.init_discriminator(disc, key, vae.image_shape)

Fig. 3 blocks: Id-ResBlock, Conv-ResBlock, Conv-ResBlock-Trans; Encoder,
Sampler, Decoder; PatchGAN.

Trainable parameters of the 256x256x3 presets (configs/celebahq.py):
  `reference` (the released Keras model; every normalization 'affine'):
    encoder 5,867,584 + sampler 1,049,600 + decoder 4,040,556 = 10,957,740;
    discriminator 411,075.
  default (the paper; synchronized 'batch' normalization): the same VAE plus
    24,326 'batch_stats' (the released 10,982,066 in all); discriminator
    411,073 (`final_norm=False`) plus 1,024 'batch_stats'.
"""

from mixvae.models.build import abstract_networks
from mixvae.models.build import build_discriminator
from mixvae.models.build import build_vae
from mixvae.models.build import init_discriminator
from mixvae.models.build import init_vae
from mixvae.models.discriminator import DROPOUT_RNG
from mixvae.models.discriminator import PatchGANDiscriminator
from mixvae.models.discriminator import validate_discriminator_config
from mixvae.models.layers import NormSpec
from mixvae.models.param_counts import non_trainable_count
from mixvae.models.param_counts import trainable_param_counts
from mixvae.models.resnet_blocks import ConvResBlock
from mixvae.models.resnet_blocks import ConvResBlockTrans
from mixvae.models.resnet_blocks import IdResBlock
from mixvae.models.vae import Decoder
from mixvae.models.vae import Encoder
from mixvae.models.vae import reparametrize
from mixvae.models.vae import SAMPLE_RNG
from mixvae.models.vae import Sampler
from mixvae.models.vae import VAE
from mixvae.models.vae import VAEOutput
from mixvae.models.vae import validate_model_config
