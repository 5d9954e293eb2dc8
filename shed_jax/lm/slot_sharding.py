"""LM proxy slots over devices: the one place where the slot-axis arrays get a sharding.

The LM proxy fine-tunes ``n_slots`` coalitions at once (:class:`shed_jax.lm.finetune.SlotTrainer`) and scores them
together (:class:`shed_jax.lm.scoring.StackScorer`), both ``jax.vmap`` over a leading slot axis with no
communication between slots. With ``D`` devices that axis is split over a one-axis mesh ``('slots',)``: the
adapters, the optimiser state, the minibatch rows (or packed sources and segments) and the ``active`` mask are
placed with ``NamedSharding(mesh, P('slots'))``; the base weights and the token tables are replicated. The jitted
steps then run each device's ``n_slots / D`` slots on that device (GSPMD partitions the vmapped computation along
the sharded axis; the gathers from the replicated tables are local), and the scorer, handed the sharded adapter
stack, does the same.

One process: the mesh holds ``gcd(n_slots, D)`` local devices (all of them when ``n_slots`` is a multiple of
``D``, which the proxy's default slot count is: devices x per-device slots). With one device every function here
returns its input unchanged, so single-device runs are untouched.

Several processes (``jax.distributed``, :mod:`shed_jax.distributed`): the mesh spans the devices of every process
(the global mesh), so ``n_slots`` must be a multiple of the global device count (:func:`slot_device_count`; the
proxy's default is). Every process runs the same host loop on the same masks and computes the same minibatch
schedule; :func:`place_slots` hands each process's devices only that process's slots
(``jax.make_array_from_process_local_data`` with the process's rows of the host array), :func:`place_replicated`
puts the base weights and token tables whole on every device, and :func:`to_host` brings a slot-sharded result
(scores, divergence flags) back to every process (``multihost_utils.process_allgather``), which the identical
host loops need.
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["SLOT_AXIS", "local_slot_devices", "multi_process", "place_replicated", "place_slots",
           "slot_device_count", "slot_mesh", "to_host"]

SLOT_AXIS = "slots"


def multi_process() -> bool:
    """True in a run of several processes (``jax.process_count() > 1``)."""
    return jax.process_count() > 1


def local_slot_devices() -> int:
    """How many of this process's devices slots can be spread over (``SHED_LM_SLOT_DEVICES`` caps it; ``1`` turns
    it off on one process; with several processes every process uses that many of its own)."""
    count = jax.local_device_count()
    cap = os.environ.get("SHED_LM_SLOT_DEVICES", "").strip()
    return max(1, min(count, int(cap))) if cap else count


def _slot_devices() -> list:
    """The devices of the slot axis: this process's first :func:`local_slot_devices`, or with several processes
    that many of every process's devices, in process order (the global mesh)."""
    per_process = local_slot_devices()
    if not multi_process():
        return list(jax.local_devices()[:per_process])
    by_process: dict[int, list] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:per_process]]


def slot_device_count() -> int:
    """Devices the slot axis is split over when the slot count is a multiple of it: this process's (one process),
    or every process's (several processes: the global count)."""
    return len(_slot_devices())


def slot_mesh(n_slots: int) -> Mesh | None:
    """A ``('slots',)`` mesh: over ``gcd(n_slots, local devices)`` local devices (None when that is one), or with
    several processes over every process's slot devices.

    Raises:
      ValueError: several processes and ``n_slots`` not a multiple of :func:`slot_device_count`.
    """
    devices = _slot_devices()
    if multi_process():
        if int(n_slots) % len(devices):
            raise ValueError(f"slots: {n_slots} is not a multiple of the {len(devices)} devices of the "
                             f"{jax.process_count()} processes (every device needs the same number of slots)")
        return Mesh(np.asarray(devices), (SLOT_AXIS,))
    d = math.gcd(int(n_slots), len(devices))
    if d <= 1:
        return None
    return Mesh(np.asarray(devices[:d]), (SLOT_AXIS,))


def _spans_processes(mesh: Mesh) -> bool:
    return len({d.process_index for d in mesh.devices.flat}) > 1


def _process_rows(sharding: NamedSharding, n_rows: int) -> slice:
    """The rows of a leading-axis-sharded array held by this process's devices (contiguous: the mesh lists the
    devices process by process)."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((n_rows,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(n_rows if rows.stop is None else rows.stop)
    return slice(min(starts), max(stops))


def place_slots(tree, mesh: Mesh | None):
    """Every array leaf of ``tree`` (leading axis: slots; the same host value in every process) split over
    ``mesh`` on that axis. With several processes each process passes only its own slots' rows
    (``jax.make_array_from_process_local_data``)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P(SLOT_AXIS))
    if not _spans_processes(mesh):
        return jax.tree_util.tree_map(lambda leaf: jax.device_put(leaf, sharding), tree)

    def put(leaf):
        host = np.asarray(leaf)
        local = host[_process_rows(sharding, host.shape[0])]
        return jax.make_array_from_process_local_data(sharding, local, host.shape)

    return jax.tree_util.tree_map(put, tree)


def place_replicated(tree, mesh: Mesh | None):
    """Every array leaf of ``tree`` replicated on every device of ``mesh`` (base weights, token tables). With
    several processes each process fills its own devices from its copy (the same value everywhere)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P())
    if not _spans_processes(mesh):
        return jax.tree_util.tree_map(lambda leaf: jax.device_put(leaf, sharding) if hasattr(leaf, "shape")
                                      else leaf, tree)

    def put(leaf):
        if not hasattr(leaf, "shape"):
            return leaf
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def to_host(x) -> np.ndarray:
    """The whole value of ``x`` as NumPy in this process: read locally, or, for an array split over several
    processes' devices, gathered from all of them (``multihost_utils.process_allgather``, a collective: every
    process must call it, in the same order)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
