"""Shapley values of a batched utility: exact enumeration and a Monte Carlo engine (SHED's estimator).

Public API::

    from shed_jax import shapley
    phi = shapley.exact(utility, n_players)                       # (n,) float64, n <= 20
    res = shapley.monte_carlo(utility, n_players, n_permutations=200, removal_step=1, seed=0)
    res.values, res.stderr, res.n_evaluations, res.n_permutations, res.history

``utility`` is any jittable function ``(B, n_players) bool -> (B,) float`` returning finite values (else
:class:`NonFiniteUtilityError`); one with ``utility.jittable = False`` is called outside ``jax.jit``. Stopping rules compose with
``&`` / ``|``; the estimator state (``init``/``update``/``merge``) is a mergeable pytree of running sums.
"""
from . import games
from ._checkpoint import CheckpointMismatchError, MissingGroupStateError
from ._driver import monte_carlo
from ._estimator import ShapleyState, estimate, estimate_groups, init, merge, update
from ._exact import MAX_EXACT_PLAYERS, coalition_values, exact, shapley_from_values
from ._plan import DEFAULT_BATCH_SIZE, expected_block_bias_weight, expected_evaluations
from ._result import ShapleyResult
from ._steps import NonFiniteUtilityError
from ._stopping import (AllOf, AnyOf, MaxEvaluations, MaxPermutations, RankStability, RunStatus,
                        StderrTolerance, StoppingRule, WallClock)

__all__ = [
    "exact", "monte_carlo", "ShapleyResult", "games",
    "coalition_values", "shapley_from_values", "MAX_EXACT_PLAYERS", "DEFAULT_BATCH_SIZE",
    "expected_block_bias_weight", "expected_evaluations",
    "ShapleyState", "init", "update", "merge", "estimate", "estimate_groups",
    "StoppingRule", "AllOf", "AnyOf", "MaxPermutations", "MaxEvaluations", "StderrTolerance",
    "RankStability", "WallClock", "RunStatus", "CheckpointMismatchError", "MissingGroupStateError",
    "NonFiniteUtilityError",
]
