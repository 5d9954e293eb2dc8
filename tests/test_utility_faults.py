"""Utility faults (issue 10): a NaN/Inf utility value is an error naming the coalition, never averaged in; a
utility marked ``jittable = False`` is called outside jax.jit with the same results; a utility that cannot be
traced and does not say so gets an error naming the requirement."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax import shapley
from shed_jax.shapley import games
from shed_jax.shapley._sampler import sample_permutations

N = 6
WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0, 0.25, 1.5])


class PoisonedGame:
    """An additive game whose value is ``poison`` on exactly one coalition (a sorted tuple of players)."""

    def __init__(self, poisoned: tuple[int, ...], poison=float("nan")):
        self.target = np.zeros(N, bool)
        self.target[list(poisoned)] = True
        self.poison = poison

    def __call__(self, masks):
        values = masks.astype(jnp.float32) @ jnp.asarray(WEIGHTS, jnp.float32)
        hit = jnp.all(masks == jnp.asarray(self.target)[None, :], axis=1)
        return jnp.where(hit, jnp.float32(self.poison), values)


def first_sample_with_coalition(coalition, seed, n_samples):
    """Independent reference: the first permutation sample whose removal path passes through ``coalition``
    (removal_step 1: after t removals the coalition is the players at positions >= t)."""
    perms = np.asarray(sample_permutations(seed, 0, n_samples, N))
    for sample, perm in enumerate(perms):
        for t in range(1, N):
            if sorted(perm[t:].tolist()) == sorted(coalition):
                return sample
    raise AssertionError("the coalition is never visited; choose more samples")


@pytest.mark.parametrize("poison", [float("nan"), pytest.param(float("inf"), marks=pytest.mark.slow),
                                    pytest.param(-float("inf"), marks=pytest.mark.slow)])
def test_a_non_finite_utility_value_is_an_error_naming_the_coalition(poison, tmp_path):
    from shed_jax.run.value import checkpointed_samples

    coalition = (1, 4)
    expected_sample = first_sample_with_coalition(coalition, seed=5, n_samples=200)
    assert expected_sample > 0  # some chunks are clean before the poisoned one (the checkpoint below)
    with pytest.raises(shapley.NonFiniteUtilityError) as info:
        shapley.monte_carlo(PoisonedGame(coalition, poison), N, n_permutations=200, seed=5,
                            permutations_per_chunk=1, checkpoint_dir=str(tmp_path / "ckpt"))
    err = info.value
    assert err.coalition.tolist() == [1, 4] and err.sample == expected_sample
    assert str(err).startswith(f"utility returned {poison} for the coalition of 2 of {N} players [1, 4] "
                               f"(permutation sample {expected_sample})")
    assert checkpointed_samples(tmp_path / "ckpt") == expected_sample  # the poisoned chunk never stored


def test_non_finite_full_or_empty_coalition():
    with pytest.raises(shapley.NonFiniteUtilityError, match=rf"for the coalition of {N} of {N} players"):
        shapley.monte_carlo(PoisonedGame(tuple(range(N))), N, n_permutations=4)
    with pytest.raises(shapley.NonFiniteUtilityError, match=rf"nan for the coalition of 0 of {N} players \[\]"):
        shapley.monte_carlo(PoisonedGame(()), N, n_permutations=4)


def test_antithetic_names_the_reversed_permutation():
    coalition = (0, 2, 3)
    with pytest.raises(shapley.NonFiniteUtilityError) as info:
        shapley.monte_carlo(PoisonedGame(coalition), N, n_permutations=400, seed=1, antithetic=True)
    err = info.value
    assert err.coalition.tolist() == [0, 2, 3]
    perms = np.asarray(sample_permutations(1, 0, 200, N))
    perm = perms[err.sample][::-1] if err.reversed else perms[err.sample]
    assert any(sorted(perm[t:].tolist()) == [0, 2, 3] for t in range(1, N))


class HostOnly:
    """The same game, callable only on concrete arrays (np.asarray fails on a tracer), marked jittable=False."""

    jittable = False

    def __init__(self, game):
        self.game, self.calls = game, []

    def __call__(self, masks):
        masks = np.asarray(masks)
        self.calls.append(masks.shape)
        return np.asarray(self.game(jnp.asarray(masks)))


@pytest.mark.parametrize("kwargs", [dict(), pytest.param(dict(antithetic=True, removal_step=2), marks=pytest.mark.slow),
                                    dict(truncation_tol=0.05, batch_size=3),
                                    pytest.param(dict(history_every=5), marks=pytest.mark.slow),
                                    dict(groups=np.array([0, 0, 1, 1, 1, 2, 3, 3, 3]), history_every=4)])
def test_a_utility_marked_not_jittable_is_called_outside_jit_with_identical_results(kwargs):
    game = games.UnanimitySum(9, [[0, 1], [2, 3, 4], [5], [6, 7, 8]], [1.5, -2.0, 0.75, 3.0])
    args = dict(n_permutations=24, seed=3, permutations_per_chunk=8, batch_size=kwargs.pop("batch_size", 5))
    args.update(kwargs)
    reference = shapley.monte_carlo(game, 9, **args)
    host = HostOnly(game)
    result = shapley.monte_carlo(host, 9, **args)
    np.testing.assert_array_equal(result.values, reference.values)
    np.testing.assert_array_equal(result.stderr, reference.stderr)
    assert result.n_evaluations == reference.n_evaluations
    # called on concrete arrays: U(full)/U(empty) in one padded batch, then only the coalitions the estimate uses
    # (no padding rows of a chunk's last batch, none after a truncation known before the batch: for a host utility a
    # row can be a fine-tune), so without truncation the rows it gets are exactly the evaluations counted; with it,
    # rows past a truncation found inside the same batch are still computed
    assert host.calls[0] == (args["batch_size"], 9)
    assert all(1 <= rows <= args["batch_size"] and width == 9 for rows, width in host.calls[1:])
    rows = sum(rows for rows, _ in host.calls[1:])
    if "truncation_tol" in kwargs:
        assert result.n_evaluations - 2 <= rows < args["batch_size"] * (len(host.calls) - 1)
    else:
        assert rows == result.n_evaluations - 2
    if "history_every" in kwargs:
        np.testing.assert_array_equal(result.history["values"], reference.history["values"])
    if "groups" in kwargs:  # per-cluster (group) estimates go through the same epilogue on both paths
        np.testing.assert_array_equal(result.group_values, reference.group_values)
        np.testing.assert_array_equal(result.group_stderr, reference.group_stderr)
        np.testing.assert_array_equal(result.history["group_values"], reference.history["group_values"])
        assert result.group_values.shape == (4,) and np.all(np.isfinite(result.group_stderr))


def test_host_path_detects_non_finite_values_too():
    coalition = (1, 4)
    expected_sample = first_sample_with_coalition(coalition, seed=5, n_samples=200)
    with pytest.raises(shapley.NonFiniteUtilityError) as info:
        shapley.monte_carlo(HostOnly(PoisonedGame(coalition)), N, n_permutations=200, seed=5)
    assert info.value.coalition.tolist() == [1, 4] and info.value.sample == expected_sample


class Untraceable:
    """Not jittable, and does not say so."""

    def __init__(self, how):
        self.how = how

    def __call__(self, masks):
        if self.how == "numpy":
            return np.asarray(masks).sum(axis=1).astype(np.float32)   # TracerArrayConversionError
        if self.how == "bool":
            return jnp.zeros(masks.shape[0]) + (1.0 if masks.any() else 0.0)  # TracerBoolConversionError
        return jnp.zeros(masks.shape[0]) + float(masks.sum())         # ConcretizationTypeError


@pytest.mark.parametrize("how", ["numpy", "bool", "float"])
def test_an_untraceable_utility_gets_an_error_naming_the_requirement(how):
    with pytest.raises(TypeError, match=r"utility must be a jittable JAX function of a bool mask batch .*"
                                        r"set utility\.jittable = False") as info:
        shapley.monte_carlo(Untraceable(how), 4, n_permutations=2)
    assert "Tracer" in str(info.value) or "Concretization" in str(info.value)
