"""Exact Shapley values by enumerating all ``2**n`` coalitions.

``phi_i = sum_{S not containing i} |S|! (n-|S|-1)! / n! * (U(S + i) - U(S))``. Coalition ``S`` is encoded by
the integer ``code = sum_{j in S} 2**j``. Utility values are computed in fixed-size batches (the utility
compiles once) and the weighted sums in float64 numpy.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..config import check_positive_int
from ._plan import check_utility_players

MAX_EXACT_PLAYERS = 20


def coalition_values(utility, n_players: int, *, batch_size: int = 4096) -> np.ndarray:
    """Utility of every coalition: ``(2**n,)`` float64, entry ``code`` is ``U({j : bit j of code set})``."""
    check_positive_int(n_players, "n_players")
    if n_players > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact enumeration needs 2**n_players utility calls; n_players={n_players} exceeds "
                         f"the limit of {MAX_EXACT_PLAYERS} (2**{MAX_EXACT_PLAYERS} coalitions). "
                         f"Use shapley.monte_carlo for larger games.")
    check_positive_int(batch_size, "batch_size")
    check_utility_players(utility, n_players)
    n = int(n_players)
    total = 1 << n
    batch_size = int(min(batch_size, total))
    bits = jnp.asarray(1 << np.arange(n), dtype=jnp.int32)

    @jax.jit
    def batch_values(start):
        codes = start + jnp.arange(batch_size, dtype=jnp.int32)
        masks = (codes[:, None] & bits[None, :]) != 0
        values = utility(masks)
        if values.shape != (batch_size,):
            raise ValueError(f"utility must map masks of shape {masks.shape} to values of shape "
                             f"({batch_size},), got {values.shape}")
        return values

    chunks = [batch_values(jnp.int32(start)) for start in range(0, total, batch_size)]
    values = np.concatenate([np.asarray(c, dtype=np.float64) for c in chunks])[:total]
    # The last batch may run past 2**n: codes >= 2**n alias larger masks only in bits >= n, which do not
    # exist, so they are simply dropped here.
    return values


def shapley_from_values(values: np.ndarray, n_players: int) -> np.ndarray:
    """Exact Shapley values ``(n,)`` float64 from the ``(2**n,)`` table of :func:`coalition_values`."""
    n = int(n_players)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (1 << n,):
        raise ValueError(f"values must have shape ({1 << n},), got {values.shape}")
    codes = np.arange(1 << n, dtype=np.int64)
    sizes = np.zeros(1 << n, dtype=np.int64)
    for j in range(n):
        sizes += (codes >> j) & 1
    weights = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) if s < n else 0.0
                        for s in range(n + 1)], dtype=np.float64)
    phi = np.empty(n, dtype=np.float64)
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = np.dot(weights[sizes[without]], values[without | (1 << i)] - values[without])
    return phi


def exact(utility, n_players: int, *, batch_size: int = 4096) -> np.ndarray:
    """Exact Shapley values by enumeration of all ``2**n_players`` coalitions (``n_players <= 20``).

    Args:
      utility: jittable ``(B, n_players) bool -> (B,) float``.
      n_players: number of players, 1..20.
      batch_size: coalitions per utility call (fixed; the last batch is padded).

    Returns:
      ``(n_players,)`` float64 numpy array.

    Example:
      >>> from shed_jax.shapley import exact, games
      >>> exact(games.UnanimityGame(3, [0, 1]), 3).round(6).tolist()
      [0.5, 0.5, 0.0]
    """
    return shapley_from_values(coalition_values(utility, n_players, batch_size=batch_size), n_players)
