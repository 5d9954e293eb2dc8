"""Content digests of a refine run's outputs, to prove that refactors leave results unchanged.

``digest(run_dir, output)`` hashes what a run decides (clusters, values, selection, the scores sidecar and
the selected records), not how the files are laid out: arrays by their dtype, shape and bytes, values by
their float64 bytes, the output files by their bytes. ``tests/golden/*.json`` hold digests recorded before
the architecture change (issue 8); ``tests/test_golden.py`` recomputes them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def _array_sha(array) -> str:
    array = np.ascontiguousarray(array)
    head = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()


def _file_sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digest(run_dir, output) -> dict:
    run_dir, output = Path(run_dir), Path(output)
    with np.load(run_dir / "clusters.npz", allow_pickle=False) as npz:
        clusters = {k: _array_sha(npz[k]) for k in ("centroids", "labels", "proxy_index")}
    values = json.loads((run_dir / "values.json").read_text(encoding="utf-8"))
    cluster_values = np.asarray(values["cluster_values"], np.float64)
    stderr = np.asarray([np.nan if s is None else s for s in values["stderr"]], np.float64)
    selection = json.loads((run_dir / "selection.json").read_text(encoding="utf-8"))
    sidecar = output.with_name(output.name[: -len(".jsonl")] + ".scores.jsonl")
    return {"clusters": clusters,
            "cluster_values": _array_sha(cluster_values), "stderr": _array_sha(stderr),
            "n_evaluations": int(values["n_evaluations"]),
            "selection": _array_sha(np.asarray(selection["indices"], np.int64)),
            "run_scores": _file_sha(run_dir / "scores.jsonl"),
            "output": _file_sha(output), "sidecar": _file_sha(sidecar)}
