"""The test images' Inception features, computed once for runs that share them.

FID and KID compare generated images with the test images, whose Inception
features depend only on the test split and the Inception weights: the seeds
and variants of an ablation all compute the same ones. With
`config.eval.feature_cache=DIR` the first evaluation writes them to
DIR/<key>.npz and later ones read them instead of running Inception on the
test images (a third of the Inception time of an evaluation with one prior
temperature).

key: sha256 of `config.data`, the evaluated test examples' names in order and
the weights file's sha256. Each file also holds every image's high-frequency
share (`metrics.high_frequency_share`, [N]), which each pass recomputes: an
image changed in place under the same name is an error naming the file, not a
wrong FID.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from etils import epath
import numpy as np

from mixvae import errors

SHARPNESS_RTOL = 1e-4  # Across machines float32 reductions may differ a bit.


def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def cache_file(directory: str, data_config: dict, names: Sequence[str],
               weights_path: str) -> epath.Path:
  """DIR/<key>.npz of the test images `names` (in evaluation order)."""
  text = json.dumps({"data": data_config, "names": list(names),
                     "weights": _file_sha256(weights_path)},
                    sort_keys=True, default=str)
  return epath.Path(directory) / (
      hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] + ".npz")


def load(path: epath.Path) -> dict[str, np.ndarray] | None:
  """{'features': [N, D], 'sharpness': [N]}, or None if not written yet."""
  if not path.exists():
    return None
  with path.open("rb") as f:
    with np.load(f) as data:
      return {k: np.asarray(data[k]) for k in ("features", "sharpness")}


def save(path: epath.Path, features: np.ndarray, sharpness: np.ndarray
         ) -> None:
  """Writes the file whole or not at all; runs evaluating at once may both
  write it (the same features), the last one replacing the first's."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.parent / f".{path.name}.{os.getpid()}.partial"
  with partial.open("wb") as f:
    np.savez(f, features=features, sharpness=sharpness)
  partial.replace(path)


def check(path: epath.Path, cached: dict[str, np.ndarray],
          sharpness: np.ndarray) -> None:
  """Raises unless the pass saw the images the cached features are of."""
  if cached["sharpness"].shape != sharpness.shape or not np.allclose(
      cached["sharpness"], sharpness, rtol=SHARPNESS_RTOL, atol=0.0):
    raise errors.DataError(
        f"the cached test-image features {path} are of other images than "
        "this evaluation's (the images changed under the same names): "
        "delete that file and evaluate again")
