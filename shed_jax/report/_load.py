"""Everything a report shows, loaded from a run directory through its typed artifacts
(:mod:`shed_jax.run.artifacts`); a missing or malformed artifact becomes a note, never an exception."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np

from shed_jax.run.artifacts import Clusters, Convergence, Examples, GroundTruth, Selection, Values
from shed_jax.run.rundir import RunDir

__all__ = ["ReportData", "load_run", "stale_stages"]


@dataclass
class ReportData:
    """Everything the report shows, as loaded from the run directory (None where missing)."""

    run_dir: Path
    notes: dict[str, list[str]] = field(default_factory=dict)
    config: dict | None = None            # config.json "config" (or the whole file if flat)
    resolved: dict = field(default_factory=dict)
    summary: dict | None = None
    values: np.ndarray | None = None      # (K,) float64
    stderr: np.ndarray | None = None      # (K,) float64, NaN where unknown
    values_meta: dict = field(default_factory=dict)
    labels: np.ndarray | None = None      # (N,) int, -1 = not a candidate
    proxy_index: np.ndarray | None = None  # (K,) int
    convergence: dict | None = None       # n_permutations (T,), values (T, K), stderr (T, K)
    selected: np.ndarray | None = None    # (N,) bool, or None
    selection: dict | None = None
    examples: list[list[dict]] | None = None  # per cluster: {"index", "prompt", "response"} (proxy first)
    categories: list[str] | None = None   # (N,) category of each record, or None
    junk: np.ndarray | None = None        # (N,) bool, ground truth of generated demo data
    members: Any = None                   # MemberValues (proxies per cluster > 1), or None

    def note(self, section: str, message: str) -> None:
        self.notes.setdefault(section, []).append(message)

    @property
    def n_clusters(self) -> int | None:
        if self.values is not None:
            return int(self.values.shape[0])
        if self.proxy_index is not None:
            return int(self.proxy_index.shape[0])
        return None

    def cluster_sizes(self) -> np.ndarray | None:
        """(K,) int64 number of candidate records per cluster."""
        if self.labels is None or self.n_clusters is None:
            return None
        members = self.labels[self.labels >= 0]
        return np.bincount(members, minlength=self.n_clusters)[: self.n_clusters].astype(np.int64)

    def selected_per_cluster(self) -> np.ndarray | None:
        """(K,) int64 number of selected records per cluster."""
        if self.labels is None or self.selected is None or self.n_clusters is None:
            return None
        chosen = self.labels[self.selected & (self.labels >= 0)]
        return np.bincount(chosen, minlength=self.n_clusters)[: self.n_clusters].astype(np.int64)




def _artifact(run: ReportData, section: str, loader):
    """``loader()``, or None with a note in ``section`` when the artifact is missing or malformed."""
    try:
        return loader()
    except FileNotFoundError as exc:
        run.note(section, f"{Path(exc.filename or '?').name} not found in the run directory.")
    except Exception as exc:  # a report must not fail on one bad file
        run.note(section, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    return None


_STAGE_ORDER = ("embed", "cluster", "value", "select")


def stale_stages(run_dir: Path) -> dict[str, str]:
    """``{stage: upstream}`` for each stage whose last result was finished before an upstream stage was computed
    again (e.g. ``shed cluster`` with other options after ``shed value``): its outputs describe upstream results
    that no longer exist. Read from ``stages.json`` (its UTC ``finished_at`` times); {} when it cannot be read."""
    try:
        stages = json.loads((Path(run_dir) / "stages.json").read_text(encoding="utf-8"))["stages"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return {}
    stale: dict[str, str] = {}
    for i, stage in enumerate(_STAGE_ORDER):
        record = stages.get(stage) or {}
        if record.get("status") != "done":  # running, or not the pipeline's own output (select --values): no claim
            continue
        done = record.get("finished_at")
        for upstream in _STAGE_ORDER[:i]:
            later = (stages.get(upstream) or {}).get("finished_at")
            if isinstance(done, str) and isinstance(later, str) and later > done:
                stale[stage] = upstream
                break
    return stale


_RERUN = {"value": "`shed value`, then `shed select`", "select": "`shed select`"}


def load_run(run_dir: Path, *, summary: dict | None = None) -> ReportData:
    """Read every artifact of ``run_dir`` that exists (``summary``: the run summary, else ``summary.json``).
    Outputs of a stage that is stale (:func:`stale_stages`) are not loaded; a note in ``stale`` says why."""
    run = ReportData(run_dir)
    stale = stale_stages(run_dir)
    for stage, upstream in stale.items():
        if stage in _RERUN:
            what = "values.json" if stage == "value" else "selection.json and scores.jsonl"
            run.note("stale", f"{what} were computed before the {upstream} stage was run again, so they describe "
                              f"{'clusters' if upstream != 'value' else 'values'} that no longer exist and are not "
                              f"shown; rerun {_RERUN[stage]} to bring this report up to date.")
    directory = RunDir(run_dir)
    config = _artifact(run, "config", directory.load_config)
    if config is not None:
        run.config = config.to_dict()
        run.resolved = directory.resolved()
    if summary is None and (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            run.note("summary", f"summary.json could not be read ({exc}).")
    run.summary = summary if isinstance(summary, dict) else None
    if stale and run.summary is not None:  # the summary of the command that wrote those outputs
        run.summary = None
        run.note("summary", "summary.json describes outputs that are out of date (see above); not shown.")

    values = None if "value" in stale else _artifact(run, "values", lambda: Values.load(directory))
    if values is not None:
        run.values, run.stderr = values.cluster_values, values.stderr
        run.members = values.members
        run.values_meta = {k: v for k, v in values.to_json().items()
                           if k not in ("cluster_values", "stderr", "proxy_index", "members")}
    clusters = _artifact(run, "clusters", lambda: Clusters.load(directory))
    if clusters is not None:
        run.labels = clusters.labels.astype(np.int64)
        run.proxy_index = clusters.proxy_index.astype(np.int64)
        if run.values is not None and run.values.shape[0] != clusters.n_clusters:
            run.note("clusters", f"clusters.npz has {clusters.n_clusters} clusters but values.json "
                                 f"{run.values.shape[0]} values; cluster sizes and examples omitted.")
            run.labels = run.proxy_index = None

    selection = None if "select" in stale else _artifact(run, "selection", lambda: Selection.load(directory))
    if selection is not None:
        run.selection = {"sampler": selection.sampler, "budget": selection.budget, "beta": selection.beta}
        if run.labels is not None:
            n_records = run.labels.shape[0]
            if selection.indices.size and (selection.indices.min() < 0 or selection.indices.max() >= n_records):
                run.note("selection", "selection.json indices are out of range; selection not shown.")
            else:
                run.selected = np.zeros(n_records, dtype=bool)
                run.selected[selection.indices] = True

    convergence = None if "value" in stale else _artifact(run, "convergence", lambda: Convergence.load(directory))
    if convergence is not None:
        if run.values is not None and convergence.values.shape[1] != run.values.shape[0]:
            run.note("convergence", "convergence.npz arrays have inconsistent shapes; not plotted.")
        else:
            run.convergence = {"n_permutations": convergence.n_permutations.astype(np.float64),
                               "values": convergence.values.astype(np.float64),
                               "stderr": convergence.stderr.astype(np.float64)}

    examples = _artifact(run, "data", lambda: Examples.load(directory))
    if examples is not None and run.labels is not None:
        categories = examples.record_categories()
        if len(examples.members) != (run.n_clusters or 0) or (categories is not None
                                                               and len(categories) != run.labels.shape[0]):
            run.note("data", "examples.json does not match clusters.npz; example records are not shown.")
        else:
            run.examples, run.categories = examples.members, categories
    if (run_dir / GroundTruth.FILENAME).is_file():
        truth = _artifact(run, "data", lambda: GroundTruth.load(directory))
        if truth is not None and run.labels is not None and truth.junk.shape[0] == run.labels.shape[0]:
            run.junk = truth.junk
    return run
