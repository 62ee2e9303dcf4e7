"""Pytrees between the host and the local devices of a pmapped step.

`jax.device_put` with a sharding over the local devices (not the deprecated
`jax.device_put_replicated`). Name the mesh axis after the pmap's
`axis_name`: a `jit`-based `jax.pmap` (JAX >= 0.8) outputs a sharding over
that axis, and an input naming another would recompile the step.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

PyTree = Any


def local_sharding(devices: Sequence[jax.Device] | None = None,
                   axis_name: str = "devices") -> jax.sharding.NamedSharding:
  """Splits a leading axis of size len(devices) over the local devices."""
  devices = list(jax.local_devices() if devices is None else devices)
  mesh = jax.sharding.Mesh(np.array(devices), (axis_name,))
  return jax.sharding.NamedSharding(mesh,
                                    jax.sharding.PartitionSpec(axis_name))


def replicate(tree: PyTree, devices: Sequence[jax.Device] | None = None,
              axis_name: str = "devices") -> PyTree:
  """One copy of every leaf on each local device: leaves [D, ...]."""
  sharding = local_sharding(devices, axis_name)
  n = len(sharding.mesh.devices.flat)

  def one(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (n,) + x.shape), sharding)
  return jax.tree.map(one, tree)


def unreplicate(tree: PyTree) -> PyTree:
  """The first local device's copy of every leaf, as host NumPy arrays."""
  return jax.device_get(jax.tree.map(
      lambda x: x.addressable_shards[0].data[0], tree))
