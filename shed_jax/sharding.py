"""Device mesh and logical-axis shardings for shed_jax, in one place.

Every other module asks this one for a :class:`jax.sharding.NamedSharding` by *logical* axis name, never by
physical mesh axis (the levanter / maxtext ``logical_axis_rules`` pattern). Logical names:

* ``"coalitions"`` -- the coalition batch axis of a Shapley utility call (``(B, n_players)`` masks).
* ``"data"``       -- the point axis of k-means (``(N, d)`` points).

Both map to the single physical mesh axis ``"coalitions"`` of the mesh built by :func:`make_mesh`, i.e. the
batch is split over all devices. ``None`` means "replicated along this array axis".

Multi-host: call ``jax.distributed.initialize()`` (with coordinator address, process count and process id,
or with no arguments on TPU pods / SLURM where they are discovered) *before* any other JAX call in every
process, then ``make_mesh(jax.devices())`` spans the devices of all hosts. The Monte Carlo engine itself only
uses the local devices (``jax.local_devices()``) and is deterministic per seed, so independent per-host runs
over disjoint permutation index ranges can be combined with :func:`shed_jax.shapley.merge`.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXIS = "coalitions"
"""Name of the one physical mesh axis."""

LOGICAL_AXIS_RULES: dict[str, str] = {"coalitions": MESH_AXIS, "data": MESH_AXIS}
"""Logical axis name -> physical mesh axis name."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: ``jax.local_devices()``) with axis name ``"coalitions"``.

    Args:
      devices: devices to span, in order. Must be non-empty.

    Returns:
      ``Mesh`` of shape ``(len(devices),)`` and ``axis_names == ("coalitions",)``.
    """
    if devices is None:
        devices = jax.local_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("make_mesh: need at least one device")
    return Mesh(np.asarray(devices, dtype=object), (MESH_AXIS,))


def _physical(axis: str | None) -> str | None:
    if axis is None:
        return None
    if axis not in LOGICAL_AXIS_RULES:
        raise ValueError(f"unknown logical axis {axis!r}; known: {sorted(LOGICAL_AXIS_RULES)} or None")
    return LOGICAL_AXIS_RULES[axis]


def logical_sharding(mesh: Mesh, *logical_axes: str | None) -> NamedSharding:
    """``NamedSharding`` for an array whose axes carry the given logical names.

    Example: ``logical_sharding(mesh, "coalitions", None)`` shards a ``(B, n_players)`` mask batch over its
    first axis and replicates the second. ``logical_sharding(mesh)`` is fully replicated.
    """
    physical = [_physical(a) for a in logical_axes]
    used = [p for p in physical if p is not None]
    if len(used) != len(set(used)):
        raise ValueError(f"logical axes {logical_axes} map the same mesh axis twice")
    return NamedSharding(mesh, PartitionSpec(*physical))


def shard_batch(x, mesh: Mesh, axis: str = "coalitions") -> jax.Array:
    """Place ``x`` on ``mesh`` with its leading axis split along logical ``axis``, the rest replicated.

    Args:
      x: array of shape ``(B, ...)``; ``B`` must be a multiple of the mesh size.
      mesh: mesh from :func:`make_mesh`.
      axis: logical axis name of the leading dimension (``"coalitions"`` or ``"data"``).
    """
    x = jax.numpy.asarray(x)
    if x.ndim == 0:
        raise ValueError("shard_batch: need an array with a leading batch axis, got a scalar")
    n_devices = mesh.devices.size
    if x.shape[0] % n_devices:
        raise ValueError(f"shard_batch: leading dimension {x.shape[0]} is not a multiple of the "
                         f"{n_devices} devices of the mesh; pad it first")
    return jax.device_put(x, logical_sharding(mesh, axis, *([None] * (x.ndim - 1))))
