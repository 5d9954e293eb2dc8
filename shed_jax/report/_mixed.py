"""The report's "mixed clusters" section: with several proxies per cluster (``--proxies-per-cluster M > 1``),
how much the valued members of each cluster disagree.

A cluster's value is the mean of its members' Shapley values. When k-means mixes good and bad examples into
one cluster, its members' values disagree, and the mean hides it. Criterion (documented in the README):
a cluster **looks mixed** when at least one valued member lies more than 2 standard errors above zero and at
least one more than 2 standard errors below zero (each member's own standard error): the members pull in
significantly opposite directions. Noise alone rarely does that; a wide spread of values that are all within
noise does not count. The table lists the flagged clusters first, then the widest member ranges. The test is
conservative: measured on the block-corrupted dolly mix of ``bench/junk_mix.py`` (M=4, 50 permutations) it
flagged 1 cluster, truly mixed, of the 36 whose valued members were part clean, part junk; a 1-s.e. threshold
flagged 13, of which only 4 were mixed, and "member range > 2 x the cluster's s.e." flagged 137 of 150.

Reads only :class:`~shed_jax.run.artifacts.MemberValues` (through :mod:`shed_jax.report._load`).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MemberSpread", "member_spread", "mixed_section"]

MIXED_Z = 2.0
"""A member counts as clearly positive (negative) when its value is above (below) zero by more than this many
of its standard errors."""

N_ROWS = 15


@dataclass(frozen=True)
class MemberSpread:
    """Per cluster (K,): number of valued members, min / max / s.d. of their values, how many are clearly
    positive / negative (beyond ``MIXED_Z`` s.e.), and ``mixed`` (both counts > 0)."""

    n_members: np.ndarray
    low: np.ndarray
    high: np.ndarray
    sd: np.ndarray
    n_positive: np.ndarray
    n_negative: np.ndarray

    @property
    def mixed(self) -> np.ndarray:
        return (self.n_positive > 0) & (self.n_negative > 0)

    @property
    def spread(self) -> np.ndarray:
        return self.high - self.low


def member_spread(cluster: np.ndarray, value: np.ndarray, stderr: np.ndarray, n_clusters: int,
                  z: float = MIXED_Z) -> MemberSpread:
    """:class:`MemberSpread` of members ``(P,)`` (owning ``cluster``, ``value``, ``stderr``; NaN/inf stderr =
    unknown, never "clearly" signed). Clusters without members get NaN statistics and counts 0.

    >>> s = member_spread(np.array([0, 0, 1]), np.array([1.0, -1.0, 0.5]), np.array([0.1, 0.1, 1.0]), 2)
    >>> s.mixed.tolist(), s.spread.tolist()
    ([True, False], [2.0, 0.0])
    """
    cluster = np.asarray(cluster, np.int64)
    value = np.asarray(value, np.float64)
    stderr = np.asarray(stderr, np.float64)
    count = np.bincount(cluster, minlength=n_clusters)[:n_clusters]
    low = np.full(n_clusters, np.inf)
    high = np.full(n_clusters, -np.inf)
    np.minimum.at(low, cluster, value)
    np.maximum.at(high, cluster, value)
    total = np.bincount(cluster, value, minlength=n_clusters)[:n_clusters]
    squares = np.bincount(cluster, value * value, minlength=n_clusters)[:n_clusters]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        sd = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    known = np.isfinite(stderr)
    positive = known & (value > z * np.where(known, stderr, 0))
    negative = known & (value < -z * np.where(known, stderr, 0))
    empty = count == 0
    low[empty], high[empty], sd[empty] = np.nan, np.nan, np.nan
    return MemberSpread(count, low, high, sd,
                        np.bincount(cluster, positive, minlength=n_clusters)[:n_clusters].astype(np.int64),
                        np.bincount(cluster, negative, minlength=n_clusters)[:n_clusters].astype(np.int64))


def _num(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3g}"


def mixed_section(run) -> str:
    """HTML section (empty string when each cluster is valued by one proxy)."""
    members = getattr(run, "members", None)
    if members is None or run.values is None:
        return ""
    k = int(run.values.shape[0])
    spread = member_spread(members.cluster, members.value, members.stderr, k)
    mixed = spread.mixed
    head = '<section id="mixed"><h2>Do the members of a cluster agree?</h2>'
    n_mixed = int(mixed.sum())
    summary = (f"{n_mixed:,} of {k:,} clusters look mixed: at least one valued member is more than {MIXED_Z:g} "
               f"standard errors above zero and another more than {MIXED_Z:g} below, so the cluster holds examples "
               "that help and examples that hurt, and its mean value hides that.")
    if n_mixed == 0:
        summary = (f"No cluster looks mixed: in none of the {k:,} clusters is one valued member more than "
                   f"{MIXED_Z:g} standard errors above zero while another is more than {MIXED_Z:g} below.")
    summary += (" Single members' values are much noisier than cluster means: with few permutations this test "
                "misses most mixed clusters (on a dolly mix with 20% junk, M=4 and 50 permutations, it flagged 1 "
                "of the 36 clusters whose valued members were part clean, part junk, and nothing clean), so few "
                "flags do not show that the clusters are pure; more permutations sharpen it.")
    note_class = "note" if n_mixed else "caption"
    order = np.lexsort((np.arange(k), -np.nan_to_num(spread.spread, nan=-np.inf), ~mixed))[:N_ROWS]
    rows = []
    for c in order:
        c = int(c)
        value = f"{run.values[c]:.3g} ± {run.stderr[c]:.2g}" if math.isfinite(run.stderr[c]) else f"{run.values[c]:.3g}"
        rows.append(f"<tr><td class='num'>{c}</td><td class='num'>{html.escape(value)}</td>"
                    f"<td class='num'>{int(spread.n_members[c])}</td><td class='num'>{_num(spread.low[c])}</td>"
                    f"<td class='num'>{_num(spread.high[c])}</td><td class='num'>{_num(spread.sd[c])}</td>"
                    f"<td class='num'>{int(spread.n_positive[c])} / {int(spread.n_negative[c])}</td>"
                    f"<td>{'mixed' if mixed[c] else ''}</td></tr>")
    table = ("<table><tr><th class='num'>cluster</th><th class='num'>value ± s.e.</th><th class='num'>members</th>"
             "<th class='num'>min</th><th class='num'>max</th><th class='num'>s.d.</th>"
             f"<th class='num'>+ / − beyond {MIXED_Z:g} s.e.</th><th></th></tr>{''.join(rows)}</table>")
    caption = ("Member values of each cluster (the members nearest its centroid, valued as separate Shapley "
               "players): mixed clusters first, then the widest range of member values. The cluster value's "
               "standard error is exact (per-permutation mean of the members).")
    return head + f'<p class="{note_class}">{html.escape(summary)}</p>' + table + \
        f'<p class="caption">{caption}</p></section>'
