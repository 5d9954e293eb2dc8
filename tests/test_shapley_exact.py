"""Exact enumeration vs closed forms, and the Shapley axioms (shed_jax.shapley.exact)."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax import shapley
from shed_jax.shapley import games


class TableGame:
    """Arbitrary game given by its value table: ``U(S) = table[sum_{j in S} 2**j]``."""

    def __init__(self, table):
        self.table = np.asarray(table, dtype=np.float64)
        self.n_players = int(round(math.log2(self.table.size)))
        self._table = jnp.asarray(self.table, jnp.float32)
        self._bits = jnp.asarray(1 << np.arange(self.n_players), jnp.int32)

    def __call__(self, masks):
        return self._table[masks.astype(jnp.int32) @ self._bits]


def brute_force_shapley(table, n):
    """Shapley values by the permutation definition (average marginal over all n! orders)."""
    import itertools
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        code = 0
        for player in order:
            phi[player] += table[code | (1 << player)] - table[code]
            code |= 1 << player
    return phi / math.factorial(n)


CLOSED_FORM_GAMES = [
    games.AdditiveGame([1.0, -2.0, 3.5, 0.25]),
    games.UnanimityGame(6, [1, 3, 4], scale=2.0),
    games.UnanimitySum(7, [[0, 1], [1, 2, 3], [6], [0, 2, 4, 5, 6]], [1.0, -2.0, 0.5, 3.0]),
    games.GloveGame(3, 5),
    games.GloveGame(4, 4),
    games.WeightedVotingGame([1, 1, 1, 1, 1, 1, 1], quota=4),       # symmetric voting
    games.WeightedVotingGame([4, 3, 2, 1, 1, 1], quota=7),
    games.WeightedVotingGame([50, 49, 1], quota=51),
    games.AirportGame([1.0, 3.0, 2.0, 5.0, 5.0, 8.0]),
]


@pytest.mark.parametrize("game", CLOSED_FORM_GAMES, ids=lambda g: type(g).__name__)
def test_exact_matches_closed_form(game):
    phi = shapley.exact(game, game.n_players, batch_size=16)
    np.testing.assert_allclose(phi, game.shapley_values(), rtol=0, atol=1e-6)


def test_closed_forms_known_values():
    # independent sanity values from the literature
    np.testing.assert_allclose(games.GloveGame(1, 2).shapley_values(), [2 / 3, 1 / 6, 1 / 6])
    np.testing.assert_allclose(games.WeightedVotingGame([50, 49, 1], 51).shapley_values(), [2 / 3, 1 / 6, 1 / 6])
    np.testing.assert_allclose(games.WeightedVotingGame([1] * 5, 3).shapley_values(), [0.2] * 5)
    np.testing.assert_allclose(games.AirportGame([1.0, 2.0]).shapley_values(), [0.5, 1.5])


def test_exact_matches_permutation_definition_on_random_game():
    rng = np.random.default_rng(1)
    table = rng.normal(size=2 ** 5)
    game = TableGame(table)
    np.testing.assert_allclose(shapley.exact(game, 5, batch_size=7), brute_force_shapley(game._table, 5),
                               atol=1e-5)


def test_axioms_on_random_games():
    rng = np.random.default_rng(2)
    n = 6
    table_u, table_v = rng.normal(size=2 ** n), rng.normal(size=2 ** n)
    u, v = TableGame(table_u), TableGame(table_v)
    phi_u, phi_v = shapley.exact(u, n), shapley.exact(v, n)
    t32 = np.asarray(u._table, np.float64)
    # efficiency
    assert phi_u.sum() == pytest.approx(t32[-1] - t32[0], abs=1e-5)
    # linearity
    combo = TableGame(np.asarray(u._table, np.float64) * 2.0 - 3.0 * np.asarray(v._table, np.float64))
    np.testing.assert_allclose(shapley.exact(combo, n), 2.0 * phi_u - 3.0 * phi_v, atol=1e-4)
    # null player: make player 2 irrelevant by copying values of S without 2 onto S with 2
    codes = np.arange(2 ** n)
    null_table = table_u[codes & ~(1 << 2)]
    phi_null = shapley.exact(TableGame(null_table), n)
    assert abs(phi_null[2]) < 1e-6
    # symmetry: symmetrise the game under swapping players 0 and 4
    def swap(c):
        b0, b4 = (c >> 0) & 1, (c >> 4) & 1
        return (c & ~((1 << 0) | (1 << 4))) | (b0 << 4) | (b4 << 0)
    sym_table = table_u + table_u[swap(codes)]
    phi_sym = shapley.exact(TableGame(sym_table), n)
    assert phi_sym[0] == pytest.approx(phi_sym[4], abs=1e-5)
    assert abs(phi_sym[0] - phi_sym[1]) > 1e-3   # not trivially equal


def test_exact_twenty_players():
    weights = np.arange(1, 21, dtype=np.float64) - 7.0            # integers: exact in float32
    game = games.AdditiveGame(weights)
    np.testing.assert_allclose(shapley.exact(game, 20, batch_size=1 << 14), weights, atol=1e-9)


def test_exact_refuses_large_and_bad_input():
    with pytest.raises(ValueError, match="exceeds the limit of 20"):
        shapley.exact(games.AdditiveGame(np.ones(21)), 21)
    with pytest.raises(ValueError, match="n_players"):
        shapley.exact(games.AdditiveGame([1.0]), 0)
    with pytest.raises(ValueError, match="batch_size"):
        shapley.exact(games.AdditiveGame([1.0]), 1, batch_size=0)
    with pytest.raises(ValueError, match="values of shape"):
        shapley.exact(lambda m: m.astype(jnp.float32), 3)


def test_exact_one_player_and_nonzero_empty_value():
    game = TableGame([5.0, 7.5])          # U(empty) = 5: phi = U(full) - U(empty)
    np.testing.assert_allclose(shapley.exact(game, 1), [2.5])
