"""Result of a Shapley computation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ShapleyResult:
    """Monte Carlo Shapley estimates.

    Attributes:
      values: ``(n,)`` float64 estimated values (mean of the per-permutation marginals).
      stderr: ``(n,)`` float64 standard errors ``sqrt(sample variance / n_samples)``; ``inf`` with < 2 samples.
      n_evaluations: utility evaluations used (full and empty coalition counted once each; truncated and
        padded slots not counted).
      n_permutations: permutations done (with antithetic sampling both members of a pair count).
      n_samples: independent samples averaged (= n_permutations, or n_permutations / 2 when antithetic).
      removal_step: players removed per step.
      u_full, u_empty: utility of the full and of the empty coalition.
      stop_reason: "n_permutations" (cap reached) or "stopping" (the stopping rule fired).
      history: None, or a dict with "n_permutations" ``(T,)`` int64, "values" ``(T, n)``, "stderr" ``(T, n)``
        (and, with groups, "group_values" / "group_stderr" ``(T, G)``).
      group_values, group_stderr: None, or with ``monte_carlo(..., groups=owner)`` the ``(G,)`` float64 mean
        over samples of each group's mean member marginal (= the mean of its members' ``values`` up to
        rounding) and its exact standard error over the samples (the members share permutations, so their
        errors are correlated and cannot be combined as independent).
    """
    values: np.ndarray
    stderr: np.ndarray
    n_evaluations: int
    n_permutations: int
    n_samples: int
    removal_step: int
    u_full: float
    u_empty: float
    stop_reason: str
    history: dict[str, np.ndarray] | None = field(default=None)
    group_values: np.ndarray | None = field(default=None)
    group_stderr: np.ndarray | None = field(default=None)

    @property
    def n_players(self) -> int:
        return int(self.values.shape[0])
