"""Embedding across processes: in a ``--distributed`` run each process embeds its share of the distinct texts,
and the shares meet by a gather, so every process ends with the same embeddings (:func:`shed_jax.embed.embed_texts`).

The share is fixed by index: process ``p`` of ``P`` embeds distinct texts ``p, p + P, p + 2P, ...`` (strided, so
each share holds texts of every length; :func:`share`). The float32 rows go to every process with
``multihost_utils.process_allgather`` (a collective over the processes' devices: no shared file system assumed);
float32 is carried exactly, so the result is the one process's embeddings of the same texts.

The embedding cache (``SHED_CACHE``) may be shared or per host. Whether to embed at all is decided together
(:func:`everyone`): if every process finds the cache file, none embeds; otherwise each process contributes its
share, from its own cache file when it has one, else by encoding it. A process never waits on a collective its
peers skip.

Nothing here runs in a single-process run: :func:`processes` is None unless :mod:`shed_jax.distributed` connected
several processes (it does not import JAX otherwise).
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

__all__ = ["everyone", "gather_shares", "processes", "share"]


def processes() -> tuple[int, int] | None:
    """``(process index, process count)`` in a run of several connected processes, else None."""
    distributed = sys.modules.get("shed_jax.distributed")
    if distributed is None or not distributed.is_initialized():
        return None
    import jax

    count = jax.process_count()
    return (jax.process_index(), count) if count > 1 else None


def share(n_texts: int, process: int, n_processes: int) -> np.ndarray:
    """Indices (into the distinct texts) that ``process`` embeds: every ``n_processes``-th from ``process``.

    >>> share(7, 1, 3).tolist()
    [1, 4]
    """
    return np.arange(int(process), int(n_texts), int(n_processes), dtype=np.int64)


def _allgather(array: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array))


def everyone(flag: bool) -> bool:
    """True when ``flag`` is True in every process (a collective: every process must call it)."""
    return bool(np.all(_allgather(np.asarray([int(bool(flag))], np.int32))))


def gather_shares(n_texts: int, split: tuple[int, int], rows_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``(n_texts, d)`` float32 embeddings of all distinct texts, in every process.

    Args:
      n_texts: distinct texts.
      split: ``(process, n_processes)`` from :func:`processes`.
      rows_of: ``indices -> (len(indices), d)`` float32 rows of this process's share (called only when the share is
        not empty: a process with nothing to embed loads no model).
    """
    process, n_processes = split
    mine = share(n_texts, process, n_processes)
    rows = np.asarray(rows_of(mine), np.float32) if mine.size else None
    width = int(_allgather(np.asarray([rows.shape[1] if rows is not None else 0], np.int32)).max())
    per_process = -(-n_texts // n_processes)
    padded = np.zeros((per_process, width), np.float32)
    if rows is not None:
        padded[: rows.shape[0]] = rows
    gathered = _allgather(padded)                                   # (P, per_process, d): row k of p is text p + kP
    return np.ascontiguousarray(gathered.swapaxes(0, 1).reshape(-1, width)[:n_texts])
