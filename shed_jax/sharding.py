"""Device mesh and logical-axis shardings for shed_jax, in one place.

Every other module asks this one for a :class:`jax.sharding.NamedSharding` by *logical* axis name, never by
physical mesh axis (the levanter / maxtext ``logical_axis_rules`` pattern). Logical names:

* ``"coalitions"`` -- the coalition batch axis of a Shapley utility call (``(B, n_players)`` masks).
* ``"data"``       -- the point axis of k-means (``(N, d)`` points).

Both map to the single physical mesh axis ``"coalitions"`` of the mesh built by :func:`make_mesh`, i.e. the
batch is split over all devices. ``None`` means "replicated along this array axis".

**Sharded utility calls.** :func:`evaluate_sharded` runs a jittable utility under ``jax.shard_map`` over the
``coalitions`` axis: each device receives its ``B / D`` rows of the ``(B, n)`` mask batch and evaluates only
those (its own bucketing, chunking and fine-tunes), with the utility's data replicated. A utility's
``preferred_batch_size`` is therefore *per device*: :func:`default_batch_size` multiplies it by the device
count, and a proxy's memory budget (e.g. ``accelerator_memory_bytes``) applies to each device's chunk.

Multi-host: see :mod:`shed_jax.distributed` (``jax.distributed.initialize`` before any other JAX call in every
process; then :func:`make_mesh` over ``jax.devices()`` spans the devices of all hosts).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["LOGICAL_AXIS_RULES", "MESH_AXIS", "default_batch_size", "evaluate_sharded", "global_array",
           "logical_sharding", "make_mesh", "shard_batch", "to_host"]

MESH_AXIS = "coalitions"
"""Name of the one physical mesh axis."""

LOGICAL_AXIS_RULES: dict[str, str] = {"coalitions": MESH_AXIS, "data": MESH_AXIS}
"""Logical axis name -> physical mesh axis name."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: ``jax.devices()``, all processes') with axis name ``"coalitions"``.

    Args:
      devices: devices to span, in order. Must be non-empty.

    Returns:
      ``Mesh`` of shape ``(len(devices),)`` and ``axis_names == ("coalitions",)``.
    """
    if devices is None:
        devices = jax.devices()
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


def _n_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.devices.size)


def _is_jittable(utility) -> bool:
    return getattr(utility, "jittable", True) is not False


MASK_ELEMENTS_PER_CALL = 1 << 22
"""Memory rule of :func:`default_batch_size` for a utility without a preference: about this many mask
elements (``B * n_players``) per call, i.e. 4 MiB of bool masks."""


def default_batch_size(utility, devices: Sequence[jax.Device] | None, default: int,
                       n_players: int | None = None) -> int:
    """The engine's batch size when none is asked for: ``utility.preferred_batch_size`` per device, else a
    memory rule.

    A jittable utility is evaluated under :func:`evaluate_sharded`, so each of the ``D`` devices gets
    ``B / D`` coalitions: the global batch is ``preferred_batch_size * D``. A host-orchestrated utility
    (``jittable = False``) receives the whole batch in one call, so its preference is the global batch.

    Without a preference: ``default`` when ``n_players`` is not given; otherwise the power of two nearest
    below ``MASK_ELEMENTS_PER_CALL / n_players``, clamped to ``[default, 4 * default]`` (global; the engine
    rounds it up to a multiple of ``D``). A cheap utility of a few hundred to a thousand players is bound by
    the per-call work around it (mask generation, bookkeeping) and runs best at a few thousand coalitions
    per call (bench ``shapley``: the additive game of 1,000 players reached 2.4M evaluations/s at 1,024 and
    2.8M at 4,096); the clamp keeps a large-``n`` batch no smaller than before and a small-``n`` chunk (16
    batches) from holding needlessly many permutations.

    >>> default_batch_size(object(), None, 1024, n_players=1000)
    4096
    >>> default_batch_size(object(), None, 1024, n_players=3000)
    1024
    """
    preferred = getattr(utility, "preferred_batch_size", None)
    if not preferred:
        if n_players is None:
            return int(default)
        rule = 1 << max(0, (MASK_ELEMENTS_PER_CALL // max(1, int(n_players))).bit_length() - 1)
        return int(min(max(rule, int(default)), 4 * int(default)))
    n_devices = len(list(devices)) if devices is not None else jax.local_device_count()
    return int(preferred) * (n_devices if _is_jittable(utility) else 1)


def evaluate_sharded(utility, masks: jax.Array, mesh: Mesh | None) -> jax.Array:
    """``utility(masks)`` with the coalition batch split over the devices of ``mesh`` (traceable).

    On a mesh of ``D > 1`` devices the call runs under ``jax.shard_map``: device ``k`` receives rows
    ``[k B/D, (k+1) B/D)`` of ``masks`` (``in_specs = P("coalitions", None)``), calls the utility on that
    ``(B/D, n)`` block only -- so a proxy sorts, buckets and fine-tunes only its own coalitions -- and the
    ``(B/D,)`` values are concatenated back in row order (``out_specs = P("coalitions")``). Arrays the
    utility closes over (its data, the validation set) are replicated. The utility must value each row
    independently of the other rows of its batch, which the :class:`~shed_jax.proxies.base.BatchedUtility`
    contract asks for. With one device, or for a utility with ``jittable = False``, this is ``utility(masks)``.

    Args:
      utility: ``(b, n) bool -> (b,) float`` jittable function.
      masks: ``(B, n)`` bool; ``B`` must be a multiple of ``D``.
      mesh: mesh from :func:`make_mesh` (``None``: one device).

    Raises:
      ValueError: ``B`` not a multiple of ``D``, or the utility returns a shape other than ``(B/D,)`` for a
        ``(B/D, n)`` block.
    """
    n_devices = _n_devices(mesh)
    if n_devices == 1 or not _is_jittable(utility):
        return utility(masks)
    n_batch, n_players = masks.shape
    if n_batch % n_devices:
        raise ValueError(f"evaluate_sharded: batch of {n_batch} coalitions is not a multiple of the "
                         f"{n_devices} devices of the mesh")
    local_batch = n_batch // n_devices

    def local(block):
        values = utility(block)
        if tuple(values.shape) != (local_batch,):
            raise ValueError(f"utility must map masks of shape ({local_batch}, {n_players}) (one device's "
                             f"share of a batch of {n_batch} over {n_devices} devices) to values of shape "
                             f"({local_batch},), got {tuple(values.shape)}")
        return values

    spec = PartitionSpec(MESH_AXIS, None)
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(MESH_AXIS),
                         check_vma=False)(masks)


def global_array(host, mesh: Mesh, *logical_axes: str | None) -> jax.Array:
    """A global ``jax.Array`` on ``mesh`` from a host array that every process holds in full.

    ``logical_axes`` name the leading axes (``"coalitions"``, ``"data"`` or ``None``); the rest are
    replicated. Works with one process and with several (``jax.distributed``): each process fills only its
    addressable shards (``jax.make_array_from_callback``), so nothing crosses hosts.
    """
    host = np.asarray(host)
    spec = list(logical_axes) + [None] * (host.ndim - len(logical_axes))
    return jax.make_array_from_callback(host.shape, logical_sharding(mesh, *spec), lambda index: host[index])


def to_host(x) -> np.ndarray:
    """The whole value of a (possibly multi-process) ``jax.Array`` as numpy, on every process.

    Fully addressable or fully replicated arrays are read locally; an array sharded across processes is
    gathered with ``jax.experimental.multihost_utils.process_allgather`` (a collective: every process must
    call it).
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def across_processes(function, mesh: Mesh, jittable: bool = True):
    """``function`` (jitted, over ``mesh``) made callable from every process of a multi-controller run.

    With one process this returns ``function`` unchanged. With several (``jax.process_count() > 1``) each
    array argument -- which every process computed identically on the host or on its own devices -- becomes
    a global array replicated over ``mesh`` (:func:`global_array`), and each array result comes back as the
    same numpy array on every process (:func:`to_host`). Every process must make the same calls in the same
    order (the deterministic host loop of the engine does).

    ``jittable=False`` (the host step of a host-orchestrated utility such as the LM proxy) returns ``function``
    unchanged: that step is built over this process's devices only (its bookkeeping is small and every process
    computes the same), and the utility itself spreads its work over the global mesh and gathers its values
    (:mod:`shed_jax.lm.slot_sharding`).
    """
    if jax.process_count() == 1 or not jittable:
        return function

    def to_global(leaf):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            return global_array(np.asarray(leaf) if not isinstance(leaf, jax.Array) else to_host(leaf), mesh)
        return leaf

    def call(*args):
        outputs = function(*jax.tree_util.tree_map(to_global, args))
        return jax.tree_util.tree_map(lambda leaf: to_host(leaf) if isinstance(leaf, jax.Array) else leaf, outputs)

    return call
