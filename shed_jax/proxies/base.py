"""The proxy contract: what a proxy receives, what it returns, and a generic batched evaluator.

A *utility* values coalitions of players (here: proxy examples, one per cluster). It is called on a batch
of coalitions at once, given as a boolean membership matrix, and returns one value per coalition, the
shape of shapiq's ``Game.__call__`` and pyDVL's ``Utility``::

    masks (B, n_players) bool  ->  values (B,) float32

The Shapley engine (``shed_jax.shapley``) pads batches to fixed shapes and, when the utility has an
integer attribute ``preferred_batch_size`` and no batch size was asked for, uses it.

**Writing a proxy.** A proxy is a factory ``(inputs: ProxyInputs, config) -> utility`` registered with
:func:`shed_jax.proxies.register` together with its configuration dataclass. The utility has
``n_players``, ``preferred_batch_size``, ``__call__(masks)`` and ``describe() -> dict`` (written to the run
directory). A proxy that trains one small model per coalition can leave the batching to
:func:`evaluate_coalitions`: it supplies ``coalition_value(data, mask, *, n_bucket, config) -> ()`` for one
coalition padded to ``n_bucket`` members, and gets size buckets, chunks sized by a memory budget,
``lax.map`` over chunks, ``lax.switch`` on the bucket and ``vmap`` inside a chunk.

**Several devices.** The engine calls a jittable utility under ``jax.shard_map`` over the ``coalitions`` mesh
axis (:func:`shed_jax.sharding.evaluate_sharded`): on ``D`` devices each call sees one device's ``(B / D, n)``
block of masks, so ``preferred_batch_size`` and a memory budget are *per device*, and a utility must value
each row independently of the other rows in its batch.
"""
from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BatchedUtility", "ProxyInputs", "as_mask_batch", "bucket_sizes", "chunk_size_for",
           "evaluate_coalitions", "trace_count", "traced_mask_shapes"]


@runtime_checkable
class BatchedUtility(Protocol):
    """A value function over coalitions, batched and jittable.

    Attributes:
        n_players: number of players ``n``; coalitions are rows of a ``(B, n)`` boolean matrix.
        preferred_batch_size: the batch size ``B`` the utility runs most efficiently at (the engine uses
            it when it is not told otherwise).

    Calling the utility with ``masks`` of shape ``(B, n_players)`` and dtype bool returns ``(B,)``
    float32 values; ``masks[b, i]`` is True when player ``i`` is a member of coalition ``b``. The call
    must be traceable (usable inside ``jax.jit``) and must not recompile for a new batch of the same shape.
    """

    n_players: int
    preferred_batch_size: int

    def __call__(self, masks: jax.Array) -> jax.Array: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True, eq=False)
class ProxyInputs:
    """What a proxy factory receives: the Shapley players (records), the validation set, and helpers.

    Attributes:
      prompts / responses: the players' prompt and response texts, one per player (``n_players``).
      records: the players' records exactly as in the data file.
      record_index: ``(n_players,)`` int64 index of each player in the data file.
      embeddings: ``(n_players, d)`` float32 clustering embeddings of the players.
      validation: a :class:`shed_jax.data.MultipleChoiceSet` or :class:`shed_jax.data.InstructionSet`.
      embed: ``embed(texts, progress=bool) -> (len(texts), d) float32`` L2-normalised sentence embeddings
        through the run's cached encoder.
      seed: the run's seed.
      progress: whether progress bars may be shown.
    """

    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    records: tuple[dict, ...]
    record_index: np.ndarray
    embeddings: np.ndarray
    validation: Any
    embed: Callable[..., np.ndarray]
    seed: int = 0
    progress: bool = False

    @property
    def n_players(self) -> int:
        return len(self.prompts)


def as_mask_batch(masks, n_players: int) -> jax.Array:
    """Checks and converts a batch of coalition masks.

    Args:
        masks: array-like of shape ``(B, n_players)``, dtype bool or integer (0/1); a tracer is accepted.
        n_players: expected number of columns.

    Returns:
        ``(B, n_players)`` bool ``jax.Array``.

    Raises:
        ValueError: wrong rank or number of columns.
        TypeError: floating-point or other non-integer dtype (a fractional membership has no meaning).
    """
    if not isinstance(masks, jax.Array):
        masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n_players:
        raise ValueError(
            f"masks must have shape (batch, n_players={n_players}), got {tuple(masks.shape)}"
        )
    dtype = np.dtype(masks.dtype)
    if dtype == np.bool_:
        return jnp.asarray(masks)
    if np.issubdtype(dtype, np.integer):
        return jnp.asarray(masks) != 0
    raise TypeError(f"masks must be bool (or integer 0/1), got dtype {dtype}")


# --------------------------------------------------------------------------------------------------
# generic batched coalition evaluator
# --------------------------------------------------------------------------------------------------


def bucket_sizes(n_players: int, *, ratio: float = 2.0, min_bucket: int = 16) -> tuple[int, ...]:
    """The ladder of padded coalition sizes: ``(0, min_bucket, ~min_bucket*ratio, ..., n_players)``.

    Bucket 0 is the empty coalition (no training). Sizes above 0 are rounded up to a multiple of 8 and
    capped at ``n_players``, which is always the last bucket.

    >>> bucket_sizes(1000)
    (0, 16, 32, 64, 128, 256, 512, 1000)
    >>> bucket_sizes(5)
    (0, 5)
    """
    if n_players < 1:
        raise ValueError(f"n_players must be >= 1, got {n_players}")
    sizes = [0]
    size = float(min_bucket)
    while True:
        rounded = min(int(math.ceil(size / 8.0)) * 8 if size > 8 else int(math.ceil(size)), n_players)
        if rounded > sizes[-1]:
            sizes.append(rounded)
        if rounded >= n_players:
            break
        size *= ratio
    return tuple(sizes)


def chunk_size_for(backend: str, per_coalition_bytes: int, memory_budget_bytes: int, *, max_chunk: int = 256,
                   cpu_chunk: int = 1) -> int:
    """Coalitions trained together under ``vmap``: ``cpu_chunk`` on a CPU (one coalition already keeps the
    cores busy, and a batch axis of 1 avoids slower batched matmuls), else as many as the memory budget
    allows for the largest bucket, between 1 and ``max_chunk``."""
    if backend == "cpu":
        return int(cpu_chunk)
    return int(max(1, min(max_chunk, memory_budget_bytes // max(1, int(per_coalition_bytes)))))


def _unit_chunk(value_fn):
    """Adapts ``(data, mask (n,)) -> ()`` to a chunk of one: ``(data, masks (1, n)) -> (1,)``."""
    return lambda data, chunk_masks: value_fn(data, chunk_masks[0])[None]


def _evaluate(coalition_value, data, masks, *, config, buckets: tuple[int, ...], chunk_size: int) -> jax.Array:
    """``(B, n)`` bool -> ``(B,)`` float32: sort by size, ``lax.map`` over chunks, ``lax.switch`` on bucket."""
    n_batch, n_players = masks.shape
    counts = jnp.sum(masks, axis=1, dtype=jnp.int32)
    order = jnp.argsort(counts, stable=True)
    n_chunks = -(-n_batch // chunk_size)
    padded = jnp.zeros((n_chunks * chunk_size, n_players), bool).at[:n_batch].set(masks[order])
    chunks = padded.reshape(n_chunks, chunk_size, n_players)
    bucket_array = jnp.asarray(buckets, jnp.int32)
    if chunk_size == 1:  # no vmap: a batch axis of 1 would turn every matmul into a slower batched dot
        branches = [_unit_chunk(partial(coalition_value, n_bucket=size, config=config)) for size in buckets]
    else:
        branches = [jax.vmap(partial(coalition_value, n_bucket=size, config=config), in_axes=(None, 0))
                    for size in buckets]

    def value_chunk(chunk_masks):
        largest = jnp.max(jnp.sum(chunk_masks, axis=1, dtype=jnp.int32))
        branch = jnp.searchsorted(bucket_array, largest, side="left")
        return jax.lax.switch(branch, branches, data, chunk_masks)

    values_sorted = jax.lax.map(value_chunk, chunks).reshape(-1)[:n_batch]
    return jnp.zeros((n_batch,), jnp.float32).at[order].set(values_sorted)


_TRACE_COUNTS: dict[tuple, int] = {}  # diagnostics only: traces of the batched function per static setting
_TRACE_SHAPES: dict[tuple, list] = {}  # diagnostics only: the mask shapes it was traced with (local shards)


def _evaluate_counted(coalition_value, data, masks, *, config, buckets, chunk_size):
    key = (coalition_value, config, buckets, chunk_size)
    _TRACE_COUNTS[key] = _TRACE_COUNTS.get(key, 0) + 1  # runs at trace time only
    _TRACE_SHAPES.setdefault(key, []).append(tuple(int(x) for x in masks.shape))
    return _evaluate(coalition_value, data, masks, config=config, buckets=buckets, chunk_size=chunk_size)


# One jitted function for every proxy: utilities with the same static setting share compilations.
_evaluate_jit = jax.jit(_evaluate_counted, static_argnames=("coalition_value", "config", "buckets", "chunk_size"))


def evaluate_coalitions(coalition_value: Callable[..., jax.Array], data: Any, masks: jax.Array, *, config: Any,
                        buckets: Sequence[int], chunk_size: int) -> jax.Array:
    """Values a batch of coalitions, each trained only on its members, with static shapes throughout.

    Args:
      coalition_value: a module-level function ``(data, mask (n,) bool, *, n_bucket: int, config) -> ()``
        float32 that values one coalition padded to ``n_bucket`` members (``mask.sum() <= n_bucket``;
        ``n_bucket == 0`` means the empty coalition). It is a static argument: use the same function object
        for every call so that compilations are shared.
      data: a pytree of arrays the proxy needs (passed, never closed over).
      masks: ``(B, n)`` bool coalitions.
      config: the proxy's hashable configuration (static).
      buckets: padded coalition sizes, ascending, ``buckets[0] == 0`` and ``buckets[-1] == n``
        (:func:`bucket_sizes`).
      chunk_size: coalitions trained together under ``vmap`` (:func:`chunk_size_for`).

    Returns:
      ``(B,)`` float32 values. Coalitions are sorted by size and split into chunks; ``lax.map`` runs the chunks
      in turn and ``lax.switch`` picks, per chunk, the smallest bucket that fits its largest coalition. A new
      batch of masks of a seen shape never retraces (see :func:`trace_count`).
    """
    return _evaluate_jit(coalition_value, data, masks, config=config, buckets=tuple(int(b) for b in buckets),
                         chunk_size=int(chunk_size))


def trace_count(coalition_value, config, buckets, chunk_size) -> int:
    """How many times :func:`evaluate_coalitions` was traced for this static setting (retrace tests)."""
    return _TRACE_COUNTS.get((coalition_value, config, tuple(buckets), int(chunk_size)), 0)


def traced_mask_shapes(coalition_value, config, buckets, chunk_size) -> list[tuple[int, int]]:
    """The ``(b, n)`` mask shapes :func:`evaluate_coalitions` was traced with for this static setting, in order.

    Under :func:`shed_jax.sharding.evaluate_sharded` on ``D`` devices the utility is traced with one device's
    block, ``(B / D, n)``: the evidence that each device evaluates only its share of the batch.
    """
    return list(_TRACE_SHAPES.get((coalition_value, config, tuple(buckets), int(chunk_size)), []))
