"""Sort keys and the paper / reference-code splits against hand-made lists."""

import numpy as np
import pytest

from mixvae.data import order
from mixvae.data import splits

NAMES = ["20.jpg", "0.jpg", "100.jpg", "1.jpg", "9.jpg", "2.jpg", "11.jpg",
         "10.jpg"]
ALPHABETICAL = ["0.jpg", "1.jpg", "10.jpg", "100.jpg", "11.jpg", "2.jpg",
                "20.jpg", "9.jpg"]
NATURAL = ["0.jpg", "1.jpg", "2.jpg", "9.jpg", "10.jpg", "11.jpg", "20.jpg",
           "100.jpg"]
# numpy.random.RandomState(1967).permutation(8) == [1 4 2 0 3 6 5 7].
REFERENCE_PERMUTATION = [1, 4, 2, 0, 3, 6, 5, 7]


def test_sort_keys():
  assert splits.sort_names(NAMES, sort="alphabetical") == ALPHABETICAL
  assert splits.sort_names(NAMES, sort="natural") == NATURAL
  # Leading zeros: a total, reproducible order.
  assert splits.sort_names(["1.jpg", "01.jpg", "001.jpg"], sort="natural") == [
      "001.jpg", "01.jpg", "1.jpg"]
  # Padded names: both orders agree.
  padded = [f"{i:05d}.jpg" for i in (3, 10, 2, 29999)]
  assert (splits.sort_names(padded, sort="natural") ==
          splits.sort_names(padded, sort="alphabetical") == sorted(padded))


def test_warns_for_unpadded_numbers_under_alphabetical(caplog):
  with caplog.at_level("WARNING"):
    splits.sort_names(NAMES, sort="alphabetical")
  assert "unpadded numbers" in caplog.text
  assert "sort='natural'" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    splits.sort_names(NAMES, sort="natural")
    splits.sort_names([f"{i:05d}.jpg" for i in range(20)],
                      sort="alphabetical")
  assert "unpadded" not in caplog.text


def test_paper_split_is_first_n_after_sort():
  train, test = splits.split_names(NAMES, split="paper", sort="alphabetical",
                                   num_train=6)
  assert train == ["0.jpg", "1.jpg", "10.jpg", "100.jpg", "11.jpg", "2.jpg"]
  assert test == ["20.jpg", "9.jpg"]
  train, test = splits.split_names(NAMES, split="paper", sort="natural",
                                   num_train=6)
  assert train == ["0.jpg", "1.jpg", "2.jpg", "9.jpg", "10.jpg", "11.jpg"]
  assert test == ["20.jpg", "100.jpg"]


def test_reference_split_is_the_released_codes_seeded_shuffle():
  assert list(np.random.RandomState(1967).permutation(8)) == (
      REFERENCE_PERMUTATION)
  train, test = splits.split_names(NAMES, split="reference",
                                   sort="alphabetical", num_train=6)
  assert train == ["1.jpg", "11.jpg", "10.jpg", "0.jpg", "100.jpg", "20.jpg"]
  assert test == ["2.jpg", "9.jpg"]
  # The released code shuffles a sorted Python list in place.
  names = sorted(NAMES)
  np.random.RandomState(1967).shuffle(names)
  assert train + test == names
  train, test = splits.split_names(NAMES, split="reference", sort="natural",
                                   num_train=6)
  assert train == ["1.jpg", "10.jpg", "2.jpg", "0.jpg", "9.jpg", "20.jpg"]
  assert test == ["11.jpg", "100.jpg"]


def test_celebahq_sizes():
  names = [f"{i}.jpg" for i in range(30000)]
  train, test = splits.split_names(names, split="paper", sort="natural",
                                   num_train=24000, warn=False)
  assert (len(train), len(test)) == (24000, 6000)
  assert train[-1] == "23999.jpg" and test[0] == "24000.jpg"
  train, test = splits.split_names(names, split="reference", num_train=0,
                                   warn=False)
  assert (len(train), len(test)) == (24000, 6000)
  assert sorted(train + test) == sorted(names)


@pytest.mark.parametrize("num_train", [8, 9, 24000])
def test_too_few_images(num_train):
  with pytest.raises(ValueError, match=r"has 8 usable images, but the split "
                     rf"asks for {num_train} training images"):
    splits.split_names(NAMES, num_train=num_train)


def test_unknown_split_and_sort():
  with pytest.raises(ValueError, match="unknown split 'random'"):
    splits.split_names(NAMES, split="random", num_train=4)
  with pytest.raises(ValueError, match="unknown sort 'numeric'"):
    splits.split_names(NAMES, sort="numeric", num_train=4)


def test_train_order_visits_each_example_once_per_epoch():
  o = order.TrainOrder(seed=3, num_examples=20, batch_size=8)
  stream = np.concatenate([o.examples(s, np.arange(8)) for s in range(5)])
  assert sorted(stream[:20]) == list(range(20))      # Epoch 0.
  assert sorted(stream[20:40]) == list(range(20))    # Epoch 1.
  assert list(stream[:20]) != list(stream[20:40])    # Reshuffled.
  again = order.TrainOrder(seed=3, num_examples=20, batch_size=8)
  assert (again.examples(4, np.arange(8)) == stream[32:40]).all()
  other = order.TrainOrder(seed=4, num_examples=20, batch_size=8)
  assert list(other.examples(0, np.arange(8))) != list(stream[:8])
  flips = np.concatenate([o.flips(s, np.arange(8)) for s in range(50)])
  assert 0.4 < flips.mean() < 0.6


def test_hash_and_order_are_pinned():
  # An exact resume must not depend on the NumPy version: pin the values.
  assert [int(x) for x in order.hash_u64(0, 1, 2, np.arange(3))] == [
      9177511572909541326, 3640832475695910567, 1940168966537136671]
  o = order.TrainOrder(seed=0, num_examples=10, batch_size=5)
  assert o.permutation(0).tolist() == [1, 6, 5, 4, 8, 3, 7, 9, 2, 0]
  assert o.flips(0, np.arange(10)).astype(int).tolist() == [
      1, 0, 0, 0, 1, 0, 0, 1, 0, 1]
