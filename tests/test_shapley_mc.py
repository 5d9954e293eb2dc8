"""Monte Carlo engine (shed_jax.shapley.monte_carlo) against exact values, closed forms and a numpy
reference of the SHED block-removal estimator."""
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax import shapley
from shed_jax.shapley import games
from shed_jax.shapley._sampler import sample_permutations


# ---------------------------------------------------------------- numpy reference of the estimator
def reference_marginals(game, perm, removal_step, truncation_tol=None):
    """Per-player marginals of one permutation by SHED's procedure, in float64 numpy.

    Returns (marginals (n,), evaluated intermediate coalitions)."""
    perm = np.asarray(perm)
    n, m = perm.size, removal_step
    steps = -(-n // m)
    masks = np.ones((steps + 1, n), dtype=bool)
    for t in range(1, steps + 1):
        masks[t] = masks[t - 1]
        masks[t, perm[(t - 1) * m:t * m]] = False
    values = np.asarray(game(jnp.asarray(masks)), dtype=np.float64)
    cut = steps
    if truncation_tol is not None:
        span = abs(values[0] - values[-1])
        for t in range(steps + 1):
            if abs(values[t] - values[-1]) <= truncation_tol * span:
                cut = t
                break
    marginals = np.zeros(n)
    for s in range(min(cut, steps)):
        marginals[perm[s * m:(s + 1) * m]] = values[s] - values[s + 1]
    return marginals, min(cut, steps - 1)


def reference_run(game, n_permutations, removal_step, seed, antithetic=False, truncation_tol=None):
    n = game.n_players
    n_samples = -(-n_permutations // 2) if antithetic else n_permutations
    perms = np.asarray(sample_permutations(seed, 0, n_samples, n))
    samples, evaluations = [], 2
    for perm in perms:
        orders = [perm, perm[::-1]] if antithetic else [perm]
        margs = []
        for order in orders:
            marg, evals = reference_marginals(game, order, removal_step, truncation_tol)
            margs.append(marg)
            evaluations += evals
        samples.append(np.mean(margs, axis=0))
    samples = np.asarray(samples)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    return samples.mean(axis=0), stderr, evaluations


MIXED_GAME = games.UnanimitySum(9, [[0, 1], [1, 2, 3], [4], [0, 5, 6, 7], [2, 8]], [1.5, -2.0, 0.75, 3.0, 1.0])


@pytest.mark.parametrize("removal_step,antithetic,truncation_tol", [
    (1, False, None), (2, False, None), (4, True, None), (1, True, 0.0), (3, False, 0.1)])
def test_engine_matches_numpy_reference(removal_step, antithetic, truncation_tol):
    game = MIXED_GAME
    res = shapley.monte_carlo(game, game.n_players, n_permutations=12, removal_step=removal_step, seed=3,
                              batch_size=5, antithetic=antithetic, truncation_tol=truncation_tol,
                              permutations_per_chunk=4)
    values, stderr, evaluations = reference_run(game, 12, removal_step, 3, antithetic, truncation_tol)
    np.testing.assert_allclose(res.values, values, atol=1e-5)
    np.testing.assert_allclose(res.stderr, stderr, rtol=1e-4, atol=1e-6)
    assert res.n_evaluations == evaluations
    assert res.n_permutations == 12
    assert res.n_samples == (6 if antithetic else 12)
    assert res.u_full == pytest.approx(1.5 - 2.0 + 0.75 + 3.0 + 1.0)
    assert res.u_empty == 0.0


SAMPLED_GAMES = [
    games.GloveGame(4, 7),
    games.WeightedVotingGame([5, 4, 3, 2, 2, 1, 1, 1], quota=10),
    games.AirportGame([1.0, 2.0, 2.5, 4.0, 7.0, 7.5, 9.0]),
    MIXED_GAME,
]


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("game", SAMPLED_GAMES, ids=lambda g: type(g).__name__)
def test_error_within_standard_errors(game, antithetic):
    exact = shapley.exact(game, game.n_players)
    res = shapley.monte_carlo(game, game.n_players, n_permutations=2000, seed=11, antithetic=antithetic)
    # fixed seed: deterministic; 4.5 standard errors per player (two-sided p ~ 7e-6 each)
    assert np.all(np.abs(res.values - exact) <= 4.5 * res.stderr + 1e-6)
    # efficiency holds per permutation for removal_step=1
    assert res.values.sum() == pytest.approx(res.u_full - res.u_empty, abs=1e-4)


def test_error_shrinks_like_inverse_sqrt_permutations():
    game = games.AirportGame([1.0, 2.0, 2.5, 4.0, 7.0, 7.5, 9.0])
    exact = game.shapley_values()
    errors, stderrs = {}, {}
    for n_perm in (100, 1600):
        runs = [shapley.monte_carlo(game, game.n_players, n_permutations=n_perm, seed=s) for s in range(12)]
        errors[n_perm] = np.sqrt(np.mean([(r.values - exact) ** 2 for r in runs]))
        stderrs[n_perm] = np.mean([r.stderr for r in runs])
    # stderr estimates: ratio sqrt(16) = 4 up to sampling noise of the variance estimates
    assert 3.5 < stderrs[100] / stderrs[1600] < 4.5
    # actual RMS error over 12 seeds x 7 players: ratio 4 up to chi-square noise (84 terms: +-~30%)
    assert 2.6 < errors[100] / errors[1600] < 6.0
    # and the RMS error agrees with the mean stderr
    assert 0.7 < errors[1600] / stderrs[1600] < 1.4


def expected_block_estimate_by_enumeration(weights, removal_step):
    """E[estimate] of the block estimator on an additive game, enumerating all n! permutations."""
    n = len(weights)
    total = np.zeros(n)
    for perm in itertools.permutations(range(n)):
        for s in range(0, n, removal_step):
            block = list(perm[s:s + removal_step])
            total[block] += weights[block].sum()
    return total / math.factorial(n)


@pytest.mark.parametrize("n,removal_step", [(6, 3), (7, 2), (7, 3)])
def test_removal_step_bias_formula(n, removal_step):
    rng = np.random.default_rng(n * 10 + removal_step)
    weights = np.round(rng.normal(size=n), 2)
    total = weights.sum()
    p = shapley.expected_block_bias_weight(n, removal_step)
    formula = weights + (total - weights) * p
    np.testing.assert_allclose(expected_block_estimate_by_enumeration(weights, removal_step), formula,
                               atol=1e-12)
    if n % removal_step == 0:
        np.testing.assert_allclose(
            formula, weights * (n - removal_step) / (n - 1) + (removal_step - 1) * total / (n - 1), atol=1e-12)
    res = shapley.monte_carlo(games.AdditiveGame(weights), n, n_permutations=3000, removal_step=removal_step,
                              seed=5)
    assert np.all(np.abs(res.values - formula) <= 4.5 * res.stderr + 1e-5)
    assert np.max(np.abs(res.values - weights)) > 5 * res.stderr.max()   # the bias is real


def test_seeds_reproducible_and_distinct():
    game = SAMPLED_GAMES[1]
    a = shapley.monte_carlo(game, game.n_players, n_permutations=64, seed=1)
    b = shapley.monte_carlo(game, game.n_players, n_permutations=64, seed=1)
    c = shapley.monte_carlo(game, game.n_players, n_permutations=64, seed=2)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize("removal_step,antithetic", [(1, False), (2, True)])
def test_batch_size_and_chunking_invariance(removal_step, antithetic):
    game = games.GloveGame(5, 6)                     # integer values: every marginal is exact
    runs = [shapley.monte_carlo(game, game.n_players, n_permutations=50, removal_step=removal_step, seed=9,
                                antithetic=antithetic, batch_size=bs, permutations_per_chunk=ppc)
            for bs, ppc in [(1, None), (7, 3), (1000, None)]]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.values, runs[0].values)
        np.testing.assert_array_equal(r.stderr, runs[0].stderr)
        assert r.n_evaluations == runs[0].n_evaluations


class CountingAdditive:
    """Additive game that counts how often JAX traces it (a Python side effect runs only when tracing)."""

    def __init__(self, weights):
        self.w = jnp.asarray(weights, jnp.float32)
        self.traces = 0

    def __call__(self, masks):
        self.traces += 1
        return masks.astype(jnp.float32) @ self.w


def test_compiles_once_no_retrace_across_chunks():
    utility = CountingAdditive(np.arange(10.0))
    first = shapley.monte_carlo(utility, 10, n_permutations=3, batch_size=8, permutations_per_chunk=3)
    traces_one_chunk = utility.traces
    assert traces_one_chunk <= 2          # full/empty call + chunk step
    utility2 = CountingAdditive(np.arange(10.0))
    many = shapley.monte_carlo(utility2, 10, n_permutations=60, batch_size=8, permutations_per_chunk=3)
    assert utility2.traces == traces_one_chunk      # 20 chunks, same traces as one
    shapley.monte_carlo(utility2, 10, n_permutations=60, batch_size=8, permutations_per_chunk=3, seed=4)
    assert utility2.traces == traces_one_chunk      # new seed: reuses the compiled step
    np.testing.assert_allclose(many.values, np.arange(10.0), atol=1e-5)
    np.testing.assert_allclose(first.values, np.arange(10.0), atol=1e-5)


def test_truncation_saves_evaluations_without_changing_unanimity_values():
    game = games.UnanimityGame(12, [2, 5, 7])    # once a member leaves, U = U(empty) for good
    full = shapley.monte_carlo(game, 12, n_permutations=80, seed=1)
    trunc = shapley.monte_carlo(game, 12, n_permutations=80, seed=1, truncation_tol=0.0)
    np.testing.assert_array_equal(trunc.values, full.values)
    assert full.n_evaluations == 2 + 80 * 11
    assert trunc.n_evaluations < 0.5 * full.n_evaluations
    _, _, expected_evals = reference_run(game, 80, 1, 1, truncation_tol=0.0)
    assert trunc.n_evaluations == expected_evals


def test_truncation_skips_utility_batches():
    import jax

    class CountingUnanimity(games.UnanimityGame):
        executed = 0

        def __call__(self, masks):
            def bump():
                CountingUnanimity.executed += 1
            jax.debug.callback(bump)
            return super().__call__(masks)

    game = CountingUnanimity(12, [2, 5, 7])
    kwargs = dict(n_permutations=40, seed=1, batch_size=2, permutations_per_chunk=40)
    full = shapley.monte_carlo(game, 12, **kwargs)
    jax.effects_barrier()
    executed_full, CountingUnanimity.executed = CountingUnanimity.executed, 0
    trunc = shapley.monte_carlo(game, 12, truncation_tol=0.0, **kwargs)
    jax.effects_barrier()
    executed_trunc = CountingUnanimity.executed
    assert executed_full == 1 + 40 * 11 // 2          # full/empty batch + every batch of the chunk
    assert executed_trunc < 0.6 * executed_full       # batches past every permutation's cut are skipped
    np.testing.assert_array_equal(trunc.values, full.values)


def test_whole_set_in_one_block_and_single_player():
    game = MIXED_GAME
    res = shapley.monte_carlo(game, 9, n_permutations=5, removal_step=9)
    np.testing.assert_allclose(res.values, np.full(9, res.u_full - res.u_empty), atol=1e-6)
    assert res.n_evaluations == 2
    one = shapley.monte_carlo(lambda m: m[:, 0].astype(jnp.float32) * 3.0 + 1.0, 1, n_permutations=3)
    np.testing.assert_allclose(one.values, [3.0])
    assert (one.u_full, one.u_empty) == (4.0, 1.0)


def test_nonzero_empty_value_is_evaluated():
    weights = np.array([1.0, 2.0, -1.0, 0.5])
    shifted = lambda m: m.astype(jnp.float32) @ jnp.asarray(weights, jnp.float32) + 10.0  # noqa: E731
    res = shapley.monte_carlo(shifted, 4, n_permutations=20)
    np.testing.assert_allclose(res.values, weights, atol=1e-5)
    assert res.u_empty == 10.0


def test_stopping_rules_in_engine():
    game = games.AirportGame([1.0, 2.0, 2.5, 4.0, 7.0, 7.5, 9.0])
    res = shapley.monte_carlo(game, 7, n_permutations=100000, stopping=shapley.MaxEvaluations(3000),
                              permutations_per_chunk=50)
    assert res.stop_reason == "stopping"
    assert 3000 <= res.n_evaluations < 3000 + 50 * 6 + 2
    res = shapley.monte_carlo(game, 7, n_permutations=None, stopping=shapley.StderrTolerance(atol=0.05),
                              permutations_per_chunk=20)
    assert res.stop_reason == "stopping" and res.stderr.max() <= 0.05
    res = shapley.monte_carlo(game, 7, n_permutations=120, permutations_per_chunk=50,
                              stopping=shapley.MaxEvaluations(10 ** 9) | shapley.WallClock(3600))
    assert res.stop_reason == "n_permutations" and res.n_permutations == 120
    separated = games.AirportGame([1.0, 2.0, 3.0, 4.0, 50.0, 100.0, 200.0])
    res = shapley.monte_carlo(separated, 7, n_permutations=10 ** 6, permutations_per_chunk=50,
                              stopping=shapley.RankStability(k=2, n_checks=3))
    assert res.stop_reason == "stopping" and res.n_permutations == 200     # 4 checks: first + 3 unchanged
    assert set(np.argsort(-res.values)[:2].tolist()) == {5, 6}


def status(values, n_permutations=10, n_evaluations=100, stderr=None, elapsed=1.0):
    values = np.asarray(values, dtype=float)
    stderr = np.zeros_like(values) if stderr is None else np.asarray(stderr, dtype=float)
    return shapley.RunStatus(values, stderr, n_permutations, n_evaluations, elapsed)


def test_stopping_rule_composition_and_state():
    s = status([1.0, 2.0, 3.0], n_permutations=10, n_evaluations=100, stderr=[0.1, 0.1, 0.3], elapsed=5.0)
    assert shapley.MaxPermutations(10)(s) and not shapley.MaxPermutations(11)(s)
    assert shapley.MaxEvaluations(100)(s) and not shapley.MaxEvaluations(101)(s)
    assert shapley.WallClock(5.0)(s) and not shapley.WallClock(6.0)(s)
    assert not shapley.StderrTolerance(atol=0.2)(s)
    assert shapley.StderrTolerance(atol=0.3)(s)
    assert shapley.StderrTolerance(rtol=0.1)(s)               # 0.1<=0.1, 0.1<=0.2, 0.3<=0.3
    assert not shapley.StderrTolerance(rtol=0.09)(s)
    assert not shapley.StderrTolerance(atol=1.0, min_permutations=11)(s)
    yes, no = shapley.MaxPermutations(1), shapley.MaxPermutations(10 ** 6)
    assert (yes | no)(s) and not (yes & no)(s) and (yes & yes)(s) and not (no | no)(s)
    # every operand is evaluated, so stateful rules see every check
    rank = shapley.RankStability(k=1, n_checks=2)
    rule = yes | rank
    for _ in range(3):
        rule(status([0.0, 1.0]))
    assert rank(status([0.0, 1.0]))        # 4th identical check: unchanged for >= 2 checks
    rank = shapley.RankStability(k=1, n_checks=2)
    assert not rank(status([0.0, 1.0])) and not rank(status([0.0, 1.0]))
    assert not rank(status([2.0, 1.0]))   # top-1 changed: counter resets
    assert not rank(status([2.0, 1.0])) and rank(status([3.0, 1.0]))
    rank.reset()
    assert not rank(status([3.0, 1.0]))
    with pytest.raises(TypeError):
        yes & (lambda st: True)
    with pytest.raises(ValueError):
        shapley.StderrTolerance()


def test_merge_is_exact_parallel_combination():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)) * 3 + 1
    a = shapley.update(shapley.init(5), x[:20], n_evaluations=7)
    b = shapley.update(shapley.init(5), x[20:], n_evaluations=5)
    merged = shapley.merge(a, b)
    whole = shapley.update(shapley.init(5), x)
    assert int(merged.count) == 37 and merged.n_evaluations == 12
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(merged.m2, ((x - x.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-4)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-5)
    values, stderr = shapley.estimate(merged)
    np.testing.assert_allclose(stderr, x.std(axis=0, ddof=1) / np.sqrt(37), rtol=1e-4)
    empty = shapley.merge(shapley.init(5), a)
    np.testing.assert_allclose(empty.mean, a.mean)
    masked = shapley.update(shapley.init(5), x, valid=np.arange(37) < 20)
    np.testing.assert_allclose(masked.mean, a.mean, rtol=1e-6)
    assert np.all(np.isinf(shapley.estimate(shapley.update(shapley.init(5), x[:1]))[1]))


def test_history_records_snapshots_independent_of_chunking():
    game = SAMPLED_GAMES[0]
    res = shapley.monte_carlo(game, game.n_players, n_permutations=50, history_every=10,
                              permutations_per_chunk=7, seed=2)
    hist = res.history
    np.testing.assert_array_equal(hist["n_permutations"], [10, 20, 30, 40, 50])
    assert hist["values"].shape == (5, game.n_players) == hist["stderr"].shape
    np.testing.assert_array_equal(hist["values"][-1], res.values)
    short = shapley.monte_carlo(game, game.n_players, n_permutations=20, seed=2)
    np.testing.assert_array_equal(hist["values"][1], short.values)
    np.testing.assert_allclose(hist["stderr"][1], short.stderr, rtol=1e-12)
    anti = shapley.monte_carlo(game, game.n_players, n_permutations=14, antithetic=True, history_every=4)
    np.testing.assert_array_equal(anti.history["n_permutations"], [4, 8, 12, 14])


def test_progress_callback_and_bar():
    seen = []
    game = games.GloveGame(2, 2)
    shapley.monte_carlo(game, 4, n_permutations=30, permutations_per_chunk=10, progress=seen.append)
    assert [s.n_permutations for s in seen] == [10, 20, 30]
    assert [s.n_evaluations for s in seen] == [2 + 10 * 3, 2 + 20 * 3, 2 + 30 * 3]
    res = shapley.monte_carlo(game, 4, n_permutations=30, permutations_per_chunk=10, progress=True)
    assert res.n_permutations == 30


def test_progress_true_is_the_projects_progress_bar(monkeypatch, capsys):
    """``progress=True`` goes through shed_jax.progress: plain labelled lines off a terminal, no tqdm bar."""
    monkeypatch.setenv("SHED_PROGRESS", "plain")
    monkeypatch.setenv("SHED_PROGRESS_SECONDS", "0")
    game = games.GloveGame(2, 2)
    res = shapley.monte_carlo(game, 4, n_permutations=30, permutations_per_chunk=10, progress=True)
    err = capsys.readouterr().err
    assert res.n_permutations == 30
    assert "Shapley: 30 permutations: 10/30 (33%)" in err and "20/30 (67%)" in err, err
    assert "\r" not in err and "it/s" not in err and "perm/s" not in err


def test_bad_arguments():
    game = games.GloveGame(2, 2)
    with pytest.raises(ValueError, match="removal_step"):
        shapley.monte_carlo(game, 4, removal_step=5)
    with pytest.raises(ValueError, match="removal_step"):
        shapley.monte_carlo(game, 4, removal_step=0)
    with pytest.raises(ValueError, match="n_permutations"):
        shapley.monte_carlo(game, 4, n_permutations=0)
    with pytest.raises(ValueError, match="stopping"):
        shapley.monte_carlo(game, 4, n_permutations=None)
    with pytest.raises(TypeError, match="StoppingRule"):
        shapley.monte_carlo(game, 4, stopping=lambda s: True)
    with pytest.raises(ValueError, match="truncation_tol"):
        shapley.monte_carlo(game, 4, truncation_tol=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        shapley.monte_carlo(game, 4, batch_size=0)
    with pytest.raises(ValueError, match="values of shape"):
        shapley.monte_carlo(lambda m: m.astype(jnp.float32), 4)
    with pytest.raises(ValueError, match="utility.n_players is 4"):
        shapley.monte_carlo(game, 5)
    with pytest.raises(ValueError, match="utility.n_players is 4"):
        shapley.exact(game, 3)
    with pytest.raises(TypeError, match="progress"):
        shapley.monte_carlo(game, 4, progress="yes")


def test_preferred_batch_size_is_used():
    class Preferring(games.AdditiveGame):
        preferred_batch_size = 3
        shapes = set()

        def __call__(self, masks):
            self.shapes.add(masks.shape)
            return super().__call__(masks)

    game = Preferring([1.0, 2.0, 3.0, 4.0])
    shapley.monte_carlo(game, 4, n_permutations=10)
    assert game.shapes == {(3, 4)}
