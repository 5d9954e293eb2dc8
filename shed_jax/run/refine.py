"""The commands' library functions: each opens a :class:`~shed_jax.run.stage.Run` (inputs and outputs checked
before anything is written), runs the stages it needs, and returns their results. :func:`refine` composes
embed -> cluster -> value -> select -> report and writes the selected records last, so a failed run leaves
no partial output.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shed_jax.config import RefineConfig
from shed_jax.io import atomic_write_json
from shed_jax.run import cluster, embed, select, value
from shed_jax.run.artifacts import Clusters, Values
from shed_jax.run.processes import one_writer
from shed_jax.run.select import load_for_select, select_from, write_output
from shed_jax.run.stage import Log, Run, StageResult, pipeline

__all__ = ["PIPELINE", "RefineResult", "refine", "run_cluster", "run_embed", "run_select", "run_value", "write_report"]

logger = logging.getLogger("shed_jax.run")

PIPELINE = pipeline(embed.STAGE, cluster.STAGE, value.STAGE, select.STAGE)  # the stages a command's Run computes


@dataclass(frozen=True)
class RefineResult:
    """Outcome of :func:`refine`. ``summary`` is what ``RUN_DIR/summary.json`` holds."""

    run_dir: Path
    output: Path | None
    indices: np.ndarray
    labels: np.ndarray
    cluster_values: np.ndarray
    stderr: np.ndarray
    summary: dict
    report: Path | None = None
    stages: dict = field(default_factory=dict)  # stage -> "computed" | "skipped"


def run_embed(config: RefineConfig, *, progress: bool = True, log: Log | None = None,
              restart: bool = False) -> StageResult:
    """Embed every record of ``config.data`` into ``RUN_DIR/cache`` (skipped when up to date).

    Returns a :class:`StageResult` whose ``embeddings`` is (N, d) float32.
    """
    with Run(config, pipeline=PIPELINE, progress=progress, log=log, restart=restart).open(
            need_valid=False, need_budget=False) as run:
        return run.result("embed")


def run_cluster(config: RefineConfig, *, progress: bool = True, log: Log | None = None,
                restart: bool = False, distributed=False) -> StageResult:
    """Embed (cached) and cluster the candidates; writes ``clusters.npz`` and ``examples.json``.

    Returns a :class:`StageResult` over :class:`~shed_jax.run.artifacts.Clusters`. ``distributed``: as
    :func:`refine`.
    """
    with one_writer(config, log, progress, distributed) as view:
        with Run(view.config, pipeline=PIPELINE, progress=view.progress, log=view.log, restart=restart).open(
                need_valid=False, need_budget=False) as run:
            return run.result("cluster")


def run_value(config: RefineConfig, *, progress: bool = True, log: Log | None = None,
              resume: bool = False, restart: bool = False, distributed=False) -> StageResult:
    """Shapley values of the players; writes ``values.json`` and ``convergence.npz``.

    Runs the embed and cluster stages first when they are not up to date. A valuation in
    ``RUN_DIR/shapley_ckpt`` is never discarded unless ``restart=True``: with ``resume=True`` a partial one with
    the same options continues, and a larger ``n_permutations`` extends a partial or finished one (the result
    equals a fresh run with that count); anything else raises :class:`shed_jax.errors.PipelineError`
    (:func:`shed_jax.run.value.check_checkpoint`). ``distributed``: as :func:`refine`.
    """
    with one_writer(config, log, progress, distributed) as view:
        with Run(view.config, pipeline=PIPELINE, progress=view.progress, log=view.log, resume=resume,
                 restart=restart).open(need_valid=True, need_budget=False, check=("value",)) as run:
            return run.result("value")


def run_select(config: RefineConfig, *, progress: bool = True, log: Log | None = None,
               values_path: str | os.PathLike | None = None, output: str | os.PathLike | None = None
               ) -> StageResult:
    """Select a budget of records from cluster values; writes ``selection.json`` and ``scores.jsonl``.

    Args:
      config: needs ``data``, ``run_dir`` (holding ``clusters.npz``), a budget and a sampler.
      values_path: a values file (``{"cluster_values": [K floats], "stderr": [...]}``) to use instead of
        the run's value stage. Its length must equal the number of clusters in ``clusters.npz``.
      output: if given, the selected records are written there exactly as in the data (with a
        ``.scores.jsonl`` sidecar).
    """
    if values_path is None:
        with Run(config, pipeline=PIPELINE, progress=progress, log=log).open(need_valid=True, need_budget=True,
                                                                         outputs=(output,)) as run:
            result = run.result("select")
            if output is not None:
                write_output(run, output, run.result("cluster").artifact, run.result("value").artifact, result.artifact)
            return result
    run = Run(config, pipeline=PIPELINE, progress=progress, log=log)
    clusters, values = load_for_select(run, output, values_path)
    run.dir.acquire_lock()
    try:
        from shed_jax.run.rundir import StageLog

        run.stages = StageLog(run.dir)
        start = time.perf_counter()
        selection = select_from(run, clusters, values, values_source=str(values_path))
        run.stages.invalidate("select")  # selection.json is no longer the pipeline's own selection
        if output is not None:
            write_output(run, output, clusters, values, selection)
        from shed_jax.run.inputs import sha256_file, _hash

        return StageResult("select", selection, _hash({"values": sha256_file(values_path), "config": config.to_dict()}),
                           False, time.perf_counter() - start)
    finally:
        run.close()


def write_report(run_dir: str | os.PathLike, *, log: Log | None = None, summary: dict | None = None) -> Path:
    """(Re)write ``RUN_DIR/report.html`` with :func:`shed_jax.report.write_report`; returns its path."""
    from shed_jax import report as _report

    return Path(_report.write_report(Path(run_dir), summary=summary))


def refine(config: RefineConfig, *, progress: bool = True, log: Log | None = None, resume: bool = False,
           report: bool = True, restart: bool = False, distributed=False) -> RefineResult:
    """Run the whole SHED pipeline (embed -> cluster -> value -> select -> report) in ``config.run_dir``.

    Every input and output path is read and checked before the first stage starts (a user error raises
    :class:`shed_jax.errors.UserError`). Up-to-date stages are loaded, not recomputed. Writes ``config.json``,
    the stage artifacts, ``summary.json``, ``report.html`` and, last, ``config.output`` (the selected records
    exactly as in the data, plus a ``.scores.jsonl`` sidecar), so a failure never leaves a partial output.

    Args:
      config: the run's options; ``valid`` and exactly one of ``ratio``/``size`` are required.
      progress: show progress bars (stderr).
      log: callable receiving one-line progress messages (default: the ``shed_jax.run`` logger).
      resume: continue an interrupted Shapley valuation from ``RUN_DIR/shapley_ckpt``, or extend a finished one
        to more permutations (as :func:`run_value`).
      restart: discard saved work that does not match this command (a run of other data, a valuation with
        other options) instead of refusing.
      report: write ``RUN_DIR/report.html`` (a failure to write it is logged, never raised).
      distributed: run as one of several processes (``jax.distributed``; :mod:`shed_jax.run.processes`):
        ``True`` connects them with :func:`shed_jax.distributed.initialize` and no arguments (TPU pods, SLURM,
        Open MPI, JAX's environment variables) unless already connected, a dict passes its arguments
        (``coordinator``, ``num_processes``, ``process_id``). Every process runs the same call; only process 0
        writes ``RUN_DIR`` (the others write ``RUN_DIR/logs/process-I.log``).
    """
    with one_writer(config, log, progress, distributed) as view:
        result = _refine(view.config, progress=view.progress, log=view.log, resume=resume, report=report,
                         restart=restart)
        if not view.writer:  # the same selection; the files are process 0's
            run_dir = Path(config.run_dir)
            result = RefineResult(run_dir, None if config.output is None else Path(config.output), result.indices,
                                  result.labels, result.cluster_values, result.stderr, result.summary,
                                  None if result.report is None else run_dir / Path(result.report).name,
                                  result.stages)
        return result


def _refine(config: RefineConfig, *, progress: bool, log: Log | None, resume: bool, report: bool, restart: bool
            ) -> RefineResult:
    wall = time.perf_counter()
    with Run(config, pipeline=PIPELINE, progress=progress, log=log, resume=resume, restart=restart).open(
            need_valid=True, need_budget=True, outputs=(config.output,), check=("value",)) as run:
        run.log(f"run directory: {run.run_dir}")
        _log_plan(run)
        embedded = None
        if not run.is_up_to_date("cluster", Clusters.FILENAME):
            embedded = run.result("embed")
        clusters, values, selection = run.result("cluster"), run.result("value"), run.result("select")
        stages = {"embed": "skipped" if embedded is None or embedded.skipped else "computed",
                  **{r.stage: "skipped" if r.skipped else "computed" for r in (clusters, values, selection)}}
        summary = _summary(run, clusters, values, selection, stages)
        summary["seconds_total"] = round(time.perf_counter() - wall, 3)
        report_path = None
        if report:
            try:
                report_path = write_report(run.run_dir, log=run.log, summary=summary)
            except Exception as exc:  # the selection is done; a broken plot must not lose it
                run.log(f"report: failed ({type(exc).__name__}: {exc}); the selection is unaffected")
                logger.debug("report failure", exc_info=True)
        output = None
        if config.output is not None:
            write_output(run, config.output, clusters.artifact, values.artifact, selection.artifact)
            output = Path(config.output)
            run.log(f"wrote {selection.budget} records to {output}")
        summary["report"] = str(report_path) if report_path is not None else None
        atomic_write_json(run.run_dir / "summary.json", summary)
        return RefineResult(run.run_dir, output, selection.indices, clusters.labels, values.cluster_values,
                            values.stderr, summary, report_path, stages)


def _log_plan(run: Run) -> None:
    """Log what each stage will do and its estimated time (:mod:`shed_jax.run.estimate`; the value stage logs its
    own time when it starts, from the real utility). ``SHED_ESTIMATE=0`` turns it off."""
    from shed_jax.run import estimate as _estimate

    if not _estimate.estimate_enabled():
        return
    plan = _estimate.plan_run(run.config, run.inputs, calibrate_value=False)
    for line in plan.lines()[:-1]:
        run.log(f"plan: {line}")


def _summary(run: Run, clusters: StageResult, values: StageResult, selection: StageResult, stages: dict) -> dict:
    cfg = run.config
    n = len(run.inputs.dataset)
    return {"data": str(cfg.data), "valid": str(cfg.valid), "output": cfg.output, "run_dir": str(run.run_dir),
            "n_examples": n, "n_candidates": run.inputs.n_candidates,
            "n_duplicates": n - run.inputs.n_candidates if cfg.duplicates == "drop" else 0,
            "n_clusters": clusters.n_clusters, "sampler": selection.sampler, "budget": selection.budget,
            "ratio": cfg.ratio, "size": cfg.size, "seed": cfg.seed,
            "cluster": clusters.summary(), "value": values.summary(), "select": selection.summary(),
            "stages": stages}

