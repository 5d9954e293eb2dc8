"""The engine's compiled steps: U(full) and U(empty) in one padded batch, and one chunk of permutations
(permutations -> coalition masks -> fixed-shape utility batches -> drops -> marginals -> Welford states), as
one jitted function (a ``lax.scan`` over the batches with the utility inside) or, for a utility with
``jittable = False``, the same jitted pieces around a host loop over the batches. Compiled functions are cached
per utility object and static plan, so a second run with the same utility compiles nothing.
"""
from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import numpy as np

from .. import sharding as _sharding
from ._estimator import welford_scan
from ._plan import Plan
from ._sampler import permutations_from_keys, ranks_of, with_antithetic

__all__ = ["NonFiniteUtilityError", "cached", "evaluate_full_and_empty", "first_trace", "is_jittable",
           "make_chunk_step", "make_host_chunk_step"]

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached(utility, static_key, build):
    """Jitted functions per utility object and static configuration, so repeated calls with the same
    utility reuse compilations. ``build(get_utility)`` makes the function; it receives a getter holding only
    a weak reference (the cache must not keep the utility alive: entries vanish with the utility). Utilities
    that cannot be weakly referenced are not cached."""
    try:
        ref = weakref.ref(utility)
        per_utility = _COMPILED.setdefault(utility, {})
    except TypeError:
        return build(lambda: utility)
    if static_key not in per_utility:
        per_utility[static_key] = build(ref)
    return per_utility[static_key]


class NonFiniteUtilityError(ValueError):
    """The utility returned NaN or an infinity for a coalition (never averaged into the values).

    Attributes:
        value: the non-finite value.
        coalition: ``(k,)`` int64, the players of the coalition, sorted.
        sample: the index of the permutation sample it belongs to (``None`` for the full/empty coalition);
            ``reversed`` is True when it is the reversed (antithetic) permutation of that sample.
    """

    def __init__(self, value, coalition, n_players, *, sample=None, reversed=False):
        self.value = float(value)
        self.coalition = np.asarray(coalition, dtype=np.int64)
        self.sample, self.reversed = sample, bool(reversed)
        players = self.coalition.tolist()
        shown = players if len(players) <= 20 else players[:20] + ["..."]
        where = "" if sample is None else (f" (permutation sample {sample}"
                                           + (", reversed" if reversed else "") + ")")
        super().__init__(f"utility returned {self.value} for the coalition of {len(players)} of {n_players} "
                         f"players {shown}{where}; a utility must return finite values (a diverged "
                         f"fine-tune or a division by zero?)")


_TRACER_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)


def is_jittable(utility) -> bool:
    return getattr(utility, "jittable", True) is not False


def first_trace(function, *args):
    """Call a jitted function whose first call traces the utility; a utility that cannot be traced gets a
    clear error instead of a deep tracer error."""
    try:
        return function(*args)
    except _TRACER_ERRORS as exc:
        raise TypeError(
            "utility must be a jittable JAX function of a bool mask batch ((B, n_players) bool -> (B,) float); "
            "set utility.jittable = False to have the engine call it outside jax.jit on concrete arrays "
            f"(tracing it raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc


class _ChunkParts:
    """The pieces of one chunk: prologue (permutations, ranks), per-batch coalitions and bookkeeping, epilogue
    (drops -> marginals -> Welford). The jittable path composes them in one jitted step (a ``lax.scan`` over the
    batches with the utility inside); the host path (``utility.jittable = False``) runs the same jitted pieces
    around a host loop over the batches, so both give the same numbers."""

    def __init__(self, plan: Plan, truncation_tol, mesh, n_groups=None):
        self.plan, self.truncation_tol, self.n_groups = plan, truncation_tol, n_groups
        self.multi = mesh is not None and mesh.devices.size > 1
        self.batch_sharding = _sharding.logical_sharding(mesh, "coalitions", None) if self.multi else None
        self.replicated = _sharding.logical_sharding(mesh) if self.multi else None

    def prologue(self, key_words, n_valid, u_full, u_empty, dtype):
        plan, T = self.plan, self.plan.n_steps
        Q = plan.samples_per_chunk * plan.perms_per_sample
        u_full, u_empty = u_full.astype(dtype), u_empty.astype(dtype)
        perms = permutations_from_keys(key_words, plan.n)
        if plan.perms_per_sample == 2:
            perms = with_antithetic(perms)
        ranks = ranks_of(perms)                                                      # (Q, n)
        perm_valid = (jnp.arange(Q, dtype=jnp.int32) // plan.perms_per_sample) < n_valid  # (Q,)
        span = jnp.abs(u_full - u_empty)
        if self.truncation_tol is not None:
            trunc0 = jnp.where(span <= self.truncation_tol * span, 0, T).astype(jnp.int32)
        else:
            trunc0 = jnp.int32(T)
        trunc = jnp.full((Q,), trunc0, jnp.int32)                                    # first step within tol
        return ranks, perm_valid, trunc, u_full, u_empty, span

    def coalitions(self, j):
        plan = self.plan
        Q = plan.samples_per_chunk * plan.perms_per_sample
        rows = j * plan.batch_size + jnp.arange(plan.batch_size, dtype=jnp.int32)
        q = jnp.minimum(rows // plan.n_inter, Q - 1)
        t = rows % plan.n_inter + 1
        return rows, q, t

    def masks(self, ranks, j):
        _, q, t = self.coalitions(j)
        masks = ranks[q] >= (t * self.plan.m)[:, None]
        if self.multi:
            masks = jax.lax.with_sharding_constraint(masks, self.batch_sharding)
        return masks

    def needed(self, j, trunc, perm_valid):
        rows, q, t = self.coalitions(j)
        needed = (rows < self.plan.rows) & perm_valid[q]
        if self.truncation_tol is not None:
            needed = needed & (t <= trunc[q])
        return needed

    def after_batch(self, j, trunc, first_bad, values, needed, u_empty, span):
        """Truncation bookkeeping and the first row (in chunk order) with a non-finite needed value."""
        rows, q, t = self.coalitions(j)
        if self.multi:
            values = jax.lax.with_sharding_constraint(values, self.replicated)
        if self.truncation_tol is not None:
            hit = needed & (jnp.abs(values - u_empty) <= self.truncation_tol * span)
            trunc = trunc.at[q].min(jnp.where(hit, t, self.plan.n_steps))
        bad = needed & ~jnp.isfinite(values)
        first_bad = jnp.minimum(first_bad, jnp.min(jnp.where(bad, rows, self.plan.rows)))
        return trunc, first_bad, values

    def epilogue(self, count, mean, m2, values, trunc, first_bad, ranks, perm_valid, n_valid, u_full, u_empty,
                 with_snapshots, groups=None):
        """Drops -> marginals -> Welford. ``groups`` is None or ``(group_mean, group_m2, owner (n,), inv_size
        (G,))``: each sample's mean marginal per group is folded into a second Welford state (the exact
        per-permutation group estimate); ``group_out`` is None or ``(group_mean, group_m2, group_snaps)``."""
        plan = self.plan
        count_before = count
        n, m, T, n_inter, P, a = plan.n, plan.m, plan.n_steps, plan.n_inter, plan.samples_per_chunk, \
            plan.perms_per_sample
        Q = P * a
        dtype = mean.dtype
        if n_inter > 0:
            flat = values.reshape(-1)
            inter = flat[:plan.rows].reshape(Q, n_inter)
            utilities = jnp.concatenate(
                [jnp.broadcast_to(u_full, (Q, 1)), inter, jnp.broadcast_to(u_empty, (Q, 1))], axis=1)
            bad_row = jnp.minimum(first_bad, plan.rows - 1)
            bad_value = flat[bad_row]
            bad_mask = ranks[bad_row // n_inter] >= (bad_row % n_inter + 1) * m
        else:
            utilities = jnp.stack([jnp.broadcast_to(u_full, (Q,)), jnp.broadcast_to(u_empty, (Q,))], axis=1)
            bad_value, bad_mask = jnp.zeros((), dtype), jnp.zeros((n,), bool)
        drops = utilities[:, :-1] - utilities[:, 1:]                     # (Q, T): block s drop
        drops = jnp.where(jnp.arange(T, dtype=jnp.int32)[None, :] >= trunc[:, None], 0, drops)
        marginals = jnp.take_along_axis(drops, ranks // m, axis=1)        # (Q, n)
        if a == 2:
            marginals = marginals.reshape(P, 2, n).mean(axis=1)
        sample_valid = jnp.arange(P, dtype=jnp.int32) < n_valid
        n_evals = jnp.sum(jnp.where(perm_valid, jnp.minimum(trunc, n_inter), 0))
        out = welford_scan(count, mean, m2, marginals, sample_valid, with_snapshots=with_snapshots)
        if with_snapshots:
            count, mean, m2, snaps = out
        else:
            (count, mean, m2), snaps = out, None
        group_out = None
        if groups is not None:
            group_mean, group_m2, owner, inv_size = groups
            group_samples = jax.ops.segment_sum(marginals.T, owner, num_segments=self.n_groups).T \
                * inv_size[None, :]                                               # (P, G)
            out = welford_scan(count_before, group_mean, group_m2, group_samples, sample_valid,
                               with_snapshots=with_snapshots)
            group_out = (out[1], out[2], out[3] if with_snapshots else None)
        return count, mean, m2, n_evals, snaps, (first_bad, bad_value, bad_mask), group_out


def _check_values(values, masks_shape):
    if values.shape != (masks_shape[0],):
        raise ValueError(f"utility must map masks of shape {masks_shape} to values of shape "
                         f"({masks_shape[0]},), got {values.shape}")


def make_chunk_step(get_utility, plan: Plan, truncation_tol, mesh, with_snapshots, n_groups=None):
    """Jitted ``(count, mean, m2, key_words, n_valid, u_full, u_empty, groups) -> (count, mean, m2, n_evals,
    snaps, (first_bad_row, its value, its coalition mask), group_out)``; ``first_bad_row == plan.rows`` when
    every needed value is finite; ``groups``/``group_out`` as in :meth:`_ChunkParts.epilogue`."""
    parts = _ChunkParts(plan, truncation_tol, mesh, n_groups)
    B = plan.batch_size

    def step(count, mean, m2, key_words, n_valid, u_full, u_empty, groups=None):
        dtype = mean.dtype
        ranks, perm_valid, trunc, u_full, u_empty, span = parts.prologue(key_words, n_valid, u_full, u_empty,
                                                                         dtype)
        first_bad = jnp.int32(plan.rows)
        values = jnp.zeros((0, B), dtype)
        if plan.n_inter > 0:
            def evaluate_batch(j):
                masks = parts.masks(ranks, j)
                values = _sharding.evaluate_sharded(get_utility(), masks, mesh)  # each device: its B/D rows
                _check_values(values, masks.shape)
                return values.astype(dtype)

            def body(carry, j):
                trunc, first_bad = carry
                needed = parts.needed(j, trunc, perm_valid)
                values = jax.lax.cond(jnp.any(needed), evaluate_batch, lambda j: jnp.zeros((B,), dtype), j)
                trunc, first_bad, values = parts.after_batch(j, trunc, first_bad, values, needed, u_empty, span)
                return (trunc, first_bad), values

            (trunc, first_bad), values = jax.lax.scan(body, (trunc, first_bad),
                                                      jnp.arange(plan.n_batches, dtype=jnp.int32))
        return parts.epilogue(count, mean, m2, values, trunc, first_bad, ranks, perm_valid, n_valid, u_full,
                              u_empty, with_snapshots, groups)

    return jax.jit(step)


def make_host_chunk_step(get_utility, plan: Plan, truncation_tol, mesh, with_snapshots, n_groups=None):
    """The chunk step for a utility with ``jittable = False``: the same jitted pieces as
    :func:`make_chunk_step`, with the utility called on concrete ``(batch_size, n)`` mask batches from a host
    loop over the chunk's batches (each call is itself batched: e.g. ``slots`` fine-tunes at once)."""
    parts = _ChunkParts(plan, truncation_tol, mesh, n_groups)
    B = plan.batch_size
    prologue = jax.jit(parts.prologue, static_argnums=4)
    masks_of = jax.jit(parts.masks)
    needed_of = jax.jit(parts.needed)
    after = jax.jit(parts.after_batch)
    epilogue = jax.jit(parts.epilogue, static_argnums=11)

    def step(count, mean, m2, key_words, n_valid, u_full, u_empty, groups=None):
        dtype = mean.dtype
        ranks, perm_valid, trunc, u_full, u_empty, span = prologue(key_words, n_valid, u_full, u_empty, dtype)
        first_bad = jnp.int32(plan.rows)
        batches = []
        for j in range(plan.n_batches):  # a host loop over batches (each a batched utility call), not coalitions
            j = jnp.int32(j)
            needed = needed_of(j, trunc, perm_valid)
            needed_rows = np.flatnonzero(np.asarray(needed))
            if needed_rows.size == B:
                masks = masks_of(ranks, j)
                values = jnp.asarray(get_utility()(masks))
                _check_values(values, masks.shape)
                values = values.astype(dtype)
            elif needed_rows.size:  # only the rows the estimate uses: a host utility's row is a fine-tune
                masks = np.asarray(masks_of(ranks, j))[needed_rows]
                sub = jnp.asarray(get_utility()(jnp.asarray(masks)))
                _check_values(sub, masks.shape)
                values = jnp.zeros((B,), dtype).at[needed_rows].set(sub.astype(dtype))
            else:
                values = jnp.zeros((B,), dtype)
            trunc, first_bad, values = after(j, trunc, first_bad, values, needed, u_empty, span)
            batches.append(values)
        values = jnp.stack(batches) if batches else jnp.zeros((0, B), dtype)
        return epilogue(count, mean, m2, values, trunc, first_bad, ranks, perm_valid, n_valid, u_full, u_empty,
                        with_snapshots, groups)

    return step


def evaluate_full_and_empty(utility, n, batch_size, mesh):
    """``(U(full), U(empty))`` from one padded ``(batch_size, n)`` call (two if batch_size == 1)."""
    multi = mesh is not None and mesh.devices.size > 1

    if is_jittable(utility):
        def build(get_utility):
            def call(masks):
                if multi:
                    masks = jax.lax.with_sharding_constraint(
                        masks, _sharding.logical_sharding(mesh, "coalitions", None))
                return _sharding.evaluate_sharded(get_utility(), masks, mesh)
            return jax.jit(call)

        jitted = _sharding.across_processes(
            cached(utility, ("full_empty", n, batch_size, tuple(mesh.devices.flat)), build), mesh)

        def call(masks):
            return first_trace(jitted, masks)
    else:
        def call(masks):
            return utility(masks)

    masks = np.zeros((batch_size, n), dtype=bool)
    masks[0] = True
    values = np.asarray(call(jnp.asarray(masks)))
    if values.shape != (batch_size,):
        raise ValueError(f"utility must map masks of shape ({batch_size}, {n}) to values of shape "
                         f"({batch_size},), got {values.shape}")
    u_full = values[0]
    u_empty = values[1] if batch_size > 1 else np.asarray(call(jnp.zeros((batch_size, n), bool)))[0]
    if not np.isfinite(u_full):
        raise NonFiniteUtilityError(u_full, np.arange(n), n)
    if not np.isfinite(u_empty):
        raise NonFiniteUtilityError(u_empty, np.zeros(0, np.int64), n)
    return float(u_full), float(u_empty)
