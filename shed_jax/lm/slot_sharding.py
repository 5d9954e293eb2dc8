"""LM proxy slots over the local devices: the one place where the slot-axis arrays get a sharding.

The LM proxy fine-tunes ``n_slots`` coalitions at once (:class:`shed_jax.lm.finetune.SlotTrainer`) and scores them
together (:class:`shed_jax.lm.scoring.StackScorer`), both ``jax.vmap`` over a leading slot axis with no
communication between slots. With ``D`` local devices that axis is split over a one-axis mesh ``('slots',)``:
the adapters, the optimiser state, the minibatch rows (or packed sources and segments) and the ``active`` mask are
placed with ``NamedSharding(mesh, P('slots'))``; the base weights and the token tables are replicated. The jitted
steps then run each device's ``n_slots / D`` slots on that device (GSPMD partitions the vmapped computation along
the sharded axis; the gathers from the replicated tables are local), and the scorer, handed the sharded adapter
stack, does the same.

The mesh uses ``gcd(n_slots, D)`` devices (all of them when ``n_slots`` is a multiple of ``D``, which the proxy's
default slot count is: devices x per-device slots). With one device every function here returns its input
unchanged, so single-device runs are untouched.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["SLOT_AXIS", "local_slot_devices", "place_replicated", "place_slots", "slot_mesh"]

SLOT_AXIS = "slots"


def local_slot_devices() -> int:
    """How many local devices slots can be spread over (``SHED_LM_SLOT_DEVICES`` caps it; ``1`` turns it off)."""
    import os

    count = jax.local_device_count()
    cap = os.environ.get("SHED_LM_SLOT_DEVICES", "").strip()
    return max(1, min(count, int(cap))) if cap else count


def slot_mesh(n_slots: int) -> Mesh | None:
    """A ``('slots',)`` mesh over ``gcd(n_slots, local devices)`` local devices, or None when that is one."""
    d = math.gcd(int(n_slots), local_slot_devices())
    if d <= 1:
        return None
    return Mesh(np.asarray(jax.local_devices()[:d]), (SLOT_AXIS,))


def place_slots(tree, mesh: Mesh | None):
    """Every array leaf of ``tree`` (leading axis: slots) split over ``mesh`` on that axis."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P(SLOT_AXIS))
    return jax.tree_util.tree_map(lambda leaf: jax.device_put(leaf, sharding), tree)


def place_replicated(tree, mesh: Mesh | None):
    """Every array leaf of ``tree`` replicated on every device of ``mesh`` (base weights, token tables)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda leaf: jax.device_put(leaf, sharding) if hasattr(leaf, "shape") else leaf,
                                  tree)
