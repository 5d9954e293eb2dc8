"""Write a selection back exactly as it was read, with an optional sidecar of per-record scores.

The selection's format follows the output's extension, else the input's (:func:`selection_format`;
:mod:`shed_jax.data._sources` serialises it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from shed_jax.data._instructions import InstructionSet
from shed_jax.data._sources import output_format, selection_bytes
from shed_jax.io import atomic_write_many, finite_or_none as _finite_or_none, jsonl_bytes as _jsonl_bytes


def scores_path(path) -> str:
    """Sidecar file of per-record scores for the selection at ``path``: ``<dir>/<stem>.scores.jsonl``
    (``sel.jsonl``, ``sel.jsonl.gz``, ``sel.parquet`` -> ``sel.scores.jsonl``)."""
    p = Path(os.fspath(path))
    if p.suffix.lower() == ".gz":
        p = p.with_suffix("")
    return str(p.with_name(p.stem + ".scores.jsonl"))


_FROM_JSON = (None, "json", "json.gz", "stdin")


def selection_format(path, dataset: InstructionSet) -> str:
    """The format the selection of ``dataset`` is written in at ``path``: ``jsonl``, ``jsonl.gz``, ``parquet``,
    ``csv`` or ``tsv``, from ``path``'s extension when it names one, else from the input's kind (parquet in,
    parquet out; JSON, ``hf:``, ``save_to_disk`` and stdin give JSON Lines)."""
    return output_format(path, dataset.source.kind if dataset.source is not None else None)


def check_selection_writable(path, dataset: InstructionSet, indices=None) -> str:
    """Serialise the records ``indices`` (default: all) in the format chosen for ``path`` and discard them, so
    that a record the format cannot hold is reported before any work starts. Returns the format.

    Raises:
        DataError: naming the record (line or row) and field that cannot be written.
    """
    fmt = selection_format(path, dataset)
    kind = dataset.source.kind if dataset.source is not None else None
    if (kind in _FROM_JSON and fmt in ("jsonl", "jsonl.gz")) or (kind in ("csv", "tsv") and fmt in ("csv", "tsv")):
        return fmt  # records parsed from strict JSON (or CSV strings) always serialise back
    idx = range(len(dataset.records)) if indices is None else [int(i) for i in indices]
    selection_bytes("jsonl" if fmt == "jsonl.gz" else fmt, dataset.records, idx, positions=dataset.line_numbers,
                    source=dataset.source, name=dataset.path)  # (gzip cannot fail: not compressed here)
    return fmt


def write_selection(path, dataset: InstructionSet, indices, *,
                    scores: list[dict] | None = None) -> None:
    """Write the selected records ``dataset.records[i]`` for ``i`` in ``indices``, exactly as read.

    Args:
        path: output file, in the format :func:`selection_format` gives: JSON Lines (one record per line,
            same keys/values/key order as the input), gzipped JSON Lines, parquet (a parquet or ``datasets``
            input: the same schema), CSV or TSV.
        dataset: the InstructionSet the indices refer to (N records).
        indices: ``(B,)`` distinct integers in ``[0, N)`` (list or integer numpy array), written in order.
        scores: optional ``B`` dicts, written in the same order to the sidecar :func:`scores_path` (e.g.
            ``sel.jsonl`` -> ``sel.scores.jsonl``). numpy values become Python numbers; NaN and infinite
            floats are written as ``null``.

    Both files are serialised completely before anything is written; each is replaced atomically.

    Raises:
        ValueError: indices not 1-D integers, out of range or repeated; scores of the wrong length or not
            dicts.
        DataError: a selected record holds a value the output format cannot (see
            :func:`check_selection_writable`).
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
    data = selection_bytes(selection_format(path, dataset), dataset.records, idx.tolist(),
                           positions=dataset.line_numbers, source=dataset.source, name=dataset.path)
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
