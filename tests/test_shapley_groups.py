"""Groups of players in the Monte Carlo engine (``monte_carlo(..., groups=owner)``): the per-sample mean
marginal of each group's members, folded into a second Welford state, against a float64 numpy reference that
enumerates the engine's own permutations (regenerated from ``_sampler`` with the same seed)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax import shapley
from shed_jax.shapley import games
from shed_jax.shapley._sampler import sample_permutations

GAME = games.UnanimitySum(9, [[0, 1], [1, 2, 3], [4], [0, 5, 6, 7], [2, 8]], [1.5, -2.0, 0.75, 3.0, 1.0])
OWNER = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3])  # 4 groups of 2, 3, 1 and 3 players


def reference_group_samples(game, owner, n_permutations, removal_step, seed, antithetic=False, truncation_tol=None):
    """Per-sample group means of SHED's block marginals, float64, one explicit permutation at a time.

    Returns ``(member_samples (S, n), group_samples (S, G))``."""
    n, m = game.n_players, removal_step
    steps = -(-n // m)
    n_samples = -(-n_permutations // 2) if antithetic else n_permutations
    perms = np.asarray(sample_permutations(seed, 0, n_samples, n))
    n_groups = int(owner.max()) + 1
    member_rows, group_rows = [], []
    for perm in perms:
        margs = []
        for order in ([perm, perm[::-1]] if antithetic else [perm]):
            masks = np.ones((steps + 1, n), bool)
            for t in range(1, steps + 1):
                masks[t] = masks[t - 1]
                masks[t, order[(t - 1) * m:t * m]] = False
            values = np.asarray(game(jnp.asarray(masks)), np.float64)
            cut = steps
            if truncation_tol is not None:
                span = abs(values[0] - values[-1])
                cut = next(t for t in range(steps + 1) if abs(values[t] - values[-1]) <= truncation_tol * span)
            marg = np.zeros(n)
            for s in range(min(cut, steps)):
                marg[order[s * m:(s + 1) * m]] = values[s] - values[s + 1]
            margs.append(marg)
        sample = np.mean(margs, axis=0)
        member_rows.append(sample)
        group_rows.append([sample[owner == g].mean() for g in range(n_groups)])
    return np.asarray(member_rows), np.asarray(group_rows)


@pytest.mark.parametrize("removal_step,antithetic,truncation_tol", [(1, False, None), (2, True, None),
                                                                    (3, False, 0.1)])
def test_group_values_and_stderr_match_numpy_reference(removal_step, antithetic, truncation_tol):
    res = shapley.monte_carlo(GAME, 9, n_permutations=14, removal_step=removal_step, seed=5, batch_size=5,
                              antithetic=antithetic, truncation_tol=truncation_tol, permutations_per_chunk=4,
                              groups=OWNER, history_every=4)
    members, groups = reference_group_samples(GAME, OWNER, 14, removal_step, 5, antithetic, truncation_tol)
    np.testing.assert_allclose(res.values, members.mean(0), atol=1e-5)
    np.testing.assert_allclose(res.group_values, groups.mean(0), atol=1e-5)
    np.testing.assert_allclose(res.group_stderr, groups.std(0, ddof=1) / np.sqrt(len(groups)), rtol=1e-4, atol=1e-6)
    # the group value is the mean of its members' values (the mean commutes with the group average)
    np.testing.assert_allclose(res.group_values, [res.values[OWNER == g].mean() for g in range(4)], atol=1e-6)
    # the history carries the group estimates; its last row is the result
    assert res.history["group_values"].shape == (res.history["n_permutations"].shape[0], 4)
    np.testing.assert_array_equal(res.history["group_values"][-1], res.group_values)
    np.testing.assert_array_equal(res.history["group_stderr"][-1], res.group_stderr)
    first = int(res.history["n_permutations"][0]) // (2 if antithetic else 1)
    np.testing.assert_allclose(res.history["group_values"][0], groups[:first].mean(0), atol=1e-5)
    # without groups nothing changes and no group fields appear
    plain = shapley.monte_carlo(GAME, 9, n_permutations=14, removal_step=removal_step, seed=5, batch_size=5,
                                antithetic=antithetic, truncation_tol=truncation_tol, permutations_per_chunk=4)
    np.testing.assert_array_equal(plain.values, res.values)
    np.testing.assert_array_equal(plain.stderr, res.stderr)
    assert plain.group_values is None and plain.group_stderr is None


def test_perfectly_anticorrelated_members_have_zero_group_stderr():
    """U = 1 iff both players are present: each permutation credits the whole unit to one of the two, so
    each member's stderr is ~0.5/sqrt(P) but the group mean is 0.5 in every permutation: exact stderr 0.
    Combining the members' errors as if independent would give sqrt(2)*0.5/sqrt(P)/2 instead."""
    game = games.UnanimitySum(2, [[0, 1]], [1.0])
    res = shapley.monte_carlo(game, 2, n_permutations=40, seed=0, groups=np.array([0, 0]))
    assert np.all(res.stderr > 0.05)
    assert res.group_values.tolist() == [0.5]
    assert res.group_stderr.tolist() == [0.0]


def test_groups_independent_of_chunking_and_batch_size():
    runs = [shapley.monte_carlo(GAME, 9, n_permutations=11, removal_step=2, seed=1, groups=OWNER, batch_size=b,
                                permutations_per_chunk=c) for b, c in ((3, 2), (7, 5), (64, 11))]
    for other in runs[1:]:
        np.testing.assert_allclose(other.group_values, runs[0].group_values, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.group_stderr, runs[0].group_stderr, rtol=1e-5, atol=1e-7)


def test_checkpoint_resume_with_groups_and_refusals(tmp_path):
    kwargs = dict(removal_step=1, seed=2, batch_size=4, permutations_per_chunk=3, groups=OWNER, history_every=2)
    whole = shapley.monte_carlo(GAME, 9, n_permutations=12, **kwargs)
    shapley.monte_carlo(GAME, 9, n_permutations=6, checkpoint_dir=tmp_path / "ck", **kwargs)
    resumed = shapley.monte_carlo(GAME, 9, n_permutations=12, checkpoint_dir=tmp_path / "ck", **kwargs)
    np.testing.assert_array_equal(resumed.group_values, whole.group_values)
    np.testing.assert_array_equal(resumed.group_stderr, whole.group_stderr)
    np.testing.assert_array_equal(resumed.history["group_values"], whole.history["group_values"])
    # other groups: refused by the run arguments
    with pytest.raises(shapley.CheckpointMismatchError, match="groups"):
        shapley.monte_carlo(GAME, 9, n_permutations=12, checkpoint_dir=tmp_path / "ck",
                            **{**kwargs, "groups": np.arange(9) % 3})
    # a checkpoint without group state (no groups, or an older shed_jax): refused, never guessed
    plain = {k: v for k, v in kwargs.items() if k != "groups"}
    shapley.monte_carlo(GAME, 9, n_permutations=6, checkpoint_dir=tmp_path / "old", **plain)
    with pytest.raises(shapley.MissingGroupStateError, match="no per-group state"):
        shapley.monte_carlo(GAME, 9, n_permutations=12, checkpoint_dir=tmp_path / "old", **kwargs)


def test_bad_groups():
    with pytest.raises(ValueError, match="shape"):
        shapley.monte_carlo(GAME, 9, n_permutations=2, groups=np.zeros(8, int))
    with pytest.raises(ValueError, match="integer"):
        shapley.monte_carlo(GAME, 9, n_permutations=2, groups=np.zeros(9))
    with pytest.raises(ValueError, match="without a player"):
        shapley.monte_carlo(GAME, 9, n_permutations=2, groups=np.zeros(9, int), n_groups=2)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        shapley.monte_carlo(GAME, 9, n_permutations=2, groups=np.arange(9), n_groups=2)
    with pytest.raises(ValueError, match="n_groups needs groups"):
        shapley.monte_carlo(GAME, 9, n_permutations=2, n_groups=2)
