"""Mergeable running statistics of per-player marginal samples (the estimator state).

The state is a pytree of running sums in the optax ``init``/``update`` style:

* ``count``  -- number of samples folded in (a sample is one permutation, or one antithetic pair);
* ``mean``   -- ``(n,)`` running mean of the per-player marginal contributions;
* ``m2``     -- ``(n,)`` sum of squared deviations from the mean (Welford 1962);
* ``n_evaluations`` -- utility evaluations spent (a host-side integer, exact beyond 2**31);
* ``group_mean``, ``group_m2`` -- optional ``(G,)`` running sums of a second statistic of the same samples:
  the per-sample mean marginal of each group of players (``monte_carlo(..., groups=...)``), so that a
  group's value has an exact standard error over the permutations (its members' estimates are correlated).
  ``None`` without groups.

``update`` folds samples in *sequentially* (one Welford step per sample, in sample order), so the state after
samples ``0..P-1`` is bitwise the same however the samples were chunked. ``merge`` combines two states
exactly in real arithmetic with the parallel formula of Chan, Golub & LeVeque (1979), so two runs over
disjoint sample index ranges, or two devices, combine into one estimate.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ShapleyState(NamedTuple):
    """Running sums of the Monte Carlo estimator. See the module docstring."""
    count: jax.Array          # () int32
    mean: jax.Array           # (n,) float
    m2: jax.Array             # (n,) float
    n_evaluations: int | np.integer = 0
    group_mean: jax.Array | None = None   # (G,) float, or None without groups
    group_m2: jax.Array | None = None     # (G,) float, or None without groups


def _float_dtype():
    return jnp.zeros((), dtype=float).dtype  # float32 unless jax_enable_x64


def init(n_players: int, dtype=None, n_groups: int | None = None) -> ShapleyState:
    """Empty state for ``n_players`` players (``count == 0``, zeros), with ``(n_groups,)`` group sums if given."""
    if n_players < 1:
        raise ValueError(f"n_players must be >= 1, got {n_players}")
    dtype = dtype or _float_dtype()
    group = (jnp.zeros((n_groups,), dtype), jnp.zeros((n_groups,), dtype)) if n_groups else (None, None)
    return ShapleyState(count=jnp.zeros((), jnp.int32), mean=jnp.zeros((n_players,), dtype),
                        m2=jnp.zeros((n_players,), dtype), n_evaluations=0, group_mean=group[0], group_m2=group[1])


def welford_scan(count, mean, m2, samples, valid, *, with_snapshots: bool = False):
    """Fold ``samples`` (P, n) in order, skipping rows with ``valid == False``. Jittable.

    Returns ``(count, mean, m2)``, and if ``with_snapshots`` also ``(means (P, n), m2s (P, n), counts (P,))``
    after each row.
    """
    def step(carry, row):
        c, mu, s = carry
        x, ok = row
        c_new = c + ok.astype(c.dtype)
        delta = x - mu
        mu_new = mu + delta / jnp.maximum(c_new, 1).astype(mu.dtype)
        s_new = s + delta * (x - mu_new)
        mu = jnp.where(ok, mu_new, mu)
        s = jnp.where(ok, s_new, s)
        out = (mu, s, c_new) if with_snapshots else None
        return (c_new, mu, s), out

    (count, mean, m2), snaps = jax.lax.scan(step, (count, mean, m2), (samples.astype(mean.dtype), valid))
    if with_snapshots:
        return count, mean, m2, snaps
    return count, mean, m2


_welford_jit = jax.jit(welford_scan)


def update(state: ShapleyState, samples, valid=None, n_evaluations: int = 0) -> ShapleyState:
    """Fold marginal samples into the state.

    Args:
      state: current state.
      samples: ``(P, n)`` per-player marginal contributions, one row per sample.
      valid: optional ``(P,)`` bool; rows with False are ignored.
      n_evaluations: utility evaluations these samples cost (added to ``state.n_evaluations``).
    """
    samples = jnp.asarray(samples)
    if samples.ndim != 2 or samples.shape[1] != state.mean.shape[0]:
        raise ValueError(f"samples must have shape (P, {state.mean.shape[0]}), got {samples.shape}")
    if valid is None:
        valid = jnp.ones((samples.shape[0],), bool)
    if state.group_mean is not None:
        raise ValueError("update() folds player samples only; a state with group sums is advanced by monte_carlo")
    count, mean, m2 = _welford_jit(state.count, state.mean, state.m2, samples, jnp.asarray(valid, bool))
    return ShapleyState(count, mean, m2, int(state.n_evaluations) + int(n_evaluations))


def merge(a: ShapleyState, b: ShapleyState) -> ShapleyState:
    """Combine the states of two disjoint sets of samples (Chan et al. parallel update)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"cannot merge states of {a.mean.shape[0]} and {b.mean.shape[0]} players")
    if (a.group_mean is None) != (b.group_mean is None) or (
            a.group_mean is not None and a.group_mean.shape != b.group_mean.shape):
        raise ValueError("cannot merge states with different groups")
    na = jnp.asarray(a.count).astype(a.mean.dtype)
    nb = jnp.asarray(b.count).astype(a.mean.dtype)
    safe = jnp.maximum(na + nb, 1)

    def combine(mean_a, m2_a, mean_b, m2_b):
        delta = mean_b - mean_a
        return mean_a + delta * (nb / safe), m2_a + m2_b + delta * delta * (na * nb / safe)

    mean, m2 = combine(a.mean, a.m2, b.mean, b.m2)
    group = (combine(a.group_mean, a.group_m2, b.group_mean, b.group_m2) if a.group_mean is not None
             else (None, None))
    return ShapleyState(jnp.asarray(a.count) + jnp.asarray(b.count), mean, m2,
                        int(a.n_evaluations) + int(b.n_evaluations), group[0], group[1])


def estimate(state: ShapleyState) -> tuple[np.ndarray, np.ndarray]:
    """``(values (n,), stderr (n,))`` as float64 numpy; stderr is ``inf`` with fewer than 2 samples.

    ``stderr = sqrt(sample variance / count)`` with the unbiased (``count - 1``) sample variance.
    """
    return _mean_and_stderr(int(state.count), state.mean, state.m2)


def estimate_groups(state: ShapleyState) -> tuple[np.ndarray, np.ndarray] | None:
    """``(group_values (G,), group_stderr (G,))`` like :func:`estimate`, or None for a state without groups."""
    if state.group_mean is None:
        return None
    return _mean_and_stderr(int(state.count), state.group_mean, state.group_m2)


def _mean_and_stderr(count: int, mean, m2) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=np.float64)
    if count < 2:
        return mean, np.full_like(mean, np.inf)
    var = np.maximum(np.asarray(m2, dtype=np.float64), 0.0) / (count - 1)
    return mean, np.sqrt(var / count)
