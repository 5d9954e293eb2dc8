"""Turn cluster values into a selection of examples: QOCS, QWCS and a random baseline.

SHED (He et al., "SHED: Shapley-Based Automated Dataset Refinement for Instruction Fine-Tuning",
NeurIPS 2024) values each k-means cluster through its proxy example and then builds the refined data set
with one of two samplers:

* **QOCS** (quality-ordered cluster sampling): clusters are visited in descending value and taken whole
  until the budget is reached; the last cluster visited is sub-sampled uniformly (seeded) so that exactly
  ``budget`` examples come back. Equal values are broken by the smaller cluster id first.
* **QWCS** (quality-weighted cluster sampling): repeat ``budget`` times: draw a cluster with probability
  proportional to ``w_c = exp(beta * score_c)`` among the clusters that still have unselected examples,
  then draw one of its remaining examples uniformly.

The random baseline draws ``budget`` examples uniformly without replacement.

Candidates. ``labels[i] == -1`` marks example ``i`` as not a candidate (for example a dropped duplicate);
it is never selected. Everything here is host-side numpy, deterministic for a given ``seed``
(``np.random.default_rng(seed)``), and vectorised: no Python loop per example.

The scale of ``beta`` (``beta_scale``)
--------------------------------------
``"std"`` (default): scores are the standardised values ``z_c = (v_c - mean(v)) / std(v)`` (over all
``len(cluster_values)`` clusters; all-equal values give ``z = 0``, i.e. uniform cluster draws). So
``beta = 1`` means a cluster one standard deviation better is ``e`` times more likely to be drawn, whatever
the units of the utility. ``"raw"`` uses ``score_c = v_c`` like the reference code; note that the
reference's ``beta = 1`` on raw accuracy differences (~1e-3) makes ``exp(beta * v)`` ~ 1 for every cluster,
i.e. QWCS is then almost uniform over clusters. ``beta = 0`` is uniform over non-empty clusters on either
scale; a very large ``beta`` approaches QOCS; a negative ``beta`` favours low-value clusters.

Vectorised QWCS: competing exponential clocks
---------------------------------------------
For every cluster ``c`` with weight ``w_c`` and ``n_c`` candidates, put its members in a uniformly random
order and give the ``k``-th of them the arrival time ``T_{c,k} = (E_{c,1} + ... + E_{c,k}) / w_c`` with
i.i.d. ``E ~ Exp(1)``; i.e. cluster ``c`` is a Poisson process of rate ``w_c`` stopped after ``n_c``
arrivals, and arrival ``k`` brings its ``k``-th member. Claim: the examples sorted by arrival time have
exactly the law of the sequential QWCS draws, so the ``budget`` earliest arrivals are a QWCS selection.

Proof. Condition on the history up to the ``t``-th arrival (which clusters arrived, when, with which
members). For every cluster still active (fewer than ``n_c`` arrivals so far), the time to its next arrival
is ``Exp(w_c)`` by memorylessness, independently across clusters and of the history; exhausted clusters
have no more arrivals. The minimum of independent ``Exp(w_c)`` clocks is attained by cluster ``c`` with
probability ``w_c / sum_{active c'} w_{c'}``, which is the QWCS cluster draw; the member it brings is the
next one in a uniform random permutation, i.e. uniform over that cluster's remaining members, which is the
QWCS example draw. By induction over ``t`` the two processes have the same law. []

Numerics: comparisons are made on ``log T_{c,k} = log(E_{c,1} + ... + E_{c,k}) - log w_c`` with the
log-weights ``beta * score_c - max_c(beta * score_c)``, so no weight underflows even for a huge ``beta``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from shed_jax.config import check_positive_int

__all__ = ["budget", "qocs", "qwcs", "random", "BETA_SCALES"]

BETA_SCALES = ("std", "raw")


def budget(n_examples: int, *, size: int | None = None, ratio: float | None = None) -> int:
    """Number of examples to select, from an absolute ``size`` or a ``ratio`` of ``n_examples``.

    Exactly one of ``size`` / ``ratio`` must be given. ``size`` must be an integer in ``[1, n_examples]``;
    ``ratio`` a number in ``(0, 1]``, turned into ``round(ratio * n_examples)`` (halves rounded up) and at
    least 1.

    Args:
      n_examples: number of candidate examples, ``>= 1``.
      size: absolute budget.
      ratio: fraction of ``n_examples``.

    Returns:
      The budget, an ``int`` in ``[1, n_examples]``.

    Raises:
      ValueError: both or neither of ``size`` / ``ratio`` given, or a value out of range.

    >>> budget(1000, ratio=0.1), budget(1000, size=7), budget(3, ratio=0.01)
    (100, 7, 1)
    """
    n_examples = check_positive_int(n_examples, "n_examples")
    if (size is None) == (ratio is None):
        raise ValueError("give exactly one of size= or ratio= for the budget")
    if size is not None:
        size = _as_int(size, "size")
        if not 1 <= size <= n_examples:
            raise ValueError(f"budget size must be in [1, {n_examples}] (the number of examples), got {size}")
        return size
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ValueError(f"budget ratio must be a number in (0, 1], got {ratio!r}")
    ratio = float(ratio)
    if not (0.0 < ratio <= 1.0):  # also rejects nan
        raise ValueError(f"budget ratio must be in (0, 1], got {ratio}")
    return int(min(n_examples, max(1, math.floor(ratio * n_examples + 0.5))))


def qocs(labels, cluster_values, budget: int, seed: int = 0, *, n_clusters: int | None = None) -> np.ndarray:
    """Quality-ordered cluster sampling: whole clusters in descending value, the last one sub-sampled.

    Clusters are ordered by descending ``cluster_values`` (equal values: smaller cluster id first) and
    their candidate examples are taken whole while they fit into the budget; from the first cluster that
    does not fit, ``budget - taken`` examples are drawn uniformly without replacement (``seed``).

    Args:
      labels: ``(N,)`` int cluster id per example in ``[0, n_clusters)``, or ``-1`` for a non-candidate.
      cluster_values: ``(K,)`` finite float value per cluster.
      budget: number of examples to return, ``1 <= budget <= #candidates``.
      seed: seed of the sub-sampling of the last cluster.
      n_clusters: number of clusters ``K``, when clusters ``>= max(labels) + 1`` have no candidates; by
        default ``K = max(labels) + 1``. ``len(cluster_values)`` must equal ``K``.

    Returns:
      ``(budget,)`` int64 distinct example indices in selection order: cluster by cluster in descending
      value, ascending index within a cluster.

    Raises:
      ValueError: malformed labels / values, or a budget outside ``[1, #candidates]``.

    >>> qocs(np.array([0, 0, 1, 1, 1, 2]), np.array([0.2, 0.9, 0.5]), 4).tolist()
    [2, 3, 4, 5]
    """
    labels, values, n_candidates = _check_clusters(labels, cluster_values, n_clusters)
    budget = _check_budget(budget, n_candidates)
    rng = np.random.default_rng(seed)

    n_clusters_ = values.shape[0]
    # rank[c] = position of cluster c when sorted by (-value, id)
    cluster_order = np.lexsort((np.arange(n_clusters_), -values))
    rank = np.empty(n_clusters_, dtype=np.int64)
    rank[cluster_order] = np.arange(n_clusters_)

    candidates = np.flatnonzero(labels >= 0)
    candidate_rank = rank[labels[candidates]]
    by_rank = candidates[np.argsort(candidate_rank, kind="stable")]  # candidates are ascending already
    ends = np.cumsum(np.bincount(candidate_rank, minlength=n_clusters_))  # end offset of each ranked cluster

    last = int(np.searchsorted(ends, budget, side="left"))  # first ranked cluster reaching the budget
    start = int(ends[last - 1]) if last > 0 else 0
    whole = by_rank[:start]
    partial = rng.choice(by_rank[start:ends[last]], size=budget - start, replace=False)
    return np.concatenate([whole, np.sort(partial)]).astype(np.int64)


def qwcs(labels, cluster_values, budget: int, beta: float = 1.0, seed: int = 0, *, beta_scale: str = "std",
         n_clusters: int | None = None) -> np.ndarray:
    """Quality-weighted cluster sampling, vectorised with competing exponential clocks (module docstring).

    Same law as: ``budget`` times, draw cluster ``c`` with probability proportional to
    ``exp(beta * score_c)`` among clusters with candidates left, then one of its remaining candidates
    uniformly. ``score`` is the standardised value (``beta_scale="std"``) or the raw value (``"raw"``).

    Args:
      labels: ``(N,)`` int cluster id per example in ``[0, n_clusters)``, or ``-1`` for a non-candidate.
      cluster_values: ``(K,)`` finite float value per cluster.
      budget: number of examples to return, ``1 <= budget <= #candidates``.
      beta: finite inverse temperature; ``0`` = uniform over non-empty clusters, large = QOCS order.
      seed: seed of ``np.random.default_rng``.
      beta_scale: ``"std"`` or ``"raw"`` (see the module docstring).
      n_clusters: as in :func:`qocs`.

    Returns:
      ``(budget,)`` int64 distinct example indices in draw order.

    Raises:
      ValueError: malformed labels / values, bad ``beta`` / ``beta_scale``, or a budget outside
        ``[1, #candidates]``.

    >>> labels = np.array([0, 0, 1, 1, 1, 2])
    >>> sorted(qwcs(labels, np.array([0.2, 0.9, 0.5]), 6, beta=3.0, seed=1).tolist())
    [0, 1, 2, 3, 4, 5]
    """
    labels, values, n_candidates = _check_clusters(labels, cluster_values, n_clusters)
    budget = _check_budget(budget, n_candidates)
    log_weights = _log_weights(values, beta, beta_scale)
    rng = np.random.default_rng(seed)

    candidates = np.flatnonzero(labels >= 0)
    # Uniformly random order of the members inside each cluster: shuffle, then stable-sort by cluster.
    shuffled = candidates[rng.permutation(n_candidates)]
    members = shuffled[np.argsort(labels[shuffled], kind="stable")]
    member_labels = labels[members]

    # Per-cluster cumulative sums of Exp(1) variables (segmented cumsum in float64).
    exponentials = rng.standard_exponential(n_candidates)
    running = np.cumsum(exponentials)
    is_first = np.ones(n_candidates, dtype=bool)
    is_first[1:] = member_labels[1:] != member_labels[:-1]
    segment_start = np.maximum.accumulate(np.where(is_first, np.arange(n_candidates), 0))
    offset = np.where(segment_start > 0, running[segment_start - 1], 0.0)
    cumulative = np.where(is_first, exponentials, running - offset)  # first arrival exact
    cumulative = np.maximum(cumulative, exponentials[segment_start])  # guard rounding below the first

    log_arrival = np.log(cumulative) - log_weights[member_labels]
    earliest = np.argpartition(log_arrival, budget - 1)[:budget] if budget < n_candidates else \
        np.arange(n_candidates)
    earliest = earliest[np.argsort(log_arrival[earliest], kind="stable")]
    return members[earliest].astype(np.int64)


def random(n_examples: int, budget: int, seed: int = 0, *, candidates=None) -> np.ndarray:
    """Uniform random selection without replacement (the baseline).

    Args:
      n_examples: number of examples ``N``.
      budget: number to draw, ``1 <= budget <= #candidates``.
      seed: seed of ``np.random.default_rng``.
      candidates: optional ``(N,)`` bool mask of the examples that may be drawn (default: all).

    Returns:
      ``(budget,)`` int64 distinct indices in ``[0, N)``, in draw order.

    Raises:
      ValueError: bad ``n_examples`` / mask, or a budget outside ``[1, #candidates]``.

    >>> sorted(random(5, 5, seed=3).tolist())
    [0, 1, 2, 3, 4]
    """
    n_examples = check_positive_int(n_examples, "n_examples")
    rng = np.random.default_rng(seed)
    if candidates is None:
        budget = _check_budget(budget, n_examples)
        return rng.choice(n_examples, size=budget, replace=False).astype(np.int64)
    mask = np.asarray(candidates)
    if mask.dtype != np.bool_ or mask.shape != (n_examples,):
        raise ValueError(f"candidates must be a bool mask of shape ({n_examples},), "
                         f"got dtype {mask.dtype} shape {mask.shape}")
    pool = np.flatnonzero(mask)
    budget = _check_budget(budget, pool.shape[0])
    return pool[rng.choice(pool.shape[0], size=budget, replace=False)].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
def _as_int(value, name: str) -> int:
    """``int(value)`` for an integer that is not a bool (the range is checked by the caller, with its own message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_budget(budget, n_candidates: int) -> int:
    budget = _as_int(budget, "budget")
    if not 1 <= budget <= n_candidates:
        raise ValueError(f"budget must be in [1, {n_candidates}] (the number of candidate examples), "
                         f"got {budget}")
    return budget


def _check_clusters(labels, cluster_values, n_clusters):
    """Validate ``labels`` (N,) and ``cluster_values`` (K,); return (labels int64, values float64, #cand)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one cluster id per example), got shape {labels.shape}")
    if labels.shape[0] == 0:
        raise ValueError("labels is empty: no examples to select from")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (cluster ids, -1 = not a candidate), got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = not a candidate), found {labels.min()}")
    values = np.asarray(cluster_values)
    if values.ndim != 1:
        raise ValueError(f"cluster_values must be 1-D (one value per cluster), got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"cluster_values must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.isfinite(values))
        raise ValueError(f"cluster_values must be finite; non-finite at clusters {bad[:10].tolist()}")
    max_label = int(labels.max())
    if n_clusters is None:
        expected = max_label + 1
        if values.shape[0] != expected:
            raise ValueError(
                f"len(cluster_values) = {values.shape[0]} but labels imply {expected} clusters "
                f"(max label + 1); pass n_clusters= if the last clusters have no candidates")
    else:
        expected = _as_int(n_clusters, "n_clusters")
        if values.shape[0] != expected:
            raise ValueError(f"len(cluster_values) = {values.shape[0]} != n_clusters = {expected}")
        if max_label >= expected:
            raise ValueError(f"labels contain cluster id {max_label} >= n_clusters = {expected}")
    n_candidates = int(np.count_nonzero(labels >= 0))
    if n_candidates == 0:
        raise ValueError("no candidate examples: every label is -1")
    return labels, values, n_candidates


def _log_weights(values: np.ndarray, beta, beta_scale: str) -> np.ndarray:
    """``beta * score - max(beta * score)``: (K,) float64 log-weights, all <= 0."""
    if beta_scale not in BETA_SCALES:
        raise ValueError(f"beta_scale must be one of {BETA_SCALES}, got {beta_scale!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(float(beta)):
        raise ValueError(f"beta must be a finite real number, got {beta!r}")
    if beta_scale == "std":
        spread = values.std()
        scores = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
    else:
        scores = values
    with np.errstate(over="ignore", invalid="ignore"):
        logits = float(beta) * scores
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"beta * score overflows (beta={beta}); use a smaller beta")
    return logits - logits.max()
