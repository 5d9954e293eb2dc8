"""Cooperative games with closed-form Shapley values, for tests and benchmarks.

Every game is a jittable batched utility ``game(masks (B, n) bool) -> (B,) float32`` with attribute
``n_players`` and a method ``shapley_values() -> (n,) float64`` computed from a closed form or a
combinatorial formula that does not enumerate coalitions (so it is an independent reference for
:func:`shed_jax.shapley.exact`). References: Shapley (1953); Shapley & Shubik (1954) for voting games;
Littlechild & Owen (1973) for the airport game; pyDVL ``games.py`` and shapiq's unanimity games.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def _size_weight(s: int, n: int) -> float:
    """Shapley weight of a coalition of size ``s`` not containing the player: ``s!(n-s-1)!/n!``."""
    return math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)


class AdditiveGame:
    """``U(S) = sum_{i in S} w_i``. Shapley value ``phi_i = w_i``."""

    def __init__(self, weights: Sequence[float]):
        self.weights = np.asarray(weights, dtype=np.float64)
        if self.weights.ndim != 1 or self.weights.size < 1:
            raise ValueError("weights must be a non-empty 1-D sequence")
        self.n_players = self.weights.size
        self._w = jnp.asarray(self.weights, dtype=jnp.float32)

    def __call__(self, masks):
        return jnp.where(masks, self._w[None, :], jnp.float32(0)).sum(axis=1)

    def shapley_values(self) -> np.ndarray:
        return self.weights.copy()


class UnanimityGame:
    """``U(S) = scale`` if ``coalition`` is a subset of ``S`` else 0. ``phi_i = scale/|T|`` for ``i in T``."""

    def __init__(self, n_players: int, coalition: Sequence[int], scale: float = 1.0):
        self.n_players = int(n_players)
        self.coalition = np.unique(np.asarray(coalition, dtype=np.int64))
        if self.coalition.size == 0 or self.coalition.min() < 0 or self.coalition.max() >= n_players:
            raise ValueError(f"coalition must be a non-empty subset of range({n_players})")
        self.scale = float(scale)
        member = np.zeros(n_players, dtype=bool)
        member[self.coalition] = True
        self._member = jnp.asarray(member)

    def __call__(self, masks):
        covered = jnp.all(masks | ~self._member[None, :], axis=1)
        return jnp.where(covered, jnp.float32(self.scale), jnp.float32(0))

    def shapley_values(self) -> np.ndarray:
        phi = np.zeros(self.n_players)
        phi[self.coalition] = self.scale / self.coalition.size
        return phi


class UnanimitySum:
    """``U = sum_k c_k * u_{T_k}`` (any game is one, by its Harsanyi dividends). ``phi`` is the same sum."""

    def __init__(self, n_players: int, coalitions: Sequence[Sequence[int]], coefficients: Sequence[float]):
        if len(coalitions) != len(coefficients) or not coalitions:
            raise ValueError("need as many coefficients as coalitions (at least one)")
        self.n_players = int(n_players)
        self.games = [UnanimityGame(n_players, t, c) for t, c in zip(coalitions, coefficients)]
        members = np.zeros((len(coalitions), n_players), dtype=bool)
        for k, g in enumerate(self.games):
            members[k, g.coalition] = True
        self._members = jnp.asarray(members)                      # (K, n)
        self._coef = jnp.asarray(coefficients, dtype=jnp.float32)  # (K,)

    def __call__(self, masks):
        # missing[b, k] = number of members of T_k absent from S_b
        missing = (~masks).astype(jnp.float32) @ self._members.astype(jnp.float32).T
        return jnp.where(missing == 0, self._coef[None, :], jnp.float32(0)).sum(axis=1)

    def shapley_values(self) -> np.ndarray:
        return np.sum([g.shapley_values() for g in self.games], axis=0)


class GloveGame:
    """Players ``0..L-1`` hold a left glove, ``L..L+R-1`` a right glove; ``U(S) = min(#left, #right)``.

    ``shapley_values`` sums over the *numbers* ``(a, b)`` of left/right gloves among the other players, with
    binomial multiplicities, not over coalitions.
    """

    def __init__(self, n_left: int, n_right: int):
        if n_left < 1 or n_right < 1:
            raise ValueError("need at least one left and one right glove")
        self.n_left, self.n_right = int(n_left), int(n_right)
        self.n_players = self.n_left + self.n_right
        self._is_left = jnp.asarray(np.arange(self.n_players) < self.n_left)

    def __call__(self, masks):
        left = jnp.sum(masks & self._is_left[None, :], axis=1)
        right = jnp.sum(masks & ~self._is_left[None, :], axis=1)
        return jnp.minimum(left, right).astype(jnp.float32)

    def _value_of(self, own_left: int, own_right: int) -> float:
        # Others: own_left fewer lefts available etc.
        n, others_left, others_right = self.n_players, self.n_left - own_left, self.n_right - own_right
        total = 0.0
        for a in range(others_left + 1):
            for b in range(others_right + 1):
                gain = min(a + own_left, b + own_right) - min(a, b)
                if gain:
                    total += math.comb(others_left, a) * math.comb(others_right, b) * _size_weight(a + b, n) * gain
        return total

    def shapley_values(self) -> np.ndarray:
        return np.concatenate([np.full(self.n_left, self._value_of(1, 0)),
                               np.full(self.n_right, self._value_of(0, 1))])


class WeightedVotingGame:
    """``U(S) = 1`` if ``sum_{i in S} w_i >= quota`` else 0 (integer weights). Symmetric voting: all ``w = 1``.

    ``shapley_values`` is the Shapley-Shubik index by dynamic programming over (size, weight) of the other
    players' coalitions: ``phi_i = sum_{s, v: quota - w_i <= v < quota} N_i(s, v) s!(n-s-1)!/n!``.
    """

    def __init__(self, weights: Sequence[int], quota: int):
        self.weights = np.asarray(weights, dtype=np.int64)
        if self.weights.ndim != 1 or self.weights.size < 1 or np.any(self.weights < 0):
            raise ValueError("weights must be a non-empty 1-D sequence of non-negative integers")
        self.quota = int(quota)
        self.n_players = self.weights.size
        self._w = jnp.asarray(self.weights, dtype=jnp.int32)

    def __call__(self, masks):
        total = jnp.sum(jnp.where(masks, self._w[None, :], 0), axis=1)
        return (total >= self.quota).astype(jnp.float32)

    def shapley_values(self) -> np.ndarray:
        n, total_weight = self.n_players, int(self.weights.sum())
        phi = np.zeros(n)
        for i in range(n):
            counts = np.zeros((n, total_weight + 1))   # counts[s, v]: subsets of others of size s, weight v
            counts[0, 0] = 1
            for j in range(n):
                if j == i:
                    continue
                w = int(self.weights[j])
                shifted = np.zeros_like(counts)
                shifted[1:, w:] = counts[:-1, :total_weight + 1 - w]
                counts = counts + shifted
            lo, hi = max(self.quota - int(self.weights[i]), 0), min(self.quota, total_weight + 1)
            for s in range(n):
                phi[i] += counts[s, lo:hi].sum() * _size_weight(s, n)
        return phi


class AirportGame:
    """Cost game ``U(S) = max_{i in S} c_i`` (``U(empty) = 0``), with Littlechild-Owen's closed form:

    sorting ``c_(1) <= ... <= c_(n)``, ``phi_(k) = sum_{j <= k} (c_(j) - c_(j-1)) / (n - j + 1)``.
    """

    def __init__(self, costs: Sequence[float]):
        self.costs = np.asarray(costs, dtype=np.float64)
        if self.costs.ndim != 1 or self.costs.size < 1 or np.any(self.costs < 0):
            raise ValueError("costs must be a non-empty 1-D sequence of non-negative numbers")
        self.n_players = self.costs.size
        self._c = jnp.asarray(self.costs, dtype=jnp.float32)

    def __call__(self, masks):
        return jnp.max(jnp.where(masks, self._c[None, :], jnp.float32(0)), axis=1)

    def shapley_values(self) -> np.ndarray:
        n = self.n_players
        order = np.argsort(self.costs, kind="stable")
        sorted_costs = self.costs[order]
        increments = np.diff(np.concatenate([[0.0], sorted_costs])) / (n - np.arange(n))
        phi = np.empty(n)
        phi[order] = np.cumsum(increments)
        return phi
