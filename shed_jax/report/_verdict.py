"""What a run's numbers support, in plain words: did the utility move, and can cluster values be told from zero.

Two checks, shown first in the report and by ``shed show``:

* **Does the utility move?** ``U(full) - U(empty)`` is what all the players together add (the cluster values sum
  to it, per permutation). Its interval comes from the validation sample: for a metric whose per-item scores lie
  in ``[0, 1]`` (probabilities, accuracies) the variance of an item's score is at most ``mu (1 - mu)``, so the
  standard error of the difference of two means over ``n`` validation items is at most
  ``sqrt((u_f (1 - u_f) + u_e (1 - u_e)) / n)`` (an upper bound: the two are measured on the same items, which
  only lowers it). When U(full) is not above U(empty) the utility does not move; when the difference is within 2
  of those standard errors it cannot be told from noise. Either way the cluster values rank noise: the report
  says so before anything else, with what to change. An unbounded metric (a loss, a log-probability, a margin) gets no interval.
* **Significance of cluster values** (``|value| > 2 standard errors``) is stated only with at least
  :data:`MIN_PERMUTATIONS` permutations: a standard error estimated from fewer permutations is itself too
  uncertain for a 2-standard-error rule (with 2 permutations the 95% quantile of Student's t is 12.7, not 2;
  with 30 it is 2.05).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_PERMUTATIONS", "Verdict", "verdict"]

MIN_PERMUTATIONS = 30

# metrics whose per-item score lies in [0, 1] (embedding proxy: prob, accuracy; LM proxy: mc_*)
_UNIT_METRICS = {"prob", "accuracy", "mc_prob", "mc_accuracy", "mc_full_choice"}


@dataclass(frozen=True)
class Verdict:
    delta: float | None            # U(full) - U(empty)
    half_width: float | None       # 2 standard errors of delta (an upper bound), None when unknown
    moves: bool | None             # None: U(full)/U(empty) not recorded
    n_permutations: int | None
    n_significant: int | None      # clusters beyond 2 s.e. (None when not stated)
    n_known: int | None
    headline: str | None           # plain words, first in the report, when the utility does not move
    delta_text: str | None
    significance_text: str

    @property
    def significance_stated(self) -> bool:
        return self.n_significant is not None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def verdict(values_meta: dict, values: np.ndarray | None, stderr: np.ndarray | None) -> Verdict:
    """The checks of the module docstring for a run's ``values.json`` (``values_meta``: its other fields)."""
    utility = values_meta.get("utility") or {}
    u_full, u_empty = values_meta.get("u_full"), values_meta.get("u_empty")
    n_perm = values_meta.get("n_permutations")
    n_perm = int(n_perm) if n_perm is not None else None
    metric = utility.get("metric")
    n_valid = utility.get("n_validation")
    delta = half = moves = None
    delta_text = headline = None
    if u_full is not None and u_empty is not None:
        delta = float(u_full) - float(u_empty)
        if metric in _UNIT_METRICS and n_valid:
            clip = lambda u: min(max(float(u), 0.0), 1.0)  # noqa: E731
            se = math.sqrt((clip(u_full) * (1 - clip(u_full)) + clip(u_empty) * (1 - clip(u_empty))) / int(n_valid))
            half = 2 * se
        moves = delta > 0 and (half is None or delta > half)
        interval = (f" ± {_fmt(half)} (2 standard errors, at most, of the {int(n_valid):,} validation items)"
                    if half is not None else " (no interval: the metric is unbounded and per-item scores are "
                                             "not recorded)")
        delta_text = (f"U(full) − U(empty) = {_fmt(float(u_full))} − {_fmt(float(u_empty))} = "
                      f"{_fmt(delta)}{interval}")
        if not moves:
            if delta <= 0:
                what = (f"The utility does not move: with all the proxies it is {_fmt(float(u_full))}, not above "
                        f"the {_fmt(float(u_empty))} it has with no data")
            else:
                what = (f"The utility's change cannot be told from noise: with all the proxies it is "
                        f"{_fmt(float(u_full))} against {_fmt(float(u_empty))} with no data, a difference of "
                        f"{_fmt(delta)}, within the {_fmt(half)} that {int(n_valid):,} validation items can "
                        f"vary by")
            headline = (f"{what}. The cluster values then rank noise, and a selection built on them is close to "
                        "chance. To change: a validation set closer to what the data should teach, and more of it "
                        "(--valid; the LM proxy's max_validation), a proxy that responds to the data (--proxy, its "
                        "steps or learning rate; see `shed proxies`), or more permutations (--permutations).")
    n_sig = n_known = None
    if values is None or stderr is None:
        significance = "No cluster values."
    else:
        known = np.isfinite(stderr)
        n_known = int(known.sum())
        if n_perm is not None and n_perm < MIN_PERMUTATIONS:
            significance = (f"With {n_perm:,} permutation{'s' if n_perm != 1 else ''} a standard error is itself "
                            f"too uncertain to tell a value from zero; significance is stated from "
                            f"{MIN_PERMUTATIONS} permutations on.")
        elif not known.any():
            significance = ("The values have no standard errors (too few permutations): their ranking cannot be told "
                            "apart from noise.")
        else:
            beyond = np.abs(values[known]) > 2 * stderr[known]
            n_sig = int(beyond.sum())
            significance = (f"{n_sig:,} of {n_known:,} cluster values ({100 * n_sig / n_known:.0f}%) lie more than "
                            f"2 standard errors from zero ({n_perm:,} permutations).")
            if n_sig / n_known < 0.5:
                significance += (" Most values are within noise: the ranking, and the selection built on it, is "
                                 "largely chance; more permutations (or a utility that moves more) would sharpen it.")
    return Verdict(delta, half, moves, n_perm, n_sig, n_known, headline, delta_text, significance)
