"""Stopping rules for the Monte Carlo engine (composable with ``&`` and ``|``, as in pyDVL).

A rule is called by the engine after every chunk of permutations with a :class:`RunStatus` and returns True
to stop. Rules may keep memory between calls (``RankStability``); ``reset()`` clears it at the start of a
run. ``a & b`` stops when both do, ``a | b`` when either does; both operands are always evaluated so that
stateful rules see every check. Checks happen between chunks, so count-based rules may overshoot by up to one
chunk, except the permutation cap ``n_permutations`` of :func:`monte_carlo`, which is exact.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunStatus:
    """What a stopping rule (or progress callback) sees after a chunk.

    values, stderr: ``(n,)`` float64 current estimates (stderr ``inf`` before 2 samples);
    n_permutations: permutations done (antithetic: both members of a pair count);
    n_evaluations: utility evaluations spent; elapsed_seconds: wall time since this call started.
    """
    values: np.ndarray
    stderr: np.ndarray
    n_permutations: int
    n_evaluations: int
    elapsed_seconds: float


class StoppingRule:
    """Base class. Subclasses implement ``check(status) -> bool`` and optionally ``reset()``."""

    def check(self, status: RunStatus) -> bool:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def __call__(self, status: RunStatus) -> bool:
        return bool(self.check(status))

    def __and__(self, other: StoppingRule) -> StoppingRule:
        return AllOf(self, other)

    def __or__(self, other: StoppingRule) -> StoppingRule:
        return AnyOf(self, other)


class _Composite(StoppingRule):
    def __init__(self, *rules: StoppingRule):
        for r in rules:
            if not isinstance(r, StoppingRule):
                raise TypeError(f"can only compose StoppingRule objects, got {type(r).__name__}")
        self.rules = rules

    def reset(self) -> None:
        for r in self.rules:
            r.reset()

    def __repr__(self):
        sep = " & " if isinstance(self, AllOf) else " | "
        return "(" + sep.join(map(repr, self.rules)) + ")"


class AllOf(_Composite):
    """Stops when every rule says stop (all rules are evaluated)."""

    def check(self, status):
        results = [r(status) for r in self.rules]
        return all(results)


class AnyOf(_Composite):
    """Stops when any rule says stop (all rules are evaluated)."""

    def check(self, status):
        results = [r(status) for r in self.rules]
        return any(results)


class MaxPermutations(StoppingRule):
    """Stop once ``n_permutations`` permutations are done."""

    def __init__(self, n_permutations: int):
        if n_permutations < 1:
            raise ValueError(f"MaxPermutations: need n_permutations >= 1, got {n_permutations}")
        self.n_permutations = int(n_permutations)

    def check(self, status):
        return status.n_permutations >= self.n_permutations

    def __repr__(self):
        return f"MaxPermutations({self.n_permutations})"


class MaxEvaluations(StoppingRule):
    """Stop once ``n_evaluations`` utility evaluations are spent (checked between chunks)."""

    def __init__(self, n_evaluations: int):
        if n_evaluations < 1:
            raise ValueError(f"MaxEvaluations: need n_evaluations >= 1, got {n_evaluations}")
        self.n_evaluations = int(n_evaluations)

    def check(self, status):
        return status.n_evaluations >= self.n_evaluations

    def __repr__(self):
        return f"MaxEvaluations({self.n_evaluations})"


class StderrTolerance(StoppingRule):
    """Stop when every player's standard error is small: ``stderr_i <= atol + rtol * |value_i|``.

    Give ``atol`` (absolute), ``rtol`` (relative to the player's own estimate) or both. Never stops before
    ``min_permutations`` permutations (default 10), since early variance estimates are unreliable.
    """

    def __init__(self, atol: float | None = None, rtol: float | None = None, *, min_permutations: int = 10):
        if atol is None and rtol is None:
            raise ValueError("StderrTolerance: give atol, rtol or both")
        if (atol is not None and atol < 0) or (rtol is not None and rtol < 0):
            raise ValueError("StderrTolerance: tolerances must be >= 0")
        self.atol = float(atol or 0.0)
        self.rtol = float(rtol or 0.0)
        self.min_permutations = max(2, int(min_permutations))

    def check(self, status):
        if status.n_permutations < self.min_permutations:
            return False
        bound = self.atol + self.rtol * np.abs(status.values)
        return bool(np.all(status.stderr <= bound))

    def __repr__(self):
        return f"StderrTolerance(atol={self.atol}, rtol={self.rtol})"


class RankStability(StoppingRule):
    """Stop when the set of the top ``k`` players (by value) is unchanged for ``n_checks`` consecutive checks.

    The first check only records the set; so at least ``n_checks + 1`` checks happen before stopping.
    """

    def __init__(self, k: int, n_checks: int = 3):
        if k < 1 or n_checks < 1:
            raise ValueError(f"RankStability: need k >= 1 and n_checks >= 1, got k={k}, n_checks={n_checks}")
        self.k = int(k)
        self.n_checks = int(n_checks)
        self.reset()

    def reset(self):
        self._previous = None
        self._unchanged = 0

    def check(self, status):
        k = min(self.k, status.values.shape[0])
        top = frozenset(np.argsort(-status.values, kind="stable")[:k].tolist())
        if top == self._previous:
            self._unchanged += 1
        else:
            self._unchanged = 0
        self._previous = top
        return self._unchanged >= self.n_checks

    def __repr__(self):
        return f"RankStability(k={self.k}, n_checks={self.n_checks})"


class WallClock(StoppingRule):
    """Stop once ``seconds`` of wall time have passed since the start of the run (this process)."""

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f"WallClock: need seconds > 0, got {seconds}")
        self.seconds = float(seconds)

    def check(self, status):
        return status.elapsed_seconds >= self.seconds

    def __repr__(self):
        return f"WallClock({self.seconds})"


def now() -> float:
    return time.perf_counter()
