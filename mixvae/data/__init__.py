"""Input pipeline: face folders, their prepared TFDS dataset, an LFW demo."""

from mixvae.data.pipeline import DevicePrefetchIterator
from mixvae.data.pipeline import EvalIterator
from mixvae.data.pipeline import prefetch_to_device
from mixvae.data.pipeline import TrainIterator
from mixvae.data.sources import make_source
from mixvae.data.sources import resolve_resolution
from mixvae.data.sources import Source
