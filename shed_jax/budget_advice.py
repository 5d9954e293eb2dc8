"""What to say when the value stage's estimate does not fit ``--value-time-budget`` (issue 21): say so before the
stage starts, with settings that would fit and their estimated times.

The proxy proposes its own settings when it can (``utility.cheaper_options(n_evaluations, n_permutations,
budget_seconds) -> [(options, seconds)]``, e.g. the LM proxy's fewer permutations, ``steps``, ``max_length``,
``max_validation``); the embedding proxy is always offered to a proxy that is not it.
"""
from __future__ import annotations

from shed_jax.progress import format_duration

__all__ = ["over_budget_lines"]


def over_budget_lines(utility, seconds: float, n_evaluations: int, n_permutations: int, config) -> list[str]:
    """Lines for the log when ``seconds`` (the stage's estimate) exceeds ``config.value_time_budget``; [] otherwise."""
    budget = float(config.value_time_budget)
    if seconds <= budget:
        return []
    lowest = "" if config.proxies_per_cluster not in ("auto", 1, "1") else " even with one proxy per cluster"
    lines = [f"value: the estimate, {format_duration(seconds)}, does not fit --value-time-budget "
             f"{format_duration(budget)}{lowest}; settings that would fit (stop with Ctrl-C and rerun with one):"]
    propose = getattr(utility, "cheaper_options", None)
    options = propose(n_evaluations, n_permutations, budget) if callable(propose) else []
    for flags, estimate in options:
        lines.append(f"value:   {flags}   (about {format_duration(estimate)})")
    if getattr(config, "proxy", None) != "embedding":
        lines.append("value:   --proxy embedding   (a scorer in sentence-embedding space: minutes on a CPU; not "
                     "timed here)")
    if len(lines) == 1:
        lines.append("value:   fewer --permutations or a larger --removal-step (this proxy does not estimate "
                     "other settings)")
    lines.append("value: or raise --value-time-budget to accept the estimate")
    return lines
