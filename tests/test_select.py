"""Tests for shed_jax.select: budgets, QOCS, QWCS (against the sequential definition) and random."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from shed_jax import select

P_MIN = 1e-3  # chi-square tests use fixed seeds, so they are deterministic; this is the rejection level.


# ----------------------------------------------------------------------------------------- references
def sequential_qwcs(labels, weights, budget, rng):
    """The QWCS definition, literally: draw an active cluster ~ w, then a uniform remaining member."""
    remaining = {c: list(np.flatnonzero(labels == c)) for c in range(len(weights))}
    chosen = []
    for _ in range(budget):
        active = [c for c in remaining if remaining[c]]
        w = np.array([weights[c] for c in active], dtype=np.float64)
        c = active[rng.choice(len(active), p=w / w.sum())]
        chosen.append(remaining[c].pop(rng.integers(len(remaining[c]))))
    return np.array(chosen)


def exact_sequence_probabilities(sizes, weights, budget):
    """Exact law of the ordered cluster sequence of the first `budget` sequential QWCS draws."""
    probs = {}

    def recurse(prefix, left, p):
        if len(prefix) == budget:
            probs[tuple(prefix)] = probs.get(tuple(prefix), 0.0) + p
            return
        active = [c for c in range(len(sizes)) if left[c] > 0]
        total = sum(weights[c] for c in active)
        for c in active:
            left[c] -= 1
            recurse(prefix + [c], left, p * weights[c] / total)
            left[c] += 1

    recurse([], list(sizes), 1.0)
    return probs


def std_weights(values, beta):
    z = (values - values.mean()) / values.std()
    return np.exp(beta * z)


def chisquare_pvalue(observed, expected):
    """Pearson chi-square p-value; the smallest bins are pooled until every expected count is >= 5."""
    order = np.argsort(np.asarray(expected, dtype=np.float64))
    observed = np.asarray(observed, dtype=np.float64)[order]
    expected = np.asarray(expected, dtype=np.float64)[order]
    n_pooled = 0
    while n_pooled < len(expected) and (expected[n_pooled] < 5 or 0 < expected[:n_pooled].sum() < 5):
        n_pooled += 1
    if n_pooled > 1:
        observed = np.append(observed[n_pooled:], observed[:n_pooled].sum())
        expected = np.append(expected[n_pooled:], expected[:n_pooled].sum())
    assert np.all(expected >= 5), "pool bins: expected counts too small for a chi-square test"
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def assert_valid_selection(chosen, labels, budget):
    assert chosen.shape == (budget,)
    assert chosen.dtype == np.int64
    assert len(np.unique(chosen)) == budget
    assert np.all(labels[chosen] >= 0)


# --------------------------------------------------------------------------------------------- budget
def test_budget_size_and_ratio():
    assert select.budget(1000, size=10) == 10
    assert select.budget(1000, size=1000) == 1000
    assert select.budget(1000, ratio=0.1) == 100
    assert select.budget(10, ratio=0.25) == 3  # 2.5 rounds to nearest, halves up
    assert select.budget(10, ratio=0.24) == 2
    assert select.budget(3, ratio=0.01) == 1  # at least 1
    assert select.budget(7, ratio=1.0) == 7
    assert select.budget(np.int64(10), size=np.int32(4)) == 4


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"size": 3, "ratio": 0.5}, "exactly one"),
    ({"size": 0}, r"\[1, 10\]"),
    ({"size": 11}, r"\[1, 10\]"),
    ({"size": 2.5}, "integer"),
    ({"ratio": 0.0}, r"\(0, 1\]"),
    ({"ratio": 1.5}, r"\(0, 1\]"),
    ({"ratio": float("nan")}, r"\(0, 1\]"),
    ({"ratio": "0.1"}, "number"),
])
def test_budget_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select.budget(10, **kwargs)


def test_budget_bad_n_examples():
    with pytest.raises(ValueError, match="n_examples"):
        select.budget(0, size=1)


# ----------------------------------------------------------------------------------------------- QOCS
def test_qocs_takes_top_clusters_whole_then_subsamples():
    # cluster sizes: 0 -> 5, 1 -> 4, 2 -> 3; values rank 1 > 2 > 0
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, -1, -1])
    values = np.array([0.1, 0.5, 0.3])
    for seed in range(5):
        chosen = select.qocs(labels, values, 9, seed=seed)
        assert_valid_selection(chosen, labels, 9)
        np.testing.assert_array_equal(chosen[:7], [1, 4, 7, 10, 2, 5, 8])  # clusters 1 and 2 in full
        assert set(chosen[7:]) <= {0, 3, 6, 9, 11}
        assert np.all(np.diff(chosen[7:]) > 0)


def test_qocs_exact_fit_and_ties_by_cluster_id():
    labels = np.array([2, 2, 0, 0, 1, 1])
    values = np.array([1.0, 1.0, 1.0])
    np.testing.assert_array_equal(select.qocs(labels, values, 4, seed=3), [2, 3, 4, 5])
    np.testing.assert_array_equal(select.qocs(labels, values, 6), [2, 3, 4, 5, 0, 1])


def test_qocs_skips_clusters_without_candidates():
    labels = np.array([-1, -1, 0, 0, 2])
    values = np.array([0.0, 100.0, 5.0])  # cluster 1 has no members at all
    np.testing.assert_array_equal(select.qocs(labels, values, 3), [4, 2, 3])
    assert select.qocs(labels, values, 2, seed=0)[0] == 4


def test_qocs_last_cluster_subsample_is_uniform():
    labels = np.array([0] * 3 + [1] * 6)
    values = np.array([1.0, 0.0])
    counts = np.zeros(9)
    n_seeds = 3000
    for seed in range(n_seeds):
        chosen = select.qocs(labels, values, 5, seed=seed)
        np.testing.assert_array_equal(chosen[:3], [0, 1, 2])
        counts[chosen[3:]] += 1
    # each of the 6 members of cluster 1 is chosen with probability 2/6
    assert chisquare_pvalue(counts[3:], np.full(6, n_seeds * 2 / 6)) > P_MIN
    assert len({tuple(select.qocs(labels, values, 5, seed=s)) for s in range(20)}) > 1
    np.testing.assert_array_equal(select.qocs(labels, values, 5, seed=7), select.qocs(labels, values, 5, seed=7))


# ----------------------------------------------------------------------------------------------- QWCS
def test_qwcs_exact_budget_distinct_and_candidates_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 20, size=2000)
    values = rng.normal(size=20)
    n_candidates = int(np.sum(labels >= 0))
    for budget in (1, 17, 500, n_candidates):
        chosen = select.qwcs(labels, values, budget, beta=2.0, seed=budget)
        assert_valid_selection(chosen, labels, budget)
    assert set(select.qwcs(labels, values, n_candidates)) == set(np.flatnonzero(labels >= 0))


def test_qwcs_deterministic_per_seed():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=300)
    values = rng.normal(size=10)
    a = select.qwcs(labels, values, 50, beta=1.0, seed=11)
    np.testing.assert_array_equal(a, select.qwcs(labels, values, 50, beta=1.0, seed=11))
    assert not np.array_equal(a, select.qwcs(labels, values, 50, beta=1.0, seed=12))


def test_qwcs_ordered_sequence_law_matches_exact_enumeration():
    """The full ordered cluster sequence of the draws follows the sequential QWCS law exactly."""
    sizes = [1, 2, 3]
    labels = np.array([2, 1, -1, 2, 0, 1, 2])  # sizes 1, 2, 3 and one non-candidate
    values = np.array([0.0, 1.0, -0.5])
    beta, budget = 1.0, 3
    probs = exact_sequence_probabilities(sizes, std_weights(values, beta), budget)
    keys = sorted(probs)
    index = {k: i for i, k in enumerate(keys)}
    counts = np.zeros(len(keys))
    n_seeds = 12000
    for seed in range(n_seeds):
        chosen = select.qwcs(labels, values, budget, beta=beta, seed=seed)
        counts[index[tuple(labels[chosen])]] += 1
    expected = np.array([probs[k] for k in keys]) * n_seeds
    assert math.isclose(sum(probs.values()), 1.0)
    assert chisquare_pvalue(counts, expected) > P_MIN


def test_qwcs_first_draw_per_example_probabilities():
    """P(example i is drawn first) = w_c / sum of w over non-empty clusters / n_c."""
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 3, -1, 2])  # cluster 3 size 1; cluster 4 empty
    values = np.array([0.3, -1.0, 0.0, 1.2, 9.0])
    beta = 0.7
    weights = std_weights(values, beta)
    sizes = np.bincount(labels[labels >= 0], minlength=5)
    nonempty = sizes > 0
    expected = np.zeros(len(labels))
    for i, c in enumerate(labels):
        if c >= 0:
            expected[i] = weights[c] / weights[nonempty].sum() / sizes[c]
    n_seeds = 12000
    counts = np.zeros(len(labels))
    for seed in range(n_seeds):
        counts[select.qwcs(labels, values, 2, beta=beta, seed=seed, n_clusters=5)[0]] += 1
    assert counts[8] == 0
    candidates = labels >= 0
    assert chisquare_pvalue(counts[candidates], expected[candidates] * n_seeds) > P_MIN


def test_qwcs_cluster_counts_match_direct_sequential_simulation():
    """Mean number of draws per cluster: vectorised vs a literal sequential loop, within 4 standard errors."""
    sizes = [2, 5, 1, 8, 3]
    labels = np.repeat(np.arange(5), sizes)
    values = np.array([0.2, -0.4, 1.5, 0.0, 0.9])
    beta, budget, n_runs = 1.5, 7, 3000
    weights = std_weights(values, beta)
    vec = np.array([np.bincount(labels[select.qwcs(labels, values, budget, beta=beta, seed=s)], minlength=5)
                    for s in range(n_runs)])
    rng = np.random.default_rng(12345)
    seq = np.array([np.bincount(labels[sequential_qwcs(labels, weights, budget, rng)], minlength=5)
                    for _ in range(n_runs)])
    stderr = np.sqrt(vec.var(0, ddof=1) / n_runs + seq.var(0, ddof=1) / n_runs)
    np.testing.assert_array_less(np.abs(vec.mean(0) - seq.mean(0)), 4 * stderr + 1e-12)


def test_qwcs_beta_zero_uniform_over_nonempty_clusters():
    labels = np.concatenate([[0], np.full(50, 1), np.full(10, 2), [-1, -1]])
    values = np.array([-3.0, 0.0, 1.0, 50.0])  # cluster 3 has no candidates
    n_seeds = 3000
    first = np.array([labels[select.qwcs(labels, values, 5, beta=0.0, seed=s, n_clusters=4)[0]]
                      for s in range(n_seeds)])
    counts = np.bincount(first, minlength=4)
    assert counts[3] == 0
    assert chisquare_pvalue(counts[:3], np.full(3, n_seeds / 3)) > P_MIN


def test_qwcs_large_beta_is_qocs_order():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, size=400)
    values = rng.permutation(8).astype(np.float64)  # distinct values
    budget = 180
    for seed in range(3):
        greedy = select.qocs(labels, values, budget, seed=seed)
        weighted = select.qwcs(labels, values, budget, beta=1e4, seed=seed)
        assert_valid_selection(weighted, labels, budget)
        # identical cluster sequence, and the same whole clusters
        np.testing.assert_array_equal(labels[weighted], labels[greedy])
        last = labels[greedy[-1]]
        whole = labels[greedy] != last
        assert set(weighted[whole]) == set(greedy[whole])


def test_qwcs_raw_scale_equals_std_scale_with_rescaled_beta():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 12, size=500)
    values = rng.normal(scale=1e-3, size=12)  # accuracy-delta-sized values
    beta_raw = 800.0
    raw = select.qwcs(labels, values, 100, beta=beta_raw, seed=5, beta_scale="raw")
    std = select.qwcs(labels, values, 100, beta=beta_raw * values.std(), seed=5, beta_scale="std")
    np.testing.assert_array_equal(raw, std)


def test_qwcs_raw_beta_one_on_small_values_is_nearly_uniform():
    """The reference's beta=1 on raw ~1e-3 values: cluster weights within 1% of each other."""
    labels = np.repeat(np.arange(4), 25)
    values = np.array([-2e-3, -1e-3, 1e-3, 3e-3])
    n_seeds = 2000
    first = np.array([labels[select.qwcs(labels, values, 1, beta=1.0, seed=s, beta_scale="raw")[0]]
                      for s in range(n_seeds)])
    assert chisquare_pvalue(np.bincount(first, minlength=4), np.full(4, n_seeds / 4)) > P_MIN


def test_qwcs_constant_values_std_scale():
    labels = np.repeat(np.arange(3), 4)
    chosen = select.qwcs(labels, np.ones(3), 12, beta=5.0, seed=0)
    assert sorted(chosen.tolist()) == list(range(12))


def test_qwcs_one_million_examples_smoke():
    rng = np.random.default_rng(0)
    n, k = 1_000_000, 1000
    labels = rng.integers(0, k, size=n).astype(np.int32)
    labels[rng.random(n) < 0.02] = -1
    values = rng.normal(size=k)
    chosen = select.qwcs(labels, values, 100_000, beta=1.0, seed=0)
    assert_valid_selection(chosen, labels, 100_000)
    chosen = select.qocs(labels, values, 100_000, seed=0)
    assert_valid_selection(chosen, labels, 100_000)


# --------------------------------------------------------------------------------------------- random
def test_random_uniform_distinct_deterministic():
    chosen = select.random(100, 30, seed=0)
    assert chosen.shape == (30,) and chosen.dtype == np.int64
    assert len(np.unique(chosen)) == 30 and chosen.min() >= 0 and chosen.max() < 100
    np.testing.assert_array_equal(chosen, select.random(100, 30, seed=0))
    assert not np.array_equal(chosen, select.random(100, 30, seed=1))
    counts = np.zeros(10)
    for seed in range(2000):
        counts[select.random(10, 3, seed=seed)] += 1
    assert chisquare_pvalue(counts, np.full(10, 2000 * 3 / 10)) > P_MIN


def test_random_with_candidate_mask():
    mask = np.zeros(20, dtype=bool)
    mask[[1, 4, 9, 15]] = True
    assert sorted(select.random(20, 4, seed=2, candidates=mask).tolist()) == [1, 4, 9, 15]
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        select.random(20, 5, candidates=mask)
    with pytest.raises(ValueError, match="bool mask"):
        select.random(20, 2, candidates=np.ones(19, dtype=bool))


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("sampler", [select.qocs, select.qwcs])
def test_cluster_input_validation(sampler):
    labels = np.array([0, 1, 1, -1, 2])
    values = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="imply 3 clusters"):
        sampler(labels, values[:2], 2)
    with pytest.raises(ValueError, match="imply 3 clusters"):
        sampler(labels, np.zeros(4), 2)
    with pytest.raises(ValueError, match="finite"):
        sampler(labels, np.array([0.1, np.nan, 0.3]), 2)
    with pytest.raises(ValueError, match=">= -1"):
        sampler(np.array([0, -2, 1, 2]), values, 2)
    with pytest.raises(ValueError, match="integers"):
        sampler(labels.astype(float), values, 2)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        sampler(labels, values, 5)  # only 4 candidates
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        sampler(labels, values, 0)
    with pytest.raises(ValueError, match="every label is -1"):
        sampler(np.array([-1, -1]), np.zeros(0), 1, n_clusters=0)
    with pytest.raises(ValueError, match="1-D"):
        sampler(labels[None], values, 2)
    with pytest.raises(ValueError, match="n_clusters = 4"):
        sampler(labels, values, 2, n_clusters=4)
    # trailing clusters without candidates are fine when n_clusters says so
    chosen = sampler(labels, np.array([0.1, 0.2, 0.3, 9.0]), 4, n_clusters=4)
    assert sorted(chosen.tolist()) == [0, 1, 2, 4]


def test_qwcs_beta_validation():
    labels = np.array([0, 1])
    values = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="beta_scale"):
        select.qwcs(labels, values, 1, beta_scale="minmax")
    for beta in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="beta"):
            select.qwcs(labels, values, 1, beta=beta)
    with pytest.raises(ValueError, match="overflows"):
        select.qwcs(labels, np.array([0.0, 1e300]), 1, beta=1e10, beta_scale="raw")


def test_all_sequence_keys_reachable_sanity():
    """Guard for the enumeration reference itself: probabilities of a tiny case by hand."""
    probs = exact_sequence_probabilities([1, 1], [1.0, 3.0], 2)
    assert probs == pytest.approx({(0, 1): 0.25, (1, 0): 0.75})
    assert len(exact_sequence_probabilities([2, 1], [1.0, 1.0], 2)) == len(
        [s for s in itertools.product([0, 1], repeat=2) if s.count(1) <= 1])
