"""The static plan of a Monte Carlo Shapley run: how many utility evaluations a run costs, and how the engine
cuts permutations into chunks of fixed-shape utility batches (see :mod:`shed_jax.shapley._driver` for the
algorithm).

A chunk holds ``samples_per_chunk`` samples (a sample is one permutation, or an antithetic pair); each
permutation needs ``ceil(n / m) - 1`` intermediate coalitions (U(full) and U(empty) are evaluated once per run),
laid out row after row and cut into ``n_batches`` batches of ``batch_size`` coalitions (the last one padded).
"""
from __future__ import annotations

import numpy as np

from ..config import check_positive_int

__all__ = ["CHUNK_BATCHES", "DEFAULT_BATCH_SIZE", "Plan", "check_groups", "check_utility_players",
           "expected_block_bias_weight", "expected_evaluations", "intermediate_coalitions"]

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


class Plan:
    """Static shapes of a run: ``n`` players, removal step ``m``, ``n_inter`` intermediate coalitions and
    ``n_steps = T`` blocks per permutation, ``perms_per_sample`` (2 when antithetic), the device-rounded
    ``batch_size``, ``samples_per_chunk``, the chunk's ``rows`` of coalitions in ``n_batches`` batches, and ``key``
    (what a compiled chunk step depends on)."""

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


def check_groups(groups, n_groups, n_players):
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
