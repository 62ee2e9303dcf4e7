"""File-name sort keys and the train/test split rules.

After sorting the N usable names, with n = `num_train` (0: floor(0.8 N)):
  'paper' (Section 4): train = sorted[:n], test = sorted[n:]; for CelebA-HQ,
    the first 24,000 after an alphabetical sort, and the last 6,000.
  'reference' (the released code): the same after permuting the sorted names
    by `np.random.RandomState(1967).permutation(N)`.
Sorts: 'alphabetical' is `sorted()` (code points), the released code's
`sorted(os.listdir)`, so '10.jpg' < '2.jpg'; 'natural' compares digit runs as
numbers, '2.jpg' < '10.jpg'. They differ on CelebAMask-HQ's 0.jpg ...
29999.jpg.
"""

from __future__ import annotations

import re
from typing import Sequence

from absl import logging
import numpy as np

from mixvae import errors

SPLITS = ("paper", "reference")
SORTS = ("alphabetical", "natural")
REFERENCE_SEED = 1967
DEFAULT_TRAIN_FRACTION = 0.8

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
  """Digit runs compare as numbers; ties ('01' vs '1') by the plain name."""
  # The capture group alternates text and digits: types match by position.
  parts = _DIGITS.split(name)
  key = tuple(int(p) if i % 2 else p for i, p in enumerate(parts))
  return (key, name)


def sort_names(names: Sequence[str], *, sort: str = "alphabetical",
               warn: bool = True) -> list[str]:
  """`names` sorted by `sort`; with `warn`, warns where 'natural' differs."""
  if sort not in SORTS:
    raise errors.ConfigError(
        f"unknown sort {sort!r} (config.data.sort / --sort); "
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
  """`num_train`, or 80% of `num_images` (rounded down) when it is 0."""
  if num_train < 0:
    raise errors.ConfigError(
        f"config.data.num_train must be >= 0, got {num_train}")
  return int(num_images * DEFAULT_TRAIN_FRACTION) if num_train == 0 else (
      num_train)


def split_names(names: Sequence[str], *, split: str = "paper",
                sort: str = "alphabetical", num_train: int = 24000,
                warn: bool = True, where: str = "the image folder",
                ) -> tuple[list[str], list[str]]:
  """(train, test) names in split order; `where` names them in errors."""
  if split not in SPLITS:
    raise errors.ConfigError(
        f"unknown split {split!r} (config.data.split / --split); "
        f"choose one of {list(SPLITS)}")
  ordered = sort_names(names, sort=sort, warn=warn)
  n = len(ordered)
  n_train = resolve_num_train(num_train, n)
  if n_train < 1 or n_train >= n:
    raise errors.ConfigError(
        f"{where} has {n} usable images, but the split asks for "
        f"{n_train} training images and at least one test image. Point the "
        "config at the full image set, or set config.data.num_train "
        "(--num_train) below the number of images (0 means 80%).")
  if split == "reference":
    permutation = np.random.RandomState(REFERENCE_SEED).permutation(n)
    ordered = [ordered[i] for i in permutation]
  return ordered[:n_train], ordered[n_train:]
