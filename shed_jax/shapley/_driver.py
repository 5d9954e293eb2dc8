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

**Layout.** :mod:`._plan`: what a run costs and the static shapes of its chunks; :mod:`._steps`: the compiled
steps (U(full)/U(empty), one chunk); this module: :func:`monte_carlo`, the host loop (arguments, the default
batch size, checkpoint restore and save, stopping rules, progress, history).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import sharding as _sharding
from .._faults import fault_point
from ..config import check_positive_int
from ..progress import bar as progress_bar
from . import _checkpoint
from ._estimator import ShapleyState, estimate, estimate_groups, init
from ._plan import DEFAULT_BATCH_SIZE, Plan, check_groups, check_utility_players
from ._result import ShapleyResult
from ._sampler import permutation_keys
from ._steps import (NonFiniteUtilityError, cached, evaluate_full_and_empty, first_trace, is_jittable,
                     make_chunk_step, make_host_chunk_step)
from ._stopping import MaxPermutations, RunStatus, StoppingRule, now

__all__ = ["monte_carlo"]


def _make_progress(progress, total):
    """``(report(status), close)`` for ``progress``: None/False (none), True (a :mod:`shed_jax.progress` bar of
    permutations) or a callable receiving each :class:`RunStatus`."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        label = f"Shapley: {total:,} permutations" if total else "Shapley permutations"
        bar = progress_bar(total or 0, label, unit="perm")
        return (lambda status: bar.set(status.n_permutations)), bar.close
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
        a memory rule from ``DEFAULT_BATCH_SIZE`` and ``n_players`` (``shed_jax.sharding.default_batch_size``).
        Rounded up to a multiple of the device count. Does not change the estimate.
      antithetic: pair every permutation with its reverse; the pair average is one sample.
      truncation_tol: TMC truncation tolerance (``None`` = off).
      stopping: rule(s) from ``shed_jax.shapley`` checked after every chunk (may stop before the cap).
      checkpoint_dir: save the state there (orbax) every ``checkpoint_every`` chunks and at the end; a rerun
        with the same arguments resumes and ends with exactly the values of an uninterrupted run.
      progress: True for a :mod:`shed_jax.progress` bar (a tqdm bar on a terminal, plain lines elsewhere), or a
        callable receiving a ``RunStatus`` after each chunk.
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
        batch_size = _sharding.default_batch_size(utility, devices, DEFAULT_BATCH_SIZE,
                                                  n_players=n_players)  # preferred: per device
    batch_size = check_positive_int(batch_size, "batch_size")

    owner, n_groups = check_groups(groups, n_groups, n_players)

    devices = list(devices) if devices is not None else jax.devices()  # all processes' devices (jax.distributed)
    mesh = _sharding.make_mesh(devices)
    perms_per_sample = 2 if antithetic else 1
    total_samples = None if n_permutations is None else -(-n_permutations // perms_per_sample)
    plan = Plan(n_players, removal_step, antithetic, batch_size, len(devices), permutations_per_chunk,
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
    u_full, u_empty = evaluate_full_and_empty(utility, n_players, plan.batch_size, mesh)
    jittable = is_jittable(utility)
    static_key = ("chunk", plan.key, truncation_tol, tuple(devices), history_every is not None, jittable, n_groups)
    make_step = make_chunk_step if jittable else make_host_chunk_step
    # a host utility under several processes: its step's bookkeeping stays in each process (the same everywhere);
    # the utility spreads its own work over the global mesh (shed_jax.lm.slot_sharding)
    step_mesh = mesh if jittable or jax.process_count() == 1 else None
    step = cached(utility, static_key, lambda get: make_step(get, plan, truncation_tol, step_mesh,
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
            new_count, mean, m2, n_evals, snaps, (first_bad, bad_value, bad_mask), group_out = first_trace(
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
