"""A self-contained HTML report of a SHED run directory.

``write_report(run_dir)`` reads the run's typed artifacts (:mod:`shed_jax.run.artifacts`: clusters, values,
convergence, selection, examples and, for generated demo data, the ground truth) and writes one HTML file with
the plots inlined as base64 PNG images:

* the distribution of the cluster values (sorted, with +-2 standard-error bars),
* the convergence of the Monte Carlo estimates over permutations (trajectories of the top and bottom
  clusters, and the mean standard error against the number of permutations),
* cluster size against value, with the clusters the selection drew from highlighted,
* the composition of the selection against the input by ``category`` (when the records have one),
* tables of the top and bottom clusters with example records (HTML-escaped).

Every piece except the run directory itself is optional: a missing or unreadable artifact gives a note in the
report where its section would be, never an exception. The report never reads the data file: the cluster
stage saves the examples it shows. When the run has a ground truth (``shed demo``), the report also shows the
fraction of known junk per cluster.

matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` only (no pyplot, no global
backend switch), so writing a report never changes the caller's plotting state.
"""
from __future__ import annotations

import os
from pathlib import Path

from shed_jax.io import atomic_write_text
from shed_jax.report._html import _render
from shed_jax.report._load import load_run

__all__ = ["refresh", "require_run_dir", "write_report"]


RUN_FILES = ("config.json", "run.json", "clusters.npz", "values.json")


def require_run_dir(run_dir: str | os.PathLike, command: str = "shed report") -> None:
    """Raise :class:`~shed_jax.errors.PipelineError` (exit 2) unless ``run_dir`` holds a run: one of
    ``config.json``, ``run.json``, ``clusters.npz`` or ``values.json``."""
    from shed_jax.errors import PipelineError

    if not any((Path(run_dir) / name).is_file() for name in RUN_FILES):
        raise PipelineError(f"not a shed run directory (none of {', '.join(RUN_FILES)}); {command} needs the "
                            "directory a `shed refine`, `shed cluster` or `shed value` wrote", path=run_dir)


def write_report(run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 summary: dict | None = None) -> Path:
    """Write a self-contained HTML report of the SHED run in ``run_dir``.

    Args:
        run_dir: a run directory. Only the directory must exist; each missing or unreadable artifact is
            reported as a note in the HTML in place of its section.
        out: where to write the report; default ``run_dir / "report.html"``.
        summary: the run summary to show (default: ``run_dir/summary.json`` when present).

    Returns:
        The path written (atomically: a reader never sees a half-written report).

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
        PipelineError: ``run_dir`` holds no run (see :func:`require_run_dir`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    require_run_dir(run_dir)
    from shed_jax.report._plots import font_context

    with font_context():  # CJK-capable fallback fonts in the plots, when installed
        document = _render(load_run(run_dir, summary=summary))
    out_path = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(out_path, document)
    return out_path


def refresh(run_dir: str | os.PathLike, log=None) -> Path | None:
    """Rewrite ``RUN_DIR/report.html`` if there is one (after a command changed what it shows: the clusters, the
    values or the run's selection), so that it never describes outputs that no longer exist. A failure is logged,
    never raised (the command's own work is done); then the stale report is removed rather than left standing."""
    path = Path(run_dir) / "report.html"
    if not path.is_file():
        return None
    try:
        written = write_report(run_dir)
    except Exception as exc:  # the command's outputs are written; a report must not undo that
        try:
            path.unlink()
        except OSError:
            pass
        if log is not None:
            log(f"report: could not be rewritten ({type(exc).__name__}: {exc}); the stale report.html was removed "
                f"(`shed report {run_dir}` writes it)")
        return None
    if log is not None:
        log(f"report: rewritten ({written})")
    return written
