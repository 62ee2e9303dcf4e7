"""Random access to the TFRecord shards of a prepared TFDS dataset.

TFRecord frames are `[uint64 length][uint32 crc][data][uint32 crc]`; with
the offsets in `RECORD_INDEX_FILE` (beside dataset_info.json: per split each
record's shard, offset, length and file name), record i is one seek + read,
local or gs:// (which ArrayRecord's open-source reader cannot open).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import struct
import threading
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from mixvae import errors

RECORD_INDEX_FILE = "mixvae_record_index.npz"
_HEADER = 12  # uint64 length + uint32 masked crc of the length.
_FOOTER = 4   # uint32 masked crc of the data.


def _scan_tfrecord(path: str) -> list[tuple[int, int]]:
  """(data offset, data length) of every record of one TFRecord file."""
  frames = []
  with tf.io.gfile.GFile(path, "rb") as f:
    offset = 0
    while True:
      header = f.read(_HEADER)
      if not header:
        break
      if len(header) < _HEADER:
        raise IOError(f"{path} ends inside a record header (truncated?)")
      (length,) = struct.unpack("<Q", header[:8])
      frames.append((offset + _HEADER, length))
      offset += _HEADER + length + _FOOTER
      f.seek(offset)
  return frames


def op_error_text(e: Exception) -> str:
  """The message of a TensorFlow error without the op's decorations; for a
  Python function that failed inside tf.data, its exception's message."""
  lines = [l for l in str(getattr(e, "message", e)).splitlines() if l.strip()]
  raised = [l for l in lines if re.match(r"^\w+(Error|Exception): ", l)]
  text = raised[-1].split(": ", 1)[1] if raised else lines[0]
  return re.sub(r"{{.*?}}|\[Op:.*", "", text).strip()


def _file_name_of(record: bytes) -> str:
  example = tf.train.Example.FromString(record)
  return example.features.feature["file_name"].bytes_list.value[0].decode()


def build_record_index(builder_dir: str, info) -> str:
  """Scans the shards of `info` (a DatasetInfo) once; the index's path."""
  arrays = {}
  for split, split_info in info.splits.items():
    shards, shard_ids, offsets, lengths, names = [], [], [], [], []
    for instruction in split_info.file_instructions:
      path = os.fspath(instruction.filename)
      frames = _scan_tfrecord(path)
      take = (len(frames) - instruction.skip if instruction.take < 0
              else instruction.take)
      frames = frames[instruction.skip:instruction.skip + take]
      shards.append(os.path.basename(path))
      with tf.io.gfile.GFile(path, "rb") as f:
        for offset, length in frames:
          f.seek(offset)
          names.append(_file_name_of(f.read(length)))
          shard_ids.append(len(shards) - 1)
          offsets.append(offset)
          lengths.append(length)
    arrays[f"{split}/shards"] = np.array(shards, dtype=str)
    arrays[f"{split}/shard"] = np.array(shard_ids, np.int32)
    arrays[f"{split}/offset"] = np.array(offsets, np.int64)
    arrays[f"{split}/length"] = np.array(lengths, np.int64)
    arrays[f"{split}/names"] = np.array(names, dtype=str)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path = os.path.join(builder_dir, RECORD_INDEX_FILE)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
  logging.info("Wrote the record index %s", path)
  return path


def find_damage(builder_dir: str, index: dict[str, np.ndarray], *,
                scan: bool = False) -> str | None:
  """What is wrong with the shards against `index`, or None if nothing.

  Compares each shard's size with the end of its last indexed record (a
  truncated or missing shard); `scan` also reads every record and checks its
  header and CRC-32C.
  """
  for split in sorted({k.split("/")[0] for k in index}):
    shard_of, offsets = index[f"{split}/shard"], index[f"{split}/offset"]
    lengths = index[f"{split}/length"]
    for s, name in enumerate(index[f"{split}/shards"]):
      path, rows = os.path.join(builder_dir, str(name)), shard_of == s
      if not tf.io.gfile.exists(path):
        return f"{path} is missing"
      end = int(np.max(offsets[rows] + lengths[rows], initial=0)) + _FOOTER
      size = tf.io.gfile.stat(path).length
      if size < end:
        return f"{path} has {size} bytes, its records end at byte {end}"
      if scan:
        try:
          frames = dict(_scan_tfrecord(path))
          for _ in tf.data.TFRecordDataset(path):  # Checks each record's CRC.
            pass
        except (IOError, tf.errors.DataLossError) as e:
          return op_error_text(e)
        for offset, length in zip(offsets[rows], lengths[rows]):
          if frames.get(int(offset)) != int(length):
            return f"the record at byte {offset} of {path} is not as indexed"
  return None


def load_record_index(builder_dir: str) -> dict[str, np.ndarray]:
  """The `RECORD_INDEX_FILE` of a dataset version folder."""
  path = os.path.join(builder_dir, RECORD_INDEX_FILE)
  with tf.io.gfile.GFile(path, "rb") as f:
    data = np.load(io.BytesIO(f.read()), allow_pickle=False)
    return {k: data[k] for k in data.files}


class RecordReader:
  """Serialized records of one split by index, thread-safe (`os.pread`
  locally; one GFile per thread on gs://)."""

  def __init__(self, builder_dir: str, index: dict[str, np.ndarray],
               split: str, *, num_threads: int = 16):
    self._paths = [os.path.join(builder_dir, s)
                   for s in index[f"{split}/shards"]]
    self._shard = index[f"{split}/shard"]
    self._offset = index[f"{split}/offset"]
    self._length = index[f"{split}/length"]
    self._local = "://" not in builder_dir
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()
    self._thread_files = threading.local()
    self._num_threads = num_threads
    self._pool = None

  def __len__(self) -> int:
    return len(self._offset)

  def _read_frame(self, shard: int, start: int, size: int) -> bytes:
    if self._local:
      fd = self._fds.get(shard)
      if fd is None:
        with self._lock:
          fd = self._fds.get(shard)
          if fd is None:
            fd = self._fds[shard] = os.open(self._paths[shard], os.O_RDONLY)
      return os.pread(fd, size, start)
    files = getattr(self._thread_files, "files", None)
    if files is None:
      files = self._thread_files.files = {}
    if shard not in files:
      files[shard] = tf.io.gfile.GFile(self._paths[shard], "rb")
    f = files[shard]
    f.seek(start)
    return f.read(size)

  def read_one(self, i: int) -> bytes:
    shard, offset, length = (int(self._shard[i]), int(self._offset[i]),
                             int(self._length[i]))
    frame = self._read_frame(shard, offset - _HEADER, _HEADER + length)
    if (len(frame) != _HEADER + length or
        struct.unpack("<Q", frame[:8])[0] != length):
      raise errors.DataError(
          f"record {i} of {self._paths[shard]} does not match "
          f"{RECORD_INDEX_FILE}: the dataset changed after it was prepared. "
          "Prepare it again (launch/prepare_data.py moves a damaged dataset "
          "aside and rebuilds it).")
    return frame[_HEADER:]

  def read(self, indices: Sequence[int]) -> list[bytes]:
    indices = [int(i) for i in indices]
    if len(indices) <= 2:
      return [self.read_one(i) for i in indices]
    if self._pool is None:
      with self._lock:
        if self._pool is None:
          self._pool = concurrent.futures.ThreadPoolExecutor(
              self._num_threads, thread_name_prefix="mixvae-records")
    try:
      return list(self._pool.map(self.read_one, indices))
    except RuntimeError:  # The pool was shut down (interpreter exit).
      return [self.read_one(i) for i in indices]

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass
