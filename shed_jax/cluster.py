"""K-means clustering in JAX (k-means++ seeding, Lloyd iterations) and cluster proxies.

SHED (He et al., NeurIPS 2024, "SHED: Shapley-Based Automated Dataset Refinement for Instruction
Fine-Tuning") clusters the instruction embeddings with k-means and represents each cluster by a *proxy*:
the real example nearest its centroid. Shapley values are then computed over the K proxies.

Algorithm (matches scikit-learn's ``KMeans(algorithm="lloyd")`` step for step, so that the same initial
centroids give the same labels):

* Seeding: k-means++ (Arthur & Vassilvitskii, 2007). The first centroid is a uniformly random row; each next
  one is drawn with probability proportional to the squared distance to the nearest centroid chosen so far.
  With ``n_local_trials > 1`` (greedy k-means++, scikit-learn's default is ``2 + int(log K)``) that many
  candidates are drawn and the one that lowers the potential most is kept. Keys: ``jax.random.key(seed)``.
* Lloyd iteration ``t`` (all inside one ``lax.while_loop`` under ``jit``, no host sync per iteration):
  assign every row to its nearest centroid (``shed_jax.kernels.kmeans``, row chunks, matmul form), then move
  every centroid to the mean of its rows. A cluster left empty is re-seeded with the row farthest from its
  own centroid (the ``n_empty`` farthest rows go to the empty clusters in index order; each row is removed
  from the cluster it came from), as scikit-learn does.
* Stopping: after iteration ``t`` stop when the labels equal those of iteration ``t - 1`` ("strict"
  convergence), or when the centroid shift ``sum_k ||c_k^(t) - c_k^(t-1)||^2`` is ``<= tol * mean_j
  var(x[:, j])`` (scikit-learn's definition of ``tol``: relative to the mean per-feature variance of the
  data; with ``tol=0`` only a zero shift or unchanged labels stop early), or after ``max_iter`` iterations.
  When the loop did not stop on strict convergence, the labels are recomputed once with the final
  centroids, so ``labels`` are always the nearest-centroid labels of ``centroids``.
* ``inertia = sum_i ||x_i - c_{labels_i}||^2`` (difference form, float32 per row, summed in float32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from shed_jax import sharding as _sharding
from shed_jax.config import check_positive_int
from shed_jax.kernels import kmeans as _kernel

__all__ = ["KMeansResult", "kmeans", "proxies", "representatives"]


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes:
      centroids: ``(K, d)`` float32 cluster centres.
      labels: ``(N,)`` int32, index of the nearest centroid of each row.
      inertia: sum of squared distances of the rows to their assigned centroid.
      n_iter: number of Lloyd iterations run (``1 <= n_iter <= max_iter``).
      converged: True when the loop stopped on the tolerance or on unchanged labels before/at max_iter.
    """

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


# --------------------------------------------------------------------------------------------- validation


def _as_checked_matrix(x, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_rows, n_features), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.size and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"{name} contains NaN or infinite values (first at row {bad[0]}, column {bad[1]})")
    return array.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------- data-axis helpers
# Every function below runs either on one device (``axis=None``: no collectives, the arrays are the whole
# data) or inside ``jax.shard_map`` over the mesh axis named ``axis``: then ``x`` is this device's block of
# ``N_pad / D`` rows of the zero-padded points, rows at global index >= ``n_real`` are padding with weight 0,
# and sums, counts, potentials and changed labels meet through ``psum``.


def _psum(value, axis):
    return value if axis is None else lax.psum(value, axis)


def _row_offset(n_local: int, axis):
    return 0 if axis is None else lax.axis_index(axis) * n_local


def _gather_rows(values: jax.Array, n_real: int, axis) -> jax.Array:
    """(..., n_local) per-device values -> (..., n_real): every device's block in device order, padding dropped."""
    return lax.all_gather(values, axis, axis=values.ndim - 1, tiled=True)[..., :n_real]


def _real_rows(n_local: int, n_real: int, axis) -> jax.Array:
    """(n_local,) bool: rows of this block that are data, not padding."""
    return (_row_offset(n_local, axis) + jnp.arange(n_local, dtype=jnp.int32)) < n_real


# ------------------------------------------------------------------------------------------------ seeding


# Columns per distance GEMM of greedy k-means++ (``n_local_trials > 1``). XLA:CPU's GEMM rounds a (T, d) x (d, n)
# product differently for different n (measured, jax 0.10.2, T = 8, d = 384: the first 1,024 columns of
# n = 2,500 / 10,000 / 12,000 / 20,000 differ from n = 1,024 in about 7,600 of 8,192 entries, while n = 2,048, 4,096,
# 8,192, 16,384 and a 1,024-block at any row offset agree), so a device's (T, N / D) block and one device's (T, N)
# block drew other candidates (20,000 x 384, K = 300, T = 8: 106 of 300 rows from step 181 on 2 and 8 devices).
# Blocks of one fixed shape make every entry the same GEMM on any device count.
_SEED_COLUMN_BLOCK = 1024


def _cross_in_column_blocks(rows: jax.Array, x_blocks: jax.Array, n_cols: int) -> jax.Array:
    """``rows @ x.T`` for the first ``n_cols`` rows of ``x_blocks`` (which has >= _SEED_COLUMN_BLOCK rows), as
    (T, d) x (d, _SEED_COLUMN_BLOCK) GEMMs; the last block is clamped to the end and overlaps the previous one
    (the overlap is written twice with the same values)."""
    block, n_rows = _SEED_COLUMN_BLOCK, x_blocks.shape[0]
    out = jnp.zeros((rows.shape[0], n_rows), rows.dtype)

    def body(index, out):
        start = jnp.minimum(index * block, n_rows - block)
        x_block = lax.dynamic_slice_in_dim(x_blocks, start, block, axis=0)
        cross = jnp.matmul(rows, x_block.T, precision=lax.Precision.HIGHEST)
        return lax.dynamic_update_slice_in_dim(out, cross, start, axis=1)

    out = lax.fori_loop(0, -(-n_rows // block), body, out)
    return out[:, :n_cols]


def _kmeans_plusplus_impl(key: jax.Array, x: jax.Array, n_clusters: int, n_local_trials: int, n_real: int | None = None,
                          axis: str | None = None) -> jax.Array:
    """k-means++ seeding. x (N, d) float32 -> (K,) int32 global indices of the chosen rows (replicated).

    Sharded (``axis`` given): the squared distances of every row to the drawn rows are computed on the row's
    device; the ``(N,)`` potential (and, with several trials, the ``(T, N)`` candidate potentials) is gathered
    so that each step's global draw (same key everywhere) sums the same float32 values in the same order as
    on one device, and the drawn rows reach every device by a ``psum`` from their owner. With greedy trials the
    ``(T, N)`` cross products are GEMMs of one fixed shape (``_cross_in_column_blocks``) and each candidate's
    potential is the last entry of a cumulative sum, so no rounding depends on the device count either. The same
    rows are drawn on 1, 2 and 8 devices (tested: plain at 50,000 x 384; greedy, T = 8, at 20,000 and 50,001 x 384).
    """
    n_local = x.shape[0]
    n_rows = n_local if n_real is None else n_real
    offset = _row_offset(n_local, axis)
    row_ids = offset + jnp.arange(n_local, dtype=jnp.int32)
    real = row_ids < n_rows
    x_sq = jnp.sum(x * x, axis=1)
    # greedy trials: the (T, n) cross products in GEMMs of one fixed shape (see _cross_in_column_blocks); a block
    # holds at least _SEED_COLUMN_BLOCK rows, zero rows appended when there are fewer (their columns are dropped)
    x_blocks = x if n_local_trials == 1 or n_local >= _SEED_COLUMN_BLOCK else jnp.pad(
        x, ((0, _SEED_COLUMN_BLOCK - n_local), (0, 0)))

    def sq_dist_to_rows(row_indices):  # global (T,) -> (T, n_local), matmul form clipped at 0
        if axis is None:
            rows, rows_sq = x[row_indices], x_sq[row_indices]
        else:  # the owner contributes the row, the others zeros: exact
            local = row_indices - offset
            own = (local >= 0) & (local < n_local)
            local = jnp.clip(local, 0, n_local - 1)
            rows = lax.psum(jnp.where(own[:, None], x[local], 0.0), axis)
            rows_sq = lax.psum(jnp.where(own, x_sq[local], 0.0), axis)
        cross = (jnp.matmul(rows, x.T, precision=lax.Precision.HIGHEST) if rows.shape[0] == 1
                 else _cross_in_column_blocks(rows, x_blocks, n_local))
        dist = jnp.maximum(rows_sq[:, None] - 2.0 * cross + x_sq[None, :], 0.0)
        # a chosen row has potential 0; padding rows have weight 0
        return jnp.where((row_ids[None, :] == row_indices[:, None]) | ~real[None, :], 0.0, dist)

    key, first_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n_rows, dtype=jnp.int32)
    closest = sq_dist_to_rows(first[None])[0]
    chosen = jnp.zeros((n_clusters,), jnp.int32).at[0].set(first)

    def body(step, state):
        chosen, closest, key = state
        key, draw_key = jax.random.split(key)
        draw_key, uniform_key = jax.random.split(draw_key)
        # Sharded: the (N,) potential is gathered (N floats per step, cheap next to the (T, N / D) distances) so
        # that every device takes the one-device path's float32 cumulative sum over exactly the same N values
        # in the same order: a sum assembled from per-device blocks rounds differently, and at 50,000 rows
        # that moved a draw (a different seeding from step 355 of 1,000 on 2 devices).
        cumulative = jnp.cumsum(closest if axis is None else _gather_rows(closest, n_rows, axis))
        total = cumulative[-1]  # not jnp.sum: targets must stay below the last cumulative value
        targets = jax.random.uniform(draw_key, (n_local_trials,), jnp.float32) * total
        weighted = jnp.searchsorted(cumulative, targets, side="right").astype(jnp.int32)
        # All remaining rows coincide with chosen centroids (total == 0): draw uniformly instead.
        uniform = jax.random.randint(uniform_key, (n_local_trials,), 0, n_rows, dtype=jnp.int32)
        candidates = jnp.where(total > 0, jnp.minimum(weighted, n_rows - 1), uniform)
        candidate_closest = jnp.minimum(closest[None, :], sq_dist_to_rows(candidates))
        if n_local_trials == 1:
            best = 0
        else:  # the potential of each candidate over the same N values in the same order as on one device, and
            # as a cumulative sum like the draws: XLA:CPU splits a plain (T, N) jnp.sum by the process's thread
            # layout (measured: (8, 50,001) summed in a process with 8 fake devices differs from 1 or 2 devices)
            potentials = jnp.cumsum(candidate_closest if axis is None
                                    else _gather_rows(candidate_closest, n_rows, axis), axis=-1)[:, -1]
            best = jnp.argmin(potentials)
        return chosen.at[step].set(candidates[best]), candidate_closest[best], key

    chosen, _, _ = lax.fori_loop(1, n_clusters, body, (chosen, closest, key))
    return chosen


_kmeans_plusplus = jax.jit(_kmeans_plusplus_impl, static_argnames=("n_clusters", "n_local_trials"))


# ------------------------------------------------------------------------------------------------- Lloyd


def _update_centroids(x, labels, centroids_old, n_clusters, n_real=None, axis=None):
    """M-step with empty-cluster re-seeding. Returns new (K, d) centroids (replicated when sharded).

    Empty clusters (no row labelled k) take the rows farthest from their own (old) centroid, in descending
    distance order, one per empty cluster in increasing cluster index; each moved row leaves its old
    cluster's sum. A cluster whose count drops to 0 keeps its old centroid. Sharded: the farthest rows are
    a global top-k (each block's top-k, gathered in device order, then the top-k of those; ties go to the
    lowest global index as on one device).
    """
    n_local = x.shape[0]
    n_rows = n_local if n_real is None else n_real
    if axis is None:
        weight = jnp.ones((n_local,), x.dtype)
        sums = jax.ops.segment_sum(x, labels, num_segments=n_clusters)
    else:
        weight = _real_rows(n_local, n_rows, axis).astype(x.dtype)
        sums = lax.psum(jax.ops.segment_sum(x * weight[:, None], labels, num_segments=n_clusters), axis)
    counts = _psum(jax.ops.segment_sum(weight, labels, num_segments=n_clusters), axis)
    is_empty = counts == 0

    def relocate(operand):
        sums, counts = operand
        n_moves = min(n_clusters, n_rows)
        diff = x - centroids_old[labels]
        sq_dist = jnp.where(weight > 0, jnp.sum(diff * diff, axis=1), -1.0)
        if axis is None:
            _, farthest = lax.top_k(sq_dist, n_moves)  # (M,) row indices, descending distance
            far_rows, source = x[farthest], labels[farthest]
            max_sq_dist = jnp.max(sq_dist)
        else:
            local_dist, local_far = lax.top_k(sq_dist, min(n_moves, n_local))
            all_dist = lax.all_gather(local_dist, axis).reshape(-1)               # device order
            all_rows = lax.all_gather(x[local_far], axis).reshape(-1, x.shape[1])
            all_source = lax.all_gather(labels[local_far], axis).reshape(-1)
            _, pick = lax.top_k(all_dist, n_moves)
            far_rows, source = all_rows[pick], all_source[pick]
            max_sq_dist = lax.pmax(jnp.max(sq_dist), axis)
        empty_ids = jnp.nonzero(is_empty, size=n_moves, fill_value=0)[0]  # (M,) increasing cluster index
        n_empty = jnp.sum(is_empty)
        valid = (jnp.arange(n_moves) < n_empty).astype(x.dtype)  # (M,)
        moved_rows = far_rows * valid[:, None]  # (M, d)
        sums = sums.at[source].add(-moved_rows)
        counts = counts.at[source].add(-valid)
        # Valid slots have distinct empty targets; invalid slots point out of range and are dropped.
        target = jnp.where(valid > 0, empty_ids, n_clusters)  # out-of-range -> dropped
        sums = sums.at[target].set(moved_rows, mode="drop")
        counts = counts.at[target].set(valid, mode="drop")
        # If every row sits exactly on its centroid, relocating cannot help (duplicates): keep as is.
        nothing_to_move = max_sq_dist == 0
        return lax.cond(nothing_to_move, lambda: operand, lambda: (sums, counts))

    sums, counts = lax.cond(jnp.any(is_empty), relocate, lambda operand: operand, (sums, counts))
    safe_counts = jnp.maximum(counts, 1.0)
    return jnp.where((counts > 0)[:, None], sums / safe_counts[:, None], centroids_old)


def _mean_feature_variance(x, n_real, axis):
    if axis is None:
        return jnp.mean(jnp.var(x, axis=0))
    weight = _real_rows(x.shape[0], n_real, axis).astype(x.dtype)[:, None]
    mean = lax.psum(jnp.sum(x * weight, axis=0), axis) / n_real
    return jnp.mean(lax.psum(jnp.sum(jnp.square(x - mean[None, :]) * weight, axis=0), axis) / n_real)


def _lloyd_impl(x, init_centroids, max_iter, tol, *, chunk_size, n_real=None, axis=None):
    """Lloyd iterations in one while_loop. Returns (centroids, labels, inertia, n_iter, converged).

    x (N, d) float32, init_centroids (K, d) float32, max_iter int32 scalar, tol float32 scalar (relative).
    Sharded (``axis``): ``x`` and ``labels`` are this device's block; every other output is replicated.
    """
    n_local = x.shape[0]
    n_real = n_local if n_real is None else n_real
    n_clusters = init_centroids.shape[0]
    # scikit-learn's absolute tolerance: tol * mean per-feature variance (skipped when tol == 0).
    tol_abs = lax.cond(tol > 0, lambda: tol * _mean_feature_variance(x, n_real, axis),
                       lambda: jnp.zeros((), x.dtype))

    def cond(state):
        iteration, _, _, done, _ = state
        return jnp.logical_and(iteration < max_iter, jnp.logical_not(done))

    def body(state):
        iteration, centroids, labels_old, _, _ = state
        labels = _kernel.assign_labels(x, centroids, chunk_size=chunk_size)
        new_centroids = _update_centroids(x, labels, centroids, n_clusters, n_real, axis)
        shift = jnp.sum(jnp.square(new_centroids - centroids))
        if axis is None:
            strict = jnp.all(labels == labels_old)
        else:
            strict = lax.psum(jnp.sum(labels != labels_old, dtype=jnp.int32), axis) == 0
        done = jnp.logical_or(strict, shift <= tol_abs)
        return iteration + 1, new_centroids, labels, done, strict

    initial = (
        jnp.zeros((), jnp.int32),
        init_centroids,
        jnp.full((n_local,), -1, jnp.int32),
        jnp.zeros((), bool),
        jnp.zeros((), bool),
    )
    n_iter, centroids, labels, done, strict = lax.while_loop(cond, body, initial)

    def exact_distances(labels):
        diff = x - centroids[labels]
        return labels, jnp.sum(diff * diff, axis=1)

    # After strict convergence the last labels already belong to the final centroids (same partition).
    labels, sq_dist = lax.cond(
        strict, exact_distances, lambda labels: _kernel.assign(x, centroids, chunk_size=chunk_size), labels
    )
    if axis is None:
        inertia = jnp.sum(sq_dist)
    else:
        inertia = lax.psum(jnp.sum(jnp.where(_real_rows(n_local, n_real, axis), sq_dist, 0.0)), axis)
    return centroids, labels, inertia, n_iter, done


_lloyd = jax.jit(_lloyd_impl, static_argnames=("chunk_size",))


_SHARDED_CACHE: dict = {}


def _sharded_functions(mesh, n_real: int, n_clusters: int, n_local_trials: int, chunk_size: int):
    """Jitted ``shard_map`` versions of k-means++ and Lloyd over the ``data`` axis of ``mesh`` (cached)."""
    from jax.sharding import PartitionSpec as P
    axis = _sharding.LOGICAL_AXIS_RULES["data"]
    rows, replicated = P(axis, None), P()
    devices = tuple(mesh.devices.flat)
    seed_key = ("seed", devices, n_real, n_clusters, n_local_trials)
    if seed_key not in _SHARDED_CACHE:
        _SHARDED_CACHE[seed_key] = jax.jit(jax.shard_map(
            lambda seed, x: _kmeans_plusplus_impl(jax.random.key(seed), x, n_clusters, n_local_trials, n_real, axis),
            mesh=mesh, in_specs=(replicated, rows), out_specs=replicated, check_vma=False))
    lloyd_key = ("lloyd", devices, n_real, chunk_size)  # K comes from the shape of the initial centroids
    if lloyd_key not in _SHARDED_CACHE:
        _SHARDED_CACHE[lloyd_key] = jax.jit(jax.shard_map(
            lambda x, init, max_iter, tol: _lloyd_impl(x, init, max_iter, tol, chunk_size=chunk_size,
                                                       n_real=n_real, axis=axis),
            mesh=mesh, in_specs=(rows, replicated, replicated, replicated),
            out_specs=(replicated, P(axis), replicated, replicated, replicated), check_vma=False))
    return _SHARDED_CACHE[seed_key], _SHARDED_CACHE[lloyd_key]


def _padded_rows(mesh, *arrays) -> tuple[tuple, int]:
    """Each ``(host_array, dtype)`` zero-padded along its first axis to ``N_pad``, a multiple of the device count
    (the rows at index >= N are padding: weight 0 / never chosen, see above), as a global array split on the
    ``data`` axis; returns ``(global arrays, N_pad)``."""
    n_devices = mesh.devices.size
    n_rows = arrays[0][0].shape[0]
    n_pad = -(-n_rows // n_devices) * n_devices
    out = []
    for host, dtype in arrays:
        padded = np.zeros((n_pad, *np.shape(host)[1:]), dtype)
        padded[:n_rows] = host
        out.append(_sharding.global_array(padded, mesh, "data"))
    return tuple(out), n_pad


def _kmeans_sharded(x_host, n_clusters, seed, max_iter, tol, init_host, chunk_size, n_local_trials, devices):
    """k-means with the points zero-padded to a multiple of D and split over the ``data`` axis."""
    mesh = _sharding.make_mesh(devices)
    n_devices = mesh.devices.size
    n_rows = x_host.shape[0]
    (x_global,), n_pad = _padded_rows(mesh, (x_host, np.float32))
    # a row chunk larger than one device's block would only be clamped to it
    seed_fn, lloyd_fn = _sharded_functions(mesh, n_rows, n_clusters, n_local_trials,
                                           min(chunk_size, n_pad // n_devices))
    if init_host is None:
        chosen = _sharding.to_host(seed_fn(np.int32(seed), x_global))
        init_host = x_host[np.asarray(chosen)]
    init_global = _sharding.global_array(np.asarray(init_host, np.float32), mesh)
    centroids, labels, inertia, n_iter, converged = lloyd_fn(
        x_global, init_global, np.int32(max_iter), np.float32(tol))
    return (_sharding.to_host(centroids), _sharding.to_host(labels)[:n_rows], _sharding.to_host(inertia),
            _sharding.to_host(n_iter), _sharding.to_host(converged))


# ----------------------------------------------------------------------------------------------- public


def kmeans(
    x,
    n_clusters: int,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    init=None,
    *,
    chunk_size: int | None = None,
    n_local_trials: int = 1,
    devices=None,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``n_clusters`` groups with k-means (Lloyd).

    Args:
      x: ``(N, d)`` array of finite floats (converted to float32).
      n_clusters: K, ``1 <= K <= N``.
      seed: seeds k-means++ (``jax.random.key(seed)``); ignored when ``init`` is given. Same seed, same data
        -> same result.
      max_iter: maximum number of Lloyd iterations (>= 1).
      tol: relative tolerance (>= 0): stop when the summed squared centroid shift of one iteration is
        ``<= tol * mean(var(x, axis=0))`` (scikit-learn's definition). The loop also stops when the labels
        no longer change.
      init: optional ``(K, d)`` initial centroids (then no k-means++).
      chunk_size: rows per distance block (default ``shed_jax.kernels.kmeans.DEFAULT_CHUNK_SIZE``); peak
        memory of the assignment is ``chunk_size * K`` floats, never ``N * K``.
      n_local_trials: candidates per k-means++ step; 1 is plain k-means++, ``2 + int(log K)`` is
        scikit-learn's greedy default.
      devices: devices to split the points over (default ``jax.devices()``: all devices of all processes).
        With ``D > 1`` the rows are zero-padded to a multiple of ``D`` (padding has weight 0) and sharded on
        the ``data`` axis under ``jax.shard_map``: each device assigns its rows and sums them per cluster,
        and sums, counts, inertia, changed labels and the k-means++ potential meet through ``psum``
        (empty-cluster relocation and k-means++ draws are global). The result equals the one-device result
        up to the float32 summation order of the cluster sums (the labels are the same unless a row is
        equidistant from two centroids to float32 rounding). k-means++ seeding, plain or greedy, draws the
        same rows on any device count.

    Returns:
      :class:`KMeansResult` (numpy arrays on the host).

    Raises:
      ValueError: x not 2-D, non-numeric, NaN/inf, K < 1 or K > N, init shape or values bad, bad max_iter,
        tol, chunk_size or n_local_trials.

    >>> import numpy as np
    >>> x = np.array([[0., 0.], [0., 1.], [10., 10.], [10., 11.]], np.float32)
    >>> km = kmeans(x, 2, seed=0)
    >>> sorted(np.bincount(km.labels).tolist()), round(km.inertia, 4)
    ([2, 2], 1.0)
    """
    x_host = _as_checked_matrix(x, "x")
    n_rows, n_features = x_host.shape
    # the name keeps the wording of the former message ("must be an int", ">= 1")
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    if n_clusters > n_rows:
        raise ValueError(f"n_clusters={n_clusters} is larger than the number of rows N={n_rows}")
    max_iter = check_positive_int(max_iter, "max_iter")
    n_local_trials = check_positive_int(n_local_trials, "n_local_trials")
    if chunk_size is None:
        chunk_size = _kernel.DEFAULT_CHUNK_SIZE
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) or not tol >= 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not math.isfinite(float(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")

    init_host = None
    if init is not None:
        init_host = _as_checked_matrix(init, "init")
        if init_host.shape != (n_clusters, n_features):
            raise ValueError(
                f"init must have shape (n_clusters, n_features) = ({n_clusters}, {n_features}), "
                f"got {init_host.shape}"
            )
    devices = list(devices) if devices is not None else jax.devices()
    if len(devices) > 1:
        centroids, labels, inertia, n_iter, converged = _kmeans_sharded(
            x_host, n_clusters, seed, max_iter, tol, init_host, chunk_size, n_local_trials, devices)
        return KMeansResult(centroids=np.asarray(centroids, dtype=np.float32), labels=np.asarray(labels, np.int32),
                            inertia=float(inertia), n_iter=int(n_iter), converged=bool(converged))

    x_device = jax.device_put(x_host, devices[0])
    if init_host is None:
        key = jax.random.key(int(seed))
        chosen = _kmeans_plusplus(key, x_device, n_clusters=n_clusters, n_local_trials=n_local_trials)
        init_centroids = x_device[chosen]
    else:
        init_centroids = jax.device_put(init_host, devices[0])

    centroids, labels, inertia, n_iter, converged = _lloyd(
        x_device, init_centroids, jnp.int32(max_iter), jnp.float32(tol), chunk_size=chunk_size
    )
    return KMeansResult(
        centroids=np.asarray(centroids, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int32),
        inertia=float(inertia),
        n_iter=int(n_iter),
        converged=bool(converged),
    )


def _member_proxies_impl(x, centroids, labels, n_real=None, axis=None):
    """(K,) int32: per cluster the member nearest its centroid (lowest index on ties); N where empty.

    Sharded (``axis``): a per-device ``segment_min`` of distances and of global row indices, met by ``pmin``
    (padding rows have distance +inf and index N, so they never win)."""
    n_local = x.shape[0]
    n_rows = n_local if n_real is None else n_real
    n_clusters = centroids.shape[0]
    row_ids = _row_offset(n_local, axis) + jnp.arange(n_local, dtype=jnp.int32)
    diff = x - centroids[labels]
    sq_dist = jnp.where(row_ids < n_rows, jnp.sum(diff * diff, axis=1), jnp.inf)
    best = jax.ops.segment_min(sq_dist, labels, num_segments=n_clusters)
    if axis is not None:
        best = lax.pmin(best, axis)
    candidates = jnp.where((sq_dist == best[labels]) & (row_ids < n_rows), row_ids, n_rows)
    proxy = jax.ops.segment_min(candidates, labels, num_segments=n_clusters)
    if axis is not None:
        proxy = lax.pmin(proxy, axis)
    return jnp.minimum(proxy, n_rows)


_member_proxies = jax.jit(_member_proxies_impl)


def _member_proxies_sharded(x_host, centroids_host, labels_host, devices):
    """:func:`_member_proxies` with the rows zero-padded to a multiple of D and split on the ``data`` axis."""
    from jax.sharding import PartitionSpec as P
    mesh = _sharding.make_mesh(devices)
    n_rows = x_host.shape[0]
    (x_global, labels_global), _ = _padded_rows(mesh, (x_host, np.float32), (labels_host, np.int32))
    axis = _sharding.LOGICAL_AXIS_RULES["data"]
    cache_key = ("proxies", tuple(mesh.devices.flat), n_rows)
    if cache_key not in _SHARDED_CACHE:
        _SHARDED_CACHE[cache_key] = jax.jit(jax.shard_map(
            lambda x, c, lab: _member_proxies_impl(x, c, lab, n_rows, axis), mesh=mesh,
            in_specs=(P(axis, None), P(), P(axis)), out_specs=P(), check_vma=False))
    return _sharding.to_host(_SHARDED_CACHE[cache_key](
        x_global, _sharding.global_array(centroids_host, mesh), labels_global))


def proxies(x, centroids, labels) -> np.ndarray:
    """Index of the real example that represents each cluster (SHED's cluster proxy).

    For cluster ``k`` the proxy is the member (``labels == k``) nearest to ``centroids[k]`` (squared
    Euclidean, float32 difference form; lowest index on ties). Because every row belongs to exactly one
    cluster, proxies chosen among members are automatically distinct: two clusters can never claim the same
    row. Only a cluster with *no* members (possible when ``labels`` come from elsewhere) falls back to the
    nearest row that is not already a proxy, handled in increasing cluster order, so the result is always
    ``K`` distinct indices.

    Args:
      x: ``(N, d)`` finite floats.
      centroids: ``(K, d)`` with ``K <= N``.
      labels: ``(N,)`` ints in ``[0, K)``.

    Returns:
      ``(K,)`` int64 row indices, pairwise distinct.

    >>> import numpy as np
    >>> x = np.array([[0., 0.], [1., 0.], [9., 0.], [10., 0.]], np.float32)
    >>> proxies(x, np.array([[0.4, 0.], [9.9, 0.]], np.float32), np.array([0, 0, 1, 1])).tolist()
    [0, 3]
    """
    x_host = _as_checked_matrix(x, "x")
    centroids_host = _as_checked_matrix(centroids, "centroids")
    labels_host = np.asarray(labels)
    n_rows, n_features = x_host.shape
    n_clusters = centroids_host.shape[0]
    if centroids_host.shape[1] != n_features:
        raise ValueError(f"centroids have {centroids_host.shape[1]} features but x has {n_features}")
    if n_clusters < 1 or n_clusters > n_rows:
        raise ValueError(f"need 1 <= K <= N, got K={n_clusters} centroids for N={n_rows} rows")
    if labels_host.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},), got {labels_host.shape}")
    if not np.issubdtype(labels_host.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels_host.dtype}")
    if labels_host.min() < 0 or labels_host.max() >= n_clusters:
        raise ValueError(f"labels must lie in [0, {n_clusters}), got range [{labels_host.min()}, {labels_host.max()}]")

    devices = jax.devices()
    if len(devices) > 1:  # a sharded argmin over the data axis
        proxy = np.asarray(_member_proxies_sharded(x_host, centroids_host, labels_host.astype(np.int32), devices))
    else:
        proxy = np.asarray(_member_proxies(jax.device_put(x_host, devices[0]), jax.device_put(centroids_host, devices[0]),
                                           jax.device_put(labels_host.astype(np.int32), devices[0])))
    proxy = proxy.astype(np.int64)
    empty_clusters = np.flatnonzero(proxy >= n_rows)
    if empty_clusters.size:
        taken = np.zeros(n_rows, bool)
        taken[proxy[proxy < n_rows]] = True
        for cluster in empty_clusters:  # rare fallback, at most K iterations of an O(N d) numpy pass
            sq_dist = np.sum((x_host.astype(np.float64) - centroids_host[cluster].astype(np.float64)) ** 2, axis=1)
            sq_dist[taken] = np.inf
            proxy[cluster] = int(np.argmin(sq_dist))
            taken[proxy[cluster]] = True
    return proxy


def representatives(x, centroids, labels, per_cluster: int, proxy_index=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``per_cluster`` members of each cluster nearest its centroid (all members of a smaller cluster).

    With ``per_cluster=1`` this is SHED's one proxy per cluster; more representatives per cluster value a
    cluster by several of its members, which matters when a cluster mixes good and bad examples.

    Args:
      x: ``(N, d)`` finite floats.
      centroids: ``(K, d)``.
      labels: ``(N,)`` ints in ``[0, K)``; negative labels (rows outside every cluster) are never chosen.
      per_cluster: ``>= 1``.
      proxy_index: optional ``(K,)`` row of each cluster's proxy (:func:`proxies`); when given it is always
        its cluster's first representative (it is also the nearest member unless a cluster was empty).

    Returns:
      ``(index, cluster)``: ``(P,)`` int64 row indices, distinct, grouped by cluster in increasing cluster
      order and, within a cluster, by increasing squared distance to the centroid (lowest index on ties); and
      the ``(P,)`` int64 cluster of each. ``P = sum_k min(per_cluster, size_k)`` (plus the proxy of an empty
      cluster, when ``proxy_index`` is given).

    >>> import numpy as np
    >>> x = np.array([[0., 0.], [1., 0.], [3., 0.], [9., 0.], [10., 0.]], np.float32)
    >>> index, cluster = representatives(x, np.array([[0.4, 0.], [9.9, 0.]], np.float32), np.array([0, 0, 0, 1, 1]), 2)
    >>> index.tolist(), cluster.tolist()
    ([0, 1, 4, 3], [0, 0, 1, 1])
    """
    check_positive_int(per_cluster, "per_cluster")
    x_host = _as_checked_matrix(x, "x").astype(np.float64)
    centroids_host = _as_checked_matrix(centroids, "centroids").astype(np.float64)
    labels_host = np.asarray(labels).astype(np.int64)
    n_rows = x_host.shape[0]
    n_clusters = centroids_host.shape[0]
    if labels_host.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},), got {labels_host.shape}")
    if labels_host.max(initial=-1) >= n_clusters:
        raise ValueError(f"labels must lie in [0, {n_clusters}), got max {labels_host.max()}")
    rows = np.flatnonzero(labels_host >= 0)
    owner = labels_host[rows]
    sq_dist = np.sum((x_host[rows] - centroids_host[owner]) ** 2, axis=1)
    first = np.zeros(rows.shape[0], bool)  # rows that must lead their cluster
    if proxy_index is not None:
        proxy_index = np.asarray(proxy_index, np.int64)
        if proxy_index.shape != (n_clusters,):
            raise ValueError(f"proxy_index must have shape ({n_clusters},), got {proxy_index.shape}")
        first = proxy_index[owner] == rows
    order = np.lexsort((rows, sq_dist, ~first, owner))  # by cluster, proxy first, then distance, then index
    rows, owner = rows[order], owner[order]
    starts = np.searchsorted(owner, owner, side="left")
    rank = np.arange(owner.shape[0]) - starts
    keep = rank < per_cluster
    index, cluster = rows[keep], owner[keep]
    if proxy_index is not None:  # a cluster without members keeps its (fallback) proxy
        missing = np.setdiff1d(np.arange(n_clusters), cluster)
        if missing.size:
            index = np.concatenate([index, proxy_index[missing]])
            cluster = np.concatenate([cluster, missing])
            order = np.argsort(cluster, kind="stable")
            index, cluster = index[order], cluster[order]
    return index.astype(np.int64), cluster.astype(np.int64)
