"""File-name ordering and the train/test split rules.

Two split rules are offered (`config.data.split`):

* `'paper'` (Section 4 of the paper): sort the file names, the first
  `num_train` are the training set, the rest the test set.
* `'reference'` (the author's released code): sort the file names, shuffle
  them with `numpy.random.RandomState(1967)`, the first `num_train` of the
  shuffled list are the training set, the rest the test set.

Two sort keys are offered (`config.data.sort`):

* `'alphabetical'`: Python's `sorted()` of the names (code-point order), what
  the released code does with `os.listdir`. `'10.jpg'` comes before `'2.jpg'`.
* `'natural'`: digit runs compare as numbers, so `'2.jpg'` comes before
  `'10.jpg'`. CelebAMask-HQ names its files `0.jpg ... 29999.jpg`, for which
  the two orders differ; `sort_names` warns when that happens under
  `'alphabetical'`.
"""

from __future__ import annotations

import re
from typing import Sequence

from absl import logging
import numpy as np

SPLITS = ("paper", "reference")
SORTS = ("alphabetical", "natural")
REFERENCE_SEED = 1967
DEFAULT_TRAIN_FRACTION = 0.8

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
  """Sort key that compares digit runs numerically ('2.jpg' < '10.jpg').

  Ties between names that only differ in leading zeros ('01' vs '1') are
  broken by the plain name, so the order is total and reproducible.
  """
  parts = _DIGITS.split(name)
  # re.split with a capture group alternates text, digits, text, ...; the
  # types at each position therefore always match between two keys.
  key = tuple(int(p) if i % 2 else p for i, p in enumerate(parts))
  return (key, name)


def sort_names(names: Sequence[str], *, sort: str = "alphabetical",
               warn: bool = True) -> list[str]:
  """Sorts file names by `sort` ('alphabetical' or 'natural').

  Args:
    names: file names (no directories).
    sort: 'alphabetical' (Python `sorted`) or 'natural' (numbers by value).
    warn: log a warning when `sort='alphabetical'` and the names hold
      unpadded numbers, so that the alphabetical and numeric orders differ.

  Returns:
    The sorted names.

  Raises:
    ValueError: for an unknown `sort`.
  """
  if sort not in SORTS:
    raise ValueError(f"unknown sort {sort!r} (config.data.sort / --sort); "
                     f"choose one of {list(SORTS)}")
  alphabetical = sorted(names)
  natural = sorted(names, key=natural_key)
  if sort == "natural":
    return natural
  if warn and alphabetical != natural:
    first = next(i for i, (a, b) in enumerate(zip(alphabetical, natural))
                 if a != b)
    logging.warning(
        "File names hold unpadded numbers, so alphabetical order differs from "
        "numeric order (alphabetically %r comes where numerically %r does, at "
        "position %d). Sorting alphabetically as the released code does "
        "(sorted(os.listdir)); set config.data.sort='natural' (or "
        "--sort=natural) for numeric order, e.g. for CelebAMask-HQ's "
        "0.jpg ... 29999.jpg.", alphabetical[first], natural[first], first)
  return alphabetical


def resolve_num_train(num_train: int, num_images: int) -> int:
  """The number of training images: `num_train`, or 80% when it is 0."""
  if num_train < 0:
    raise ValueError(f"config.data.num_train must be >= 0, got {num_train}")
  return int(num_images * DEFAULT_TRAIN_FRACTION) if num_train == 0 else (
      num_train)


def split_names(names: Sequence[str], *, split: str = "paper",
                sort: str = "alphabetical", num_train: int = 24000,
                warn: bool = True, where: str = "the image folder",
                ) -> tuple[list[str], list[str]]:
  """Splits file names into (train, test) lists by the paper or reference rule.

  Args:
    names: the usable file names, in any order.
    split: 'paper' (first `num_train` after sorting) or 'reference' (sorted,
      shuffled by `numpy.random.RandomState(1967)`, first `num_train`).
    sort: the sort key, see `sort_names`.
    num_train: training-set size; 0 means 80% of the images (rounded down).
    warn: see `sort_names`.
    where: how to name the image collection in error messages.

  Returns:
    (train_names, test_names), each in the order the split defines: sorted
    for 'paper', shuffled for 'reference'.

  Raises:
    ValueError: for an unknown split or sort, or when there are not more
      images than `num_train` (the test split would be empty).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r} (config.data.split / --split); "
                     f"choose one of {list(SPLITS)}")
  ordered = sort_names(names, sort=sort, warn=warn)
  n = len(ordered)
  n_train = resolve_num_train(num_train, n)
  if n_train < 1 or n_train >= n:
    raise ValueError(
        f"{where} has {n} usable images, but the split asks for "
        f"{n_train} training images and at least one test image. Point the "
        "config at the full image set, or set config.data.num_train "
        "(--num_train) below the number of images (0 means 80%).")
  if split == "reference":
    permutation = np.random.RandomState(REFERENCE_SEED).permutation(n)
    ordered = [ordered[i] for i in permutation]
  return ordered[:n_train], ordered[n_train:]
