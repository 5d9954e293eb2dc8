"""Select stage: a budget of records from the cluster values (QOCS, QWCS or random), the per-record scores
(``scores.jsonl``) and the selected records exactly as they were in the data file (plus a sidecar).

:func:`select_from` is the one place a selection is made, for the pipeline's own values and for a values
file given to ``shed select --values``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shed_jax import data as _data
from shed_jax.errors import DataError, PipelineError
from shed_jax.io import finite_or_none, write_jsonl
from shed_jax.run.artifacts import Clusters, Selection, Values
from shed_jax.run.stage import Computed, Run, Stage, Started, StageResult

__all__ = ["SCORES_FILE", "STAGE", "Scores", "choose", "score_rows", "select_from", "select_indices",
           "write_output"]

SCORES_FILE = "scores.jsonl"


def select_indices(labels: np.ndarray, cluster_values: np.ndarray, budget: int, *, sampler: str = "qocs",
                   beta: float = 1.0, seed: int = 0) -> np.ndarray:
    """Selected record indices, (budget,) int64, distinct, never a record with label -1.

    Args:
      labels: (N,) int cluster of each record, -1 for non-candidates.
      cluster_values: (K,) float value of each cluster.
      budget: number of records to select (<= number of candidates).
      sampler: "qocs", "qwcs" or "random" (uniform over the candidates).
    """
    from shed_jax import select as _select

    labels = np.asarray(labels)
    cluster_values = np.asarray(cluster_values, dtype=np.float64)
    n_clusters = int(cluster_values.shape[0])
    if sampler == "qocs":
        return np.asarray(_select.qocs(labels, cluster_values, budget, seed=seed, n_clusters=n_clusters), np.int64)
    if sampler == "qwcs":
        return np.asarray(_select.qwcs(labels, cluster_values, budget, beta=beta, seed=seed, n_clusters=n_clusters),
                          np.int64)
    if sampler == "random":
        return np.asarray(_select.random(labels.shape[0], budget, seed=seed, candidates=labels >= 0), np.int64)
    raise PipelineError(f"unknown sampler {sampler!r}", field="--sampler")


def score_rows(dataset, clusters: Clusters, cluster_values: np.ndarray, stderr: np.ndarray,
               selected: Sequence[int]) -> list[dict]:
    """One dict per input record: index, cluster, is_proxy, value, stderr, selected (+ duplicate_of).

    ``value``/``stderr`` are the record's cluster's; dropped duplicates have cluster -1, value None and
    ``duplicate_of`` (index of the earlier identical record).
    """
    labels = np.asarray(clusters.labels)
    is_proxy = np.zeros(labels.shape[0], dtype=bool)
    is_proxy[np.asarray(clusters.proxy_index, dtype=np.int64)] = True
    chosen = np.zeros(labels.shape[0], dtype=bool)
    chosen[np.asarray(selected, dtype=np.int64)] = True
    duplicate_of = np.asarray(dataset.duplicate_of, dtype=np.int64)
    rows = []
    for i in range(labels.shape[0]):  # one dict per record for the JSONL file; not a numeric hot path
        k = int(labels[i])
        row = {"index": i, "cluster": k, "is_proxy": bool(is_proxy[i]),
               "value": float(cluster_values[k]) if k >= 0 else None,
               "stderr": finite_or_none(float(stderr[k])) if k >= 0 else None,
               "selected": bool(chosen[i])}
        if k < 0 and duplicate_of[i] >= 0:
            row["duplicate_of"] = int(duplicate_of[i])
        rows.append(row)
    return rows


@dataclass(frozen=True, eq=False)
class Scores:
    """The per-record scores of a selection (:func:`score_rows`), saved as ``scores.jsonl`` (with ``name``:
    ``scores-NAME.jsonl``)."""

    rows: list
    name: str | None = None

    @property
    def filename(self) -> str:
        return SCORES_FILE if self.name is None else f"scores-{self.name}.jsonl"

    def save(self, run_dir) -> None:
        write_jsonl(getattr(run_dir, "path", run_dir) / self.filename, self.rows)


@dataclass(frozen=True, eq=False)
class NamedSelection:
    """A selection with other settings than the run's own, saved as ``selection-NAME.json``."""

    selection: Selection
    name: str

    def save(self, run_dir) -> None:
        from shed_jax.io import atomic_write_json

        atomic_write_json(getattr(run_dir, "path", run_dir) / f"selection-{self.name}.json", self.selection.to_json())


def choose(run: Run, clusters: Clusters, values: Values, *, values_source: str | None = None,
           name: str | None = None) -> tuple[Selection, tuple]:
    """Choose the budget with the run's sampler: the :class:`Selection` and what to save for it (the selection
    and its :class:`Scores`; with ``name`` under ``selection-NAME.json``/``scores-NAME.jsonl``)."""
    cfg = run.config
    n_labelled = int((clusters.labels >= 0).sum())
    budget = run.inputs.budget(n_labelled, path=str(run.run_dir / Clusters.FILENAME))
    indices = select_indices(clusters.labels, values.cluster_values, budget, sampler=cfg.sampler, beta=cfg.beta,
                             seed=cfg.seed)
    run.log(f"select: {budget:,} of {n_labelled:,} candidate records with {cfg.sampler}")
    selection = Selection(indices, cfg.sampler, budget, float(cfg.beta), cfg.seed, cfg.ratio, cfg.size, values_source,
                          n_labelled)
    scores = Scores(score_rows(run.inputs.dataset, clusters, values.cluster_values, values.stderr, indices), name)
    return selection, (selection if name is None else NamedSelection(selection, name), scores)


def select_from(run: Run, clusters: Clusters, values: Values, *, values_source: str | None = None,
                name: str | None = None) -> Selection:
    """Choose the budget with the run's sampler and write ``selection.json`` and ``scores.jsonl`` (with ``name``:
    ``selection-NAME.json`` and ``scores-NAME.jsonl``, leaving the run's own selection as it is)."""
    selection, outputs = choose(run, clusters, values, values_source=values_source, name=name)
    for output in outputs:
        output.save(run.dir)
    return selection


# ------------------------------------------------------------------------------ selections with other settings
def settings(config, values_source: str | None) -> dict:
    """What makes a selection: sampler, budget (ratio or size), beta (qwcs), seed and the values it read."""
    return {"sampler": config.sampler, "ratio": config.ratio, "size": config.size,
            "beta": float(config.beta) if config.sampler == "qwcs" else None, "seed": config.seed,
            "values": values_source}


def stored_settings(run_dir) -> dict | None:
    """:func:`settings` of the run directory's own ``selection.json`` (None when there is none, or it is
    unreadable)."""
    try:
        stored = Selection.load(run_dir)
    except (FileNotFoundError, DataError, ValueError, TypeError):
        return None
    return {"sampler": stored.sampler, "ratio": stored.ratio, "size": stored.size,
            "beta": float(stored.beta) if stored.sampler == "qwcs" else None, "seed": stored.seed,
            "values": stored.values}


def differences(wanted: dict, stored: dict) -> list[str]:
    """``["sampler random (the run's: qocs)", ...]``: the settings in which ``wanted`` differs from ``stored``."""
    out = []
    for key in ("sampler", "ratio", "size", "beta", "seed", "values"):
        if wanted.get(key) != stored.get(key) and not (key == "beta" and None in (wanted.get(key), stored.get(key))):
            theirs = stored.get(key) if stored.get(key) is not None else "its own values.json" if key == "values" \
                else "none"
            mine = wanted.get(key) if wanted.get(key) is not None else "the run's values.json" if key == "values" \
                else "none"
            out.append(f"{key} {mine} (the run's: {theirs})")
    return out


def selection_name(wanted: dict, stored: dict) -> str:
    """A file-name tag for a selection with other settings than the run's: ``random-0.1``, ``qwcs-500-beta2``,
    ``qocs-0.1-seed3``, ``qocs-0.1-values-other`` (letters, digits, '.', '-' only)."""
    import re

    budget = f"{wanted['ratio']:g}" if wanted.get("ratio") is not None else f"n{wanted['size']}"
    parts = [wanted["sampler"], budget]
    if wanted.get("beta") is not None:
        parts.append(f"beta{wanted['beta']:g}")
    if wanted.get("seed") != stored.get("seed"):
        parts.append(f"seed{wanted['seed']}")
    if wanted.get("values") != stored.get("values") and wanted.get("values"):
        from pathlib import Path

        parts.append("values-" + Path(wanted["values"]).stem)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", "-".join(str(p) for p in parts))


def _load(run: Run) -> tuple[Selection, str]:
    selection = Selection.load(run.dir)
    return selection, f"{selection.budget} records, {selection.sampler}"


def _prepare(run: Run) -> Started:
    return Started((run.result("cluster").artifact, run.result("value").artifact))


def _compute(run: Run, upstream: tuple[Clusters, Values]) -> Computed:
    selection, outputs = choose(run, *upstream)
    return Computed(selection, outputs=outputs, record={"budget": selection.budget})


STAGE = Stage("select", load=_load, prepare=_prepare, compute=_compute, files=(Selection.FILENAME, SCORES_FILE))


def check_values_match(values: Values, clusters: Clusters, path) -> None:
    """Raise :class:`DataError` when a values file does not belong to this clustering."""
    if values.n_clusters != clusters.n_clusters:
        raise DataError(f"{values.n_clusters} cluster values but {Clusters.FILENAME} has {clusters.n_clusters} "
                        "clusters", path=path, field="cluster_values")
    if values.proxy_index is not None and not np.array_equal(values.proxy_index, clusters.proxy_index):
        raise DataError(f"these values belong to another clustering (proxy_index differs from {Clusters.FILENAME})",
                        path=path, field="proxy_index")


def write_output(run: Run, output, clusters: Clusters, values: Values, selection: Selection) -> None:
    """The selected records exactly as in the data, with the ``.scores.jsonl`` sidecar; in the sampler's order,
    or in input order with ``keep_order``."""
    indices = np.sort(selection.indices) if run.config.keep_order else selection.indices
    scores = score_rows(run.inputs.dataset, clusters, values.cluster_values, values.stderr, selection.indices)
    _data.write_selection(output, run.inputs.dataset, indices, scores=[scores[int(i)] for i in indices])


def load_for_select(run: Run, output, values_path) -> tuple[Clusters, Values]:
    """What ``shed select`` on an existing run directory reads, checked before anything is written: the run's
    clusters (their records must be the data's) and the values at ``values_path`` (they must match the clusters);
    ``output`` (or None) is refused when it would overwrite an input."""
    from shed_jax.run.rundir import user_error_for_output

    config = run.config
    run.dir.require("shed select")
    clusters_path = run.run_dir / Clusters.FILENAME
    if not clusters_path.is_file():
        raise PipelineError("not found; run `shed cluster` into this run directory first", path=clusters_path)
    run.inputs.preflight(need_valid=False, need_budget=True)
    if output is not None:
        user_error_for_output(output, data=config.data, valid=config.valid)
        run.inputs.check_output(output)
    clusters = Clusters.load(run.dir)
    if clusters.labels.shape[0] != len(run.inputs.dataset):
        raise PipelineError(f"clustered {clusters.labels.shape[0]} records but {config.data} has "
                            f"{len(run.inputs.dataset)}", path=clusters_path)
    values = Values.from_file(values_path)
    check_values_match(values, clusters, values_path)
    return clusters, values


def run_named_select(config, *, values_path, output=None, name: str, values_source: str | None = None,
                     progress: bool = True, log=None) -> StageResult:
    """``shed select`` with other settings than the run's own selection: writes ``selection-NAME.json``,
    ``scores-NAME.jsonl`` (and ``output``) and leaves ``config.json``, the stage log, ``selection.json``,
    ``scores.jsonl`` and ``report.html`` as they are. ``values_path``: the values to select from (the run's
    ``values.json`` or a file given with ``--values``; ``values_source`` is recorded, None for the run's own)."""
    run = Run(config, progress=progress, log=log)
    clusters, values = load_for_select(run, output, values_path)
    run.dir.acquire_lock()
    try:
        start = time.perf_counter()
        selection = select_from(run, clusters, values, values_source=values_source, name=name)
        if output is not None:
            write_output(run, output, clusters, values, selection)
        return StageResult("select", selection, name, False, time.perf_counter() - start)
    finally:
        run.close()
