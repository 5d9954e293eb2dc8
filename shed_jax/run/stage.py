"""What every stage shares: the :class:`Run` a command works in, the :class:`Stage` description, the one
skeleton :func:`run_stage` that runs any stage, and the :class:`StageResult` it returns.

A stage is a :class:`Stage` in its own module (:mod:`~shed_jax.run.embed`, :mod:`~shed_jax.run.cluster`,
:mod:`~shed_jax.run.value`, :mod:`~shed_jax.run.select`): how to ``load`` its artifact, how to ``prepare``
(upstream results, checks that may refuse) and ``compute`` it, and the files it writes. :func:`run_stage` does
the rest the same way for all four: the fingerprint, the up-to-date check, then either *skip* (load, log,
record the skip) or *start* (record it), compute, *save* (the one place a stage's outputs are written) and
*finish* (log the time, record it). Upstream stages are reached through ``run.result(name)``, which runs each
stage at most once per command; the stages a :class:`Run` knows are given to it (``pipeline``), so this module
imports none of them.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from shed_jax.config import RefineConfig
from shed_jax.errors import PipelineError
from shed_jax.progress import format_duration
from shed_jax.run.inputs import RunInputs
from shed_jax.run.rundir import RunDir, StageLog, default_run_dir, user_error_for_output

__all__ = ["Computed", "Log", "Run", "STDIN_COPY", "Stage", "StageResult", "Started", "pipeline", "run_stage"]

STDIN_COPY = "stdin.jsonl"

logger = logging.getLogger("shed_jax.run")

Log = Callable[[str], None]


def _default_log(message: str) -> None:
    logger.info(message)


@dataclass(frozen=True, eq=False)
class StageResult:
    """A stage's artifact and how it was obtained. Attribute access falls through to the artifact
    (``result.labels`` is ``result.artifact.labels``)."""

    stage: str
    artifact: Any
    fingerprint: str
    skipped: bool
    seconds: float

    def __getattr__(self, name):
        if name.startswith("__") or name == "artifact":
            raise AttributeError(name)
        return getattr(self.artifact, name)

    def summary(self) -> dict:
        base = self.artifact.summary() if hasattr(self.artifact, "summary") else {}
        return {**base, "fingerprint": self.fingerprint, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class Started:
    """What a stage's ``prepare`` hands to :func:`run_stage` once the stage may start.

    Attributes:
      state: passed to the stage's ``compute`` (e.g. the upstream artifacts, the value plan).
      event: the stage-log event (``started``; the value stage also says ``resumed``/``extended``).
      notes: fields added to the stage's record when it starts (what it resolved).
      since: ``time.perf_counter()`` from which the stage's seconds count (default: when it starts).
    """

    state: Any = None
    event: str = "started"
    notes: dict = field(default_factory=dict)
    since: float | None = None


@dataclass(frozen=True)
class Computed:
    """What a stage's ``compute`` returns to :func:`run_stage`.

    Attributes:
      artifact: the stage's result (what ``run.result(name)`` gives later stages).
      outputs: objects with ``save(run_dir: RunDir)``, written by :func:`run_stage` in this order (the artifact
        the up-to-date check looks for last).
      record: fields of the stage's record in ``stages.json`` when it finishes.
      done: appended to the ``NAME: done in TIME`` line.
    """

    artifact: Any
    outputs: tuple = ()
    record: dict = field(default_factory=dict)
    done: str = ""


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as :func:`run_stage` runs it.

    Attributes:
      name: the stage's name (``embed``, ``cluster``, ``value``, ``select``): its fingerprint and record.
      load: ``run -> (artifact, what)`` for an up-to-date stage; ``what`` is shown as
        ``NAME: up to date (WHAT); loaded FILE``.
      compute: ``(run, started.state) -> Computed``; writes nothing in the run directory but what it returns
        in ``Computed.outputs`` (the value stage's checkpoint aside).
      prepare: ``run -> Started``, before the stage is recorded as started: upstream results, checks that may
        refuse (nothing recorded then). Default: start at once.
      files: the artifacts (in the run directory) that must exist for the stage to be up to date.
      source: how an up-to-date artifact is obtained, for the log line (default ``loaded FILES[0]``).
      check: ``run -> Any``, called by :meth:`Run.open` (before anything is written) when the command will run
        this stage and it is not up to date: refuses work the command would lose.
      timed_load: an up-to-date load counts its seconds (the embed stage reads its cache).
    """

    name: str
    load: Callable[["Run"], tuple[Any, str]]
    compute: Callable[["Run", Any], Computed]
    prepare: Callable[["Run"], Started] | None = None
    files: tuple[str, ...] = ()
    source: str | None = None
    check: Callable[["Run"], Any] | None = None
    timed_load: bool = False


def pipeline(*stages: Stage) -> dict[str, Stage]:
    """``{name: stage}`` of ``stages``: what a :class:`Run` can compute."""
    return {stage.name: stage for stage in stages}


def run_stage(run: "Run", stage: Stage) -> StageResult:
    """Run ``stage`` in ``run``: load it when the stage log says it is up to date for its fingerprint (and its
    files exist), else prepare, record the start, compute, save its outputs and record the finish."""
    name = stage.name
    fingerprint = run.inputs.fingerprints[name]
    if run.is_up_to_date(name, *stage.files):
        start = time.perf_counter()
        artifact, what = stage.load(run)
        source = stage.source or f"loaded {stage.files[0]}"
        run.log(f"{name}: up to date ({what}); {source}")
        run.stages.skipped(name, fingerprint)
        seconds = time.perf_counter() - start if stage.timed_load else 0.0
        return StageResult(name, artifact, fingerprint, True, seconds)

    started = stage.prepare(run) if stage.prepare is not None else Started()
    run.stages.started(name, fingerprint, event=started.event)
    if started.notes:
        run.stages.note(name, **started.notes)
    start = time.perf_counter() if started.since is None else started.since
    computed = stage.compute(run, started.state)
    for output in computed.outputs:  # the one place a stage writes its artifacts
        output.save(run.dir)
    seconds = time.perf_counter() - start
    run.log(f"{name}: done in {format_duration(seconds)}{computed.done}")
    run.stages.finished(name, fingerprint, seconds, **computed.record)
    return StageResult(name, computed.artifact, fingerprint, False, seconds)


class Run:
    """One command working in one run directory: its config, inputs, stage log and stage results.

    Use as a context manager after :meth:`open`: the run directory lock is released on exit. ``pipeline``
    (:func:`pipeline`) holds the stages :meth:`result` can compute.
    """

    def __init__(self, config: RefineConfig, *, progress: bool = True, log: Log | None = None, resume: bool = False,
                 restart: bool = False, pipeline: Mapping[str, Stage] | None = None):
        if config.run_dir is None:
            config = config.replace(run_dir=str(default_run_dir(config.data)))
        self.config = config
        self.dir = RunDir(config.run_dir)
        self.inputs = RunInputs(config)
        self.progress = bool(progress)
        self.log = log or _default_log
        self.resume = bool(resume)
        self.restart = bool(restart)
        self.stages: StageLog | None = None
        self.pipeline: dict[str, Stage] = dict(pipeline or {})
        self._results: dict[str, StageResult] = {}

    @property
    def run_dir(self):
        return self.dir.path

    def open(self, *, need_valid: bool, need_budget: bool, outputs: tuple = (), check: Sequence[str] = ()) -> "Run":
        """Check every input and output path (nothing is written before that), then create and lock the run
        directory and write ``config.json``. ``check``: stages the command will run whose :attr:`Stage.check`
        may refuse work it would lose (the value stage: a valuation in ``RUN_DIR/shapley_ckpt``,
        :func:`shed_jax.run.value.check_checkpoint`); each is asked first unless it is up to date."""
        self.dir.check_schema()
        self.inputs.preflight(need_valid=need_valid, need_budget=need_budget)
        for output in outputs:
            if output is not None:
                user_error_for_output(output, data=self.config.data, valid=self.config.valid)
                self.inputs.check_output(output)
        self.dir.create()
        self.dir.acquire_lock()
        try:
            self._check_same_data()
            self.stages = StageLog(self.dir)
            if self._other_data:
                self.stages.discard_all()
                shutil.rmtree(self.run_dir / "shapley_ckpt", ignore_errors=True)
            for name in check:
                stage = self.pipeline[name]
                if stage.check is not None and not self.is_up_to_date(name, *stage.files):
                    stage.check(self)
            if self.inputs.from_stdin:
                self._keep_stdin_copy()
            self.dir.write_config(self.config, self.inputs.resolved(self.run_dir))
        except BaseException:
            self.close()
            raise
        return self

    _other_data = False

    def _check_same_data(self) -> None:
        """Refuse (exit 2, one line naming what differs) a run directory that holds a run of other data, unless
        ``--restart`` (which then discards its stages and its valuation)."""
        stored = self.dir.resolved()
        before = stored.get("data_sha256")
        if not before or before == self.inputs.data_sha256:
            return
        old = self.dir.stored_data() or "another data set"
        what = (f"holds a run of other data ({old}: {stored.get('n_examples', '?')} records, sha256 {before[:12]}; "
                f"now {self.config.data}: {len(self.inputs.dataset)} records, sha256 {self.inputs.data_sha256[:12]})")
        if not self.restart:
            raise PipelineError(f"{what}; use another --run-dir, or --restart to discard that run", path=self.run_dir)
        self.log(f"--restart: the run directory {what}; discarding its stages")
        self._other_data = True

    def _keep_stdin_copy(self) -> None:
        """Data read from stdin is kept as ``RUN_DIR/stdin.jsonl`` (the bytes read), and the config points there,
        so that ``--resume`` and later commands read the same records."""
        from shed_jax.io import atomic_write_bytes

        copy = self.run_dir / STDIN_COPY
        atomic_write_bytes(copy, self.inputs.dataset.source.raw)
        self.log(f"data read from stdin; kept as {copy}")
        self.config = self.config.replace(data=str(copy))
        self.inputs.config = self.config  # the records already read stay; only the recorded path changes

    def close(self) -> None:
        self.dir.release_lock()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def result(self, stage: str) -> StageResult:
        """The stage's result, computing it (and what it needs) at most once per command."""
        if stage not in self._results:
            if stage not in self.pipeline:
                raise KeyError(f"this run has no stage {stage!r} (its pipeline: {', '.join(self.pipeline) or 'none'})")
            self._results[stage] = run_stage(self, self.pipeline[stage])
        return self._results[stage]

    def is_up_to_date(self, stage: str, *files: str) -> bool:
        fp = self.inputs.fingerprints[stage]
        return self.stages.is_done(stage, fp) and all((self.run_dir / f).is_file() for f in files)
