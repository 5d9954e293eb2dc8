"""95% intervals for a comparison: a bootstrap over test items *and* seeds, and paired differences.

Every row of a comparison (a training set, fine-tuned once per seed) has per-item scores for each seed:
``num`` ``(n_seeds, n_items)`` and ``den`` ``(n_seeds, n_items)``; the row's value under one seed is the ratio
``sum_i num / sum_i den`` (accuracy: ``num`` = 1 for a right answer, ``den`` = 1; held-out loss: ``num`` = the
item's summed response loss, ``den`` = its response tokens, so the loss stays token-weighted as in training),
and the row's mean is the average of that ratio over seeds.

The interval resamples both sources of noise at once (a two-level percentile bootstrap): each replicate
draws ``n_items`` items with replacement and ``n_seeds`` seed indices with replacement, and recomputes the
mean. A **paired** difference between two rows uses the *same* item and seed draws for both (seed ``j`` of
one row is paired with seed ``j`` of the other: same minibatch order and initial adapter), so the noise the
rows share (hard items, a lucky seed) cancels. Rows with one seed (the untuned model) are broadcast over
the seed draws. The draws are vectorised: a replicate is a row of item counts ``(B, n_items)`` and of seed
counts ``(B, n_seeds)``, and every statistic is a matrix product (no Python loop over replicates).

Example:
    >>> import numpy as np
    >>> num = np.array([[1., 0., 1., 1.], [1., 1., 0., 1.]]); den = np.ones_like(num)
    >>> draws = Draws.make(n_items=4, n_seeds=2, n_boot=200, seed=0)
    >>> round(row_mean(num, den), 3), len(interval(num, den, draws))
    (0.75, 2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Draws", "row_mean", "interval", "paired_difference", "replicates"]


@dataclass(frozen=True)
class Draws:
    """Bootstrap draws shared by every row and difference of one test set.

    Attributes:
        item_counts: ``(B, n_items)`` float64: how often each item is drawn in each replicate (rows sum to
            ``n_items``).
        seed_counts: ``(B, n_seeds)`` float64: how often each seed index is drawn (rows sum to ``n_seeds``).
    """

    item_counts: np.ndarray
    seed_counts: np.ndarray

    @classmethod
    def make(cls, *, n_items: int, n_seeds: int, n_boot: int = 2000, seed: int = 0) -> "Draws":
        """Multinomial counts of ``n_boot`` replicates (one generator: items first, then seeds)."""
        if n_items < 1 or n_seeds < 1 or n_boot < 1:
            raise ValueError(f"need n_items, n_seeds, n_boot >= 1, got {n_items}, {n_seeds}, {n_boot}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB007]))
        items = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(np.float64)
        seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(np.float64)
        return cls(items, seeds)

    @property
    def n_boot(self) -> int:
        return int(self.item_counts.shape[0])


def _check(num, den) -> tuple[np.ndarray, np.ndarray]:
    num, den = np.atleast_2d(np.asarray(num, np.float64)), np.atleast_2d(np.asarray(den, np.float64))
    if num.shape != den.shape:
        raise ValueError(f"num {num.shape} and den {den.shape} differ in shape")
    return num, den


def row_mean(num, den) -> float:
    """The row's value: the mean over seeds of ``sum(num) / sum(den)`` over items."""
    num, den = _check(num, den)
    return float(np.mean(num.sum(axis=1) / den.sum(axis=1)))


def replicates(num, den, draws: Draws) -> np.ndarray:
    """``(B,)`` float64 bootstrap replicates of :func:`row_mean` (a one-seed row is used for every seed draw)."""
    num, den = _check(num, den)
    per_seed = (draws.item_counts @ num.T) / (draws.item_counts @ den.T)           # (B, n_seeds of the row)
    n_seeds = draws.seed_counts.shape[1]
    if per_seed.shape[1] == 1:
        return per_seed[:, 0]
    if per_seed.shape[1] != n_seeds:
        raise ValueError(f"the row has {per_seed.shape[1]} seeds, the draws {n_seeds}")
    return np.sum(per_seed * draws.seed_counts, axis=1) / n_seeds


def _percentile(values: np.ndarray, level: float) -> list[float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def interval(num, den, draws: Draws, *, level: float = 0.95) -> list[float]:
    """``[lo, hi]``: the percentile bootstrap interval of :func:`row_mean`."""
    return _percentile(replicates(num, den, draws), level)


def paired_difference(num_a, den_a, num_b, den_b, draws: Draws, *, level: float = 0.95) -> dict:
    """``{"diff": mean(a) - mean(b), "ci95": [lo, hi]}`` with the same item and seed draws for both rows."""
    diff = row_mean(num_a, den_a) - row_mean(num_b, den_b)
    boot = replicates(num_a, den_a, draws) - replicates(num_b, den_b, draws)
    return {"diff": float(diff), "ci95": _percentile(boot, level)}
