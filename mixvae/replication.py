"""Moving pytrees between the host and the local devices of a pmapped step.

(`jax.device_put_replicated` is deprecated; these use `jax.device_put` with a
sharding over the local devices, which `jax.pmap` accepts as is.)

Name the mesh axis after the pmap's `axis_name` (`replicate(tree,
axis_name='batch')`): where `jax.pmap` is built on `jit` (JAX >= 0.8) its
outputs carry a sharding over a mesh axis of that name, and an input state
whose sharding names another axis is a different input signature, so the
second step would compile the whole train step again.
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
  """Puts one copy of every leaf on each local device: leaves [D, ...].

  Pass the pmap's `axis_name` for a state that a pmapped step consumes and
  returns (see the module docstring).
  """
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
