"""Argument checks shared by the pipeline and the CLI: budget and number of clusters against the data size."""
from __future__ import annotations

import operator
from typing import Any

from shed_jax.data._json import _short
from shed_jax.errors import DataError


def _as_count(value: Any, name: str, path: Any) -> int:
    if isinstance(value, bool):
        raise DataError(f"must be an integer, got bool {value!r}", path=path, field=name)
    try:
        return operator.index(value)
    except TypeError:
        raise DataError(f"must be an integer, got {type(value).__name__} {_short(value, 40)}", path=path,
                        field=name) from None


def _counts(n_examples, count, field: str, path) -> tuple[int, int]:
    """``(N, count)`` as ints, with ``N >= 1`` (a data set with candidates)."""
    n = _as_count(n_examples, "n_examples", path)
    c = _as_count(count, field, path)
    if n < 1:
        raise DataError(f"the data set has no candidate examples (n_examples={n})", path=path,
                        field="n_examples")
    return n, c


def check_budget(n_examples: int, budget: int, *, path=None) -> int:
    """Check that ``budget`` examples can be selected from ``n_examples``; return ``budget`` as ``int``.

    Raises:
        DataError: non-integers, ``n_examples < 1``, ``budget < 1`` or ``budget > n_examples`` (the
            message names ``path`` when given).
    """
    n, b = _counts(n_examples, budget, "budget", path)
    if b < 1:
        raise DataError(f"must be a positive number of examples, got {b}", path=path, field="budget")
    if b > n:
        raise DataError(f"budget {b} is larger than the data ({n} candidate examples)", path=path,
                        field="budget")
    return b


def check_clusters(n_examples: int, n_clusters: int, *, path=None) -> int:
    """Check that ``n_clusters`` clusters (K) can be made from ``n_examples`` (N); return K as ``int``.

    Raises:
        DataError: non-integers, ``N < 1``, ``K < 1`` or ``K > N``.
    """
    n, k = _counts(n_examples, n_clusters, "n_clusters", path)
    if k < 1:
        raise DataError(f"must be a positive number of clusters, got {k}", path=path, field="n_clusters")
    if k > n:
        raise DataError(f"K={k} clusters is more than the {n} examples (K must be <= N)", path=path,
                        field="n_clusters")
    return k
