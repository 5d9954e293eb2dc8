"""Write a selection back exactly as it was read, with an optional sidecar of per-record scores."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from shed_jax.data._instructions import InstructionSet
from shed_jax.io import atomic_write_many, finite_or_none as _finite_or_none, jsonl_bytes as _jsonl_bytes


def scores_path(path) -> str:
    """Sidecar file of per-record scores for the selection at ``path``: ``<dir>/<stem>.scores.jsonl``."""
    p = Path(os.fspath(path))
    return str(p.with_name(p.stem + ".scores.jsonl"))


def write_selection(path, dataset: InstructionSet, indices, *,
                    scores: list[dict] | None = None) -> None:
    """Write the selected records ``dataset.records[i]`` for ``i`` in ``indices``, exactly as read.

    Args:
        path: output JSON Lines file (one record per line, same keys/values/key order as the input).
        dataset: the InstructionSet the indices refer to (N records).
        indices: ``(B,)`` distinct integers in ``[0, N)`` (list or integer numpy array), written in order.
        scores: optional ``B`` dicts, written in the same order to the sidecar :func:`scores_path` (e.g.
            ``sel.jsonl`` -> ``sel.scores.jsonl``). numpy values become Python numbers; NaN and infinite
            floats are written as ``null``.

    Both files are serialised completely before anything is written; each is replaced atomically.

    Raises:
        ValueError: indices not 1-D integers, out of range or repeated; scores of the wrong length or not
            dicts.
    """
    n = len(dataset.records)
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size == 0:
        idx = idx.astype(np.int64)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    bad = np.flatnonzero((idx < 0) | (idx >= n))
    if bad.size:
        raise ValueError(f"index {int(idx[bad[0]])} (position {int(bad[0])}) is out of range for a data set "
                         f"of {n} records")
    if np.unique(idx).size != idx.size:
        values, counts = np.unique(idx, return_counts=True)
        raise ValueError(f"indices must be distinct; {int(values[counts > 1][0])} is repeated")
    records = dataset.records
    data, _ = _jsonl_bytes(records[i] for i in idx.tolist())
    items = [(os.fspath(path), data)]
    if scores is not None:
        scores = list(scores)
        if len(scores) != idx.size:
            raise ValueError(f"scores has {len(scores)} entries, expected one per selected record "
                             f"({idx.size})")
        for i, entry in enumerate(scores):
            if not isinstance(entry, Mapping):
                raise ValueError(f"scores[{i}] must be a dict, got {type(entry).__name__}")
        score_data, _ = _jsonl_bytes((_finite_or_none(dict(s)) for s in scores), what="scores entry")
        sidecar = scores_path(path)
        if os.path.abspath(sidecar) == os.path.abspath(os.fspath(path)):  # pragma: no cover
            raise ValueError(f"the scores file would overwrite the selection: {sidecar}")
        items.append((sidecar, score_data))
    atomic_write_many(items)
