"""Input pipeline: CelebA-HQ-style face folders, their prepared TFDS dataset,
and an embedded LFW demo set; deterministic, resumable train/eval iteration.

Modules:
  splits        sort keys and the paper / reference-code train/test split.
  images        decode, centre-crop, antialiased resize (shared by all paths).
  folder        listing and checking a folder of images.
  tfds_builder  the `face_folder` TFDS builder and `prepare()`.
  records       random access into the prepared TFRecord shards.
  sources       the 'tfds' / 'folder' / 'embedded' sources, `make_source`.
  order         the (seed, step) -> examples and flips function.
  pipeline      TrainIterator, EvalIterator, prefetch_to_device.
"""

from mixvae.data.pipeline import DevicePrefetchIterator
from mixvae.data.pipeline import eval_iterator
from mixvae.data.pipeline import EvalIterator
from mixvae.data.pipeline import prefetch_to_device
from mixvae.data.pipeline import train_iterator
from mixvae.data.pipeline import TrainIterator
from mixvae.data.sources import make_source
from mixvae.data.sources import resolve_resolution
from mixvae.data.sources import Source
