"""Monte Carlo Shapley values by permutation sampling, processed as SHED does.

Algorithm (Castro, Gomez & Tejada 2009, "Polynomial calculation of the Shapley value based on sampling";
SHED, He et al. 2024). For each sampled permutation ``pi`` of the ``n`` players, start from the full
coalition and remove players in the order of ``pi``, ``removal_step = m`` at a time. With ``T = ceil(n/m)``
steps, the coalition after ``t`` steps is ``S_t = {i : rank_pi(i) >= t*m}`` (``S_0`` = everyone,
``S_T`` = empty set; ``U(empty)`` is evaluated, never assumed 0). Block ``s`` (players with rank in
``[s*m, (s+1)*m)``) is credited with the drop ``U(S_s) - U(S_{s+1})``.

**Block credit.** Every member of a block receives the *whole* drop of its block, as SHED does. For
``m = 1`` this is the classic unbiased permutation estimator. For ``m > 1`` it is biased: for an additive
game ``U(S) = sum_{j in S} w_j`` with ``W = sum_j w_j`` the expected estimate is

    E[phi_i] = w_i + (W - w_i) * p,   p = P(j shares i's block) = (q*m*(m-1) + r*(r-1)) / (n*(n-1)),

with ``n = q*m + r`` (``0 <= r < m``, the last block has ``r`` players when ``r > 0``). When ``m`` divides
``n`` this is ``w_i*(n-m)/(n-1) + (m-1)*W/(n-1)``. (Splitting the drop evenly would instead make the
estimates sum to ``U(full) - U(empty)`` but is biased too; we keep SHED's choice.)

**Estimates** are means over samples; a sample is one permutation (each player gets exactly one marginal),
or with ``antithetic=True`` the average of a permutation and its reverse. ``stderr = sqrt(var / P)``.

**Groups** (``groups=owner``, e.g. the cluster of each of several proxies per cluster): per sample, the mean
marginal of each group's members is folded into a second Welford state, so ``group_values`` is the mean of
the members' values and ``group_stderr`` the exact standard error of that mean over the samples. (The
members' estimates share permutations and are correlated; combining their standard errors as if independent
is wrong in either direction.)

**Truncation** (TMC-Shapley, Ghorbani & Zou 2019): with ``truncation_tol = tol``, once
``|U(S_t) - U(empty)| <= tol * |U(full) - U(empty)|`` along a permutation (checked from ``t = 0``, so a game
with ``U(full) == U(empty)`` gives all zeros), the blocks removed after ``S_t`` get marginal 0 and their
coalitions are not counted in ``n_evaluations``. The drops credited before truncation are exact; the
marginals set to 0 would have summed to ``U(S_t) - U(empty)``, at most ``tol * |U(full) - U(empty)|`` in
absolute value, so truncation trades that bias for fewer evaluations (none when remaining drops are 0).
Shapes stay fixed: a batch of coalitions whose every slot is truncated, padding or beyond the requested
permutations is skipped (``lax.cond``); otherwise the whole batch is evaluated and the unneeded slots
ignored. Savings therefore need ``batch_size`` smaller than the coalitions of a permutation (``T - 1``).

**Batching.** Permutation ``i`` is drawn from ``fold_in(key(seed), i)`` (``_sampler.sample_permutations``).
The engine processes chunks of permutations in one jitted step: it builds the ``(P_chunk * (T-1), n)`` intermediate coalitions
in-graph, feeds them to the utility in fixed ``(batch_size, n)`` batches (padded and masked, so the utility
compiles once), scatters drops to players and folds samples into the Welford state in sample order. The
estimate for a given seed is therefore independent of ``batch_size``, of the chunking and of the device
count (up to the utility's own batch-dependence in floating point). The batch axis is sharded over all local
devices (``shed_jax.sharding``), so ``batch_size`` is rounded up to a multiple of the device count.
"""
from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import sharding as _sharding
from .._faults import fault_point
from ..config import check_positive_int
from . import _checkpoint
from ._estimator import ShapleyState, estimate, estimate_groups, init, welford_scan
from ._result import ShapleyResult
from ._sampler import permutation_keys, permutations_from_keys, ranks_of, with_antithetic
from ._stopping import MaxPermutations, RunStatus, StoppingRule, now

DEFAULT_BATCH_SIZE = 1024
"""Coalitions per utility call when neither ``batch_size`` nor ``utility.preferred_batch_size`` is given: the
base of ``shed_jax.sharding.default_batch_size``'s memory rule (between 1x and 4x this, by ``n_players``)."""

CHUNK_BATCHES = 16
"""The engine's chunk holds about this many utility batches (unless ``permutations_per_chunk`` is given)."""


def check_utility_players(utility, n_players: int) -> None:
    """Raise if the utility declares an ``n_players`` attribute different from ``n_players``."""
    declared = getattr(utility, "n_players", None)
    if isinstance(declared, (int, np.integer)) and not isinstance(declared, bool) and declared != n_players:
        raise ValueError(f"utility.n_players is {declared} but n_players={n_players} was given")


def expected_block_bias_weight(n_players: int, removal_step: int) -> float:
    """``p = P(another given player shares my block)`` under uniform permutations (see module docstring)."""
    n, m = n_players, removal_step
    if n < 2:
        return 0.0
    q, r = divmod(n, m)
    return (q * m * (m - 1) + r * (r - 1)) / (n * (n - 1))


def intermediate_coalitions(n_players: int, removal_step: int) -> int:
    """Coalitions evaluated per permutation besides the full and the empty one: ``ceil(n / m) - 1``."""
    return -(-int(n_players) // int(removal_step)) - 1


def expected_evaluations(n_players: int, removal_step: int, n_permutations: int, *, antithetic: bool = False) -> int:
    """Utility evaluations :func:`monte_carlo` spends without truncation: U(full), U(empty) and
    ``ceil(n / m) - 1`` intermediate coalitions per permutation (antithetic runs round the permutations up to an
    even number). This is the count the engine itself reports in ``n_evaluations``; truncation can only lower it.

    >>> expected_evaluations(128, 4, 6)
    188
    """
    n_permutations = int(n_permutations)
    if antithetic:
        n_permutations += n_permutations % 2
    return n_permutations * intermediate_coalitions(n_players, removal_step) + 2


class _Plan:
    """Static shapes of a run."""

    def __init__(self, n_players, removal_step, antithetic, batch_size, n_devices, permutations_per_chunk,
                 total_samples):
        self.n = n_players
        self.m = removal_step
        self.n_inter = intermediate_coalitions(n_players, removal_step)  # per permutation
        self.n_steps = self.n_inter + 1                                   # T = ceil(n / m)
        self.perms_per_sample = 2 if antithetic else 1
        self.batch_size = -(-batch_size // n_devices) * n_devices
        per_sample = self.n_inter * self.perms_per_sample
        if permutations_per_chunk is not None:
            samples = max(1, permutations_per_chunk // self.perms_per_sample)
        elif per_sample == 0:
            samples = 4096
        else:
            samples = max(1, (CHUNK_BATCHES * self.batch_size) // per_sample)
        self.samples_per_chunk = samples
        self.rows = samples * per_sample
        self.n_batches = -(-self.rows // self.batch_size) if self.rows else 0
        self.key = (self.n, self.m, self.perms_per_sample, self.batch_size, self.samples_per_chunk)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(utility, static_key, build):
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


def _is_jittable(utility) -> bool:
    return getattr(utility, "jittable", True) is not False


def _first_trace(function, *args):
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

    def __init__(self, plan: _Plan, truncation_tol, mesh, n_groups=None):
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


def _make_chunk_step(get_utility, plan: _Plan, truncation_tol, mesh, with_snapshots, n_groups=None):
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


def _make_host_chunk_step(get_utility, plan: _Plan, truncation_tol, mesh, with_snapshots, n_groups=None):
    """The chunk step for a utility with ``jittable = False``: the same jitted pieces as
    :func:`_make_chunk_step`, with the utility called on concrete ``(batch_size, n)`` mask batches from a host
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
            if bool(jnp.any(needed)):
                masks = masks_of(ranks, j)
                values = jnp.asarray(get_utility()(masks))
                _check_values(values, masks.shape)
                values = values.astype(dtype)
            else:
                values = jnp.zeros((B,), dtype)
            trunc, first_bad, values = after(j, trunc, first_bad, values, needed, u_empty, span)
            batches.append(values)
        values = jnp.stack(batches) if batches else jnp.zeros((0, B), dtype)
        return epilogue(count, mean, m2, values, trunc, first_bad, ranks, perm_valid, n_valid, u_full, u_empty,
                        with_snapshots, groups)

    return step


def _evaluate_full_and_empty(utility, n, batch_size, mesh):
    """``(U(full), U(empty))`` from one padded ``(batch_size, n)`` call (two if batch_size == 1)."""
    multi = mesh is not None and mesh.devices.size > 1

    if _is_jittable(utility):
        def build(get_utility):
            def call(masks):
                if multi:
                    masks = jax.lax.with_sharding_constraint(
                        masks, _sharding.logical_sharding(mesh, "coalitions", None))
                return _sharding.evaluate_sharded(get_utility(), masks, mesh)
            return jax.jit(call)

        jitted = _sharding.across_processes(
            _cached(utility, ("full_empty", n, batch_size, tuple(mesh.devices.flat)), build), mesh)

        def call(masks):
            return _first_trace(jitted, masks)
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


def _make_progress(progress, total):
    if progress is None or progress is False:
        return None, None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="perm", desc="shapley")
        last = [0]

        def update(status):
            bar.update(status.n_permutations - last[0])
            last[0] = status.n_permutations
        return update, bar.close
    if callable(progress):
        return progress, None
    raise TypeError(f"progress must be None, a bool or a callable(RunStatus), got {type(progress).__name__}")


def monte_carlo(utility: Callable[[jax.Array], jax.Array], n_players: int, n_permutations: int | None = 200,
                removal_step: int = 1, seed: int = 0, batch_size: int | None = None, *,
                antithetic: bool = False, truncation_tol: float | None = None,
                stopping: StoppingRule | None = None, checkpoint_dir: str | os.PathLike | None = None,
                checkpoint_every: int = 1, progress: bool | Callable[[RunStatus], None] | None = None,
                history_every: int | None = None, permutations_per_chunk: int | None = None,
                devices=None, groups=None, n_groups: int | None = None) -> ShapleyResult:
    """Monte Carlo Shapley values of ``utility`` by (block) permutation sampling. See the module docstring.

    Args:
      utility: jittable ``(B, n_players) bool -> (B,) float``; must be deterministic and return finite values
        (a NaN or infinity raises :class:`NonFiniteUtilityError` naming the coalition; the chunk it is in is
        not folded in). A utility with attribute ``jittable = False`` is called outside ``jax.jit`` on concrete
        ``(batch_size, n_players)`` mask batches (a host loop over the batches of a chunk; same values).
      n_players: number of players ``n >= 1``.
      n_permutations: permutations to sample (exact cap; antithetic rounds up to an even number). ``None``
        means "until ``stopping`` fires" (then ``stopping`` is required).
      removal_step: players removed per step (SHED's ``m``); 1 = classic permutation sampling.
      seed: permutation ``i`` is drawn from ``jax.random.fold_in(jax.random.key(seed), i)``.
      batch_size: coalitions per utility call; ``None`` -> ``utility.preferred_batch_size`` if present, else
        a memory rule from ``DEFAULT_BATCH_SIZE`` and ``n_players`` (``shed_jax.sharding.default_batch_size``). Rounded up to a multiple of the device count. Does not change the estimate.
      antithetic: pair every permutation with its reverse; the pair average is one sample.
      truncation_tol: TMC truncation tolerance (``None`` = off).
      stopping: rule(s) from ``shed_jax.shapley`` checked after every chunk (may stop before the cap).
      checkpoint_dir: save the state there (orbax) every ``checkpoint_every`` chunks and at the end; a rerun
        with the same arguments resumes and ends with exactly the values of an uninterrupted run.
      progress: True for a tqdm bar, or a callable receiving a ``RunStatus`` after each chunk.
      history_every: record ``(values, stderr)`` each time another ``history_every`` permutations are done
        (and at the end) into ``result.history``.
      permutations_per_chunk: permutations per jitted step (default: about 16 utility batches' worth).
      devices: devices to shard the batch over (default ``jax.devices()``: with ``jax.distributed``, every
        process's devices; each process then runs the same host loop and gets the same result).
      groups: optional ``(n_players,)`` int owner of each player in ``[0, n_groups)`` (every group non-empty);
        the result then also carries ``group_values`` / ``group_stderr`` ``(n_groups,)``: the per-sample mean
        marginal of each group's members, averaged over samples, and its exact standard error (see the module
        docstring), and the history ``group_values`` / ``group_stderr``. Part of the checkpoint's arguments.
      n_groups: number of groups (default ``max(groups) + 1``).

    Returns:
      ``ShapleyResult`` with ``values`` and ``stderr`` of shape ``(n_players,)``.

    Example:
      >>> from shed_jax import shapley
      >>> game = shapley.games.AdditiveGame([1.0, 2.0, 3.0])
      >>> res = shapley.monte_carlo(game, 3, n_permutations=10)
      >>> [round(v, 4) for v in res.values.tolist()]
      [1.0, 2.0, 3.0]
    """
    n_players = check_positive_int(n_players, "n_players")
    check_utility_players(utility, n_players)
    removal_step = check_positive_int(removal_step, "removal_step")
    seed = check_positive_int(seed, "seed", minimum=0)
    if seed >= 2 ** 32:
        raise ValueError(f"seed must be < 2**32, got {seed}")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    if removal_step > n_players:
        raise ValueError(f"removal_step ({removal_step}) must be <= n_players ({n_players})")
    if n_permutations is None:
        if stopping is None:
            raise ValueError("n_permutations=None needs a stopping rule")
    else:
        n_permutations = check_positive_int(n_permutations, "n_permutations")
    if stopping is not None and not isinstance(stopping, StoppingRule):
        raise TypeError(f"stopping must be a StoppingRule (e.g. MaxEvaluations(...) | WallClock(...)), "
                        f"got {type(stopping).__name__}")
    if truncation_tol is not None:
        truncation_tol = float(truncation_tol)
        if not (truncation_tol >= 0 and math.isfinite(truncation_tol)):
            raise ValueError(f"truncation_tol must be a finite number >= 0, got {truncation_tol}")
    if history_every is not None:
        history_every = check_positive_int(history_every, "history_every")
    if permutations_per_chunk is not None:
        permutations_per_chunk = check_positive_int(permutations_per_chunk, "permutations_per_chunk")
    if batch_size is None:
        batch_size = _sharding.default_batch_size(utility, devices, DEFAULT_BATCH_SIZE,  # preferred: per device
                                                   n_players=n_players)
    batch_size = check_positive_int(batch_size, "batch_size")

    owner, n_groups = _check_groups(groups, n_groups, n_players)

    devices = list(devices) if devices is not None else jax.devices()  # all processes' devices (jax.distributed)
    mesh = _sharding.make_mesh(devices)
    perms_per_sample = 2 if antithetic else 1
    total_samples = None if n_permutations is None else -(-n_permutations // perms_per_sample)
    plan = _Plan(n_players, removal_step, antithetic, batch_size, len(devices), permutations_per_chunk,
                 total_samples)

    run_args = {"n_players": n_players, "removal_step": removal_step, "seed": seed,
                "antithetic": bool(antithetic), "truncation_tol": truncation_tol,
                "history_every": history_every}
    if owner is not None:
        run_args["groups"] = _checkpoint.groups_digest(owner, n_groups)
    state = init(n_players, n_groups=n_groups)
    history = {"n_permutations": [], "values": [], "stderr": []}
    if owner is not None:
        history.update(group_values=[], group_stderr=[])
    manager = None
    if checkpoint_dir is not None:
        manager = _checkpoint.open_manager(checkpoint_dir, run_args)
        restored = _checkpoint.restore_latest(manager, run_args, n_players, n_groups=n_groups)
        if restored is not None:
            state, history = restored

    start_time = now()
    u_full, u_empty = _evaluate_full_and_empty(utility, n_players, plan.batch_size, mesh)
    jittable = _is_jittable(utility)
    static_key = ("chunk", plan.key, truncation_tol, tuple(devices), history_every is not None, jittable, n_groups)
    make_step = _make_chunk_step if jittable else _make_host_chunk_step
    step = _cached(utility, static_key, lambda get: make_step(get, plan, truncation_tol, mesh,
                                                           history_every is not None, n_groups))
    step = _sharding.across_processes(step, mesh, jittable)
    group_args = None
    if owner is not None:
        sizes = np.bincount(owner, minlength=n_groups)
        group_args = (jnp.asarray(owner, jnp.int32), jnp.asarray(1.0 / sizes, state.mean.dtype))
    if stopping is not None:
        stopping.reset()
    cap = MaxPermutations(n_permutations) if n_permutations is not None else None
    report, close_progress = _make_progress(progress, n_permutations)

    def status_of(state):
        values, stderr = estimate(state)
        return RunStatus(values=values, stderr=stderr, n_permutations=int(state.count) * perms_per_sample,
                         n_evaluations=int(state.n_evaluations) + 2, elapsed_seconds=now() - start_time)

    stop_reason = None
    chunks_since_save = 0
    count = int(state.count)
    try:
        if count > 0 and cap is not None and cap(status_of(state)):
            stop_reason = "n_permutations"
        elif count > 0 and stopping is not None and stopping(status_of(state)):
            stop_reason = "stopping"
        while stop_reason is None:
            n_valid = plan.samples_per_chunk if total_samples is None else min(plan.samples_per_chunk,
                                                                                total_samples - count)
            new_count, mean, m2, n_evals, snaps, (first_bad, bad_value, bad_mask), group_out = _first_trace(
                step, state.count, state.mean, state.m2,
                permutation_keys(seed, count, plan.samples_per_chunk), jnp.int32(n_valid),
                jnp.float32(u_full), jnp.float32(u_empty),
                None if group_args is None else (state.group_mean, state.group_m2) + group_args)
            first_bad = int(first_bad)  # with the count below: the chunk's one host sync
            if first_bad < plan.rows:  # raised before the state (or a checkpoint) takes the chunk in
                q = first_bad // plan.n_inter
                raise NonFiniteUtilityError(bad_value, np.flatnonzero(np.asarray(bad_mask)), n_players,
                                            sample=count + q // perms_per_sample,
                                            reversed=q % perms_per_sample == 1)
            group_mean, group_m2, group_snaps = group_out if group_out is not None else (None, None, None)
            state = ShapleyState(new_count, mean, m2, int(state.n_evaluations) + int(n_evals), group_mean, group_m2)
            if history_every is not None:
                _record_history(history, snaps, count, n_valid, perms_per_sample, history_every, group_snaps)
            count = int(new_count)
            fault_point("value_chunk")  # testing hook (shed_jax._faults)
            status = status_of(state)
            if report is not None:
                report(status)
            if cap is not None and cap(status):
                stop_reason = "n_permutations"
            stopped = stopping(status) if stopping is not None else False
            if stop_reason is None and stopped:
                stop_reason = "stopping"
            chunks_since_save += 1
            if manager is not None and stop_reason is None and chunks_since_save >= checkpoint_every:
                _checkpoint.save(manager, state, history, run_args)
                chunks_since_save = 0
        if manager is not None:
            _checkpoint.save(manager, state, history, run_args)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
        if close_progress is not None:
            close_progress()

    values, stderr = estimate(state)
    group_values, group_stderr = estimate_groups(state) or (None, None)
    hist = None
    if history_every is not None:
        if not history["n_permutations"] or history["n_permutations"][-1] != count * perms_per_sample:
            history["n_permutations"].append(count * perms_per_sample)
            history["values"].append(values)
            history["stderr"].append(stderr)
            if owner is not None:
                history["group_values"].append(group_values)
                history["group_stderr"].append(group_stderr)
        hist = {"n_permutations": np.asarray(history["n_permutations"], dtype=np.int64),
                "values": np.asarray(history["values"], dtype=np.float64).reshape(-1, n_players),
                "stderr": np.asarray(history["stderr"], dtype=np.float64).reshape(-1, n_players)}
        if owner is not None:
            hist.update({key: np.asarray(history[key], dtype=np.float64).reshape(-1, n_groups)
                         for key in ("group_values", "group_stderr")})
    return ShapleyResult(values=values, stderr=stderr, n_evaluations=int(state.n_evaluations) + 2,
                         n_permutations=count * perms_per_sample, n_samples=count, removal_step=removal_step,
                         u_full=u_full, u_empty=u_empty, stop_reason=stop_reason, history=hist,
                         group_values=group_values, group_stderr=group_stderr)


def _check_groups(groups, n_groups, n_players):
    """``(owner (n,) int64, n_groups)`` checked, or ``(None, None)`` without groups."""
    if groups is None:
        if n_groups is not None:
            raise ValueError("n_groups needs groups")
        return None, None
    owner = np.asarray(groups)
    if owner.shape != (n_players,) or not (owner.size == 0 or np.issubdtype(owner.dtype, np.integer)):
        raise ValueError(f"groups must be an integer array of shape ({n_players},), got {owner.dtype} {owner.shape}")
    owner = owner.astype(np.int64)
    n_groups = int(owner.max()) + 1 if n_groups is None else check_positive_int(n_groups, "n_groups")
    if owner.min() < 0 or owner.max() >= n_groups:
        raise ValueError(f"groups must lie in [0, {n_groups}), got [{owner.min()}, {owner.max()}]")
    empty = np.flatnonzero(np.bincount(owner, minlength=n_groups) == 0)
    if empty.size:
        raise ValueError(f"groups without a player: {empty[:10].tolist()}")
    return owner, n_groups


def _record_history(history, snaps, count_before, n_valid, perms_per_sample, history_every, group_snaps=None):
    """Append snapshots where the permutation count crosses a multiple of ``history_every`` (and the group
    snapshots under ``group_values`` / ``group_stderr`` when given)."""
    done = count_before + np.arange(1, n_valid + 1)                    # samples after each row
    perms_after = done * perms_per_sample
    perms_before = perms_after - perms_per_sample
    rows = np.nonzero(perms_after // history_every > perms_before // history_every)[0]
    if rows.size == 0:
        return
    for snapshots, keys in ((snaps, ("values", "stderr")), (group_snaps, ("group_values", "group_stderr"))):
        if snapshots is None:
            continue
        means, m2s, _ = snapshots
        means = np.asarray(means[rows], dtype=np.float64)
        m2s = np.asarray(m2s[rows], dtype=np.float64)
        for k, row in enumerate(rows):
            c = int(done[row])
            stderr = (np.sqrt(np.maximum(m2s[k], 0) / (c - 1) / c) if c >= 2
                      else np.full(means.shape[1], np.inf))
            history[keys[0]].append(means[k])
            history[keys[1]].append(stderr)
    history["n_permutations"].extend(int(perms_after[row]) for row in rows)
