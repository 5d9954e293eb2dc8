"""shed_jax: SHED (Shapley-based automated dataset refinement) for instruction tuning, in JAX.

The pipeline, one module per stage::

    data -> embed -> cluster (k-means + proxies) -> value (proxies x shapley) -> select

Public modules (imported lazily, so ``import shed_jax`` and ``shed --help`` stay fast)::

    from shed_jax import config, data, embed, cluster, shapley, proxies, select, run, report, lm, demo

``shed_jax.run`` holds the stages and the run directory; ``shed_jax.pipeline`` re-exports its entry points
under the names of shed_jax 0.1.

See README.md for the command line (``shed``).
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

__all__ = [
    "cluster",
    "config",
    "data",
    "demo",
    "embed",
    "errors",
    "io",
    "lm",
    "pipeline",
    "proxies",
    "report",
    "run",
    "select",
    "shapley",
    "sharding",
    "synthetic",
]


def __getattr__(name: str):
    """Import public submodules on first attribute access (PEP 562)."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
