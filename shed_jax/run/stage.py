"""What every stage shares: the :class:`Run` a command works in, and the :class:`StageResult` it returns.

A stage is a function ``stage(run) -> StageResult`` in its own module (:mod:`~shed_jax.run.embed`,
:mod:`~shed_jax.run.cluster`, :mod:`~shed_jax.run.value`, :mod:`~shed_jax.run.select`). It loads its artifact
when the stage log says it is up to date for the current fingerprint, and computes and saves it otherwise;
upstream stages are reached through ``run.result(name)``, which runs each stage at most once per command.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from shed_jax.config import RefineConfig
from shed_jax.run.inputs import RunInputs
from shed_jax.run.rundir import RunDir, StageLog, default_run_dir, user_error_for_output

__all__ = ["Log", "Run", "STDIN_COPY", "StageResult"]

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


class Run:
    """One command working in one run directory: its config, inputs, stage log and stage results.

    Use as a context manager after :meth:`open`: the run directory lock is released on exit.
    """

    def __init__(self, config: RefineConfig, *, progress: bool = True, log: Log | None = None, resume: bool = False):
        if config.run_dir is None:
            config = config.replace(run_dir=str(default_run_dir(config.data)))
        self.config = config
        self.dir = RunDir(config.run_dir)
        self.inputs = RunInputs(config)
        self.progress = bool(progress)
        self.log = log or _default_log
        self.resume = bool(resume)
        self.stages: StageLog | None = None
        self._results: dict[str, StageResult] = {}

    @property
    def run_dir(self):
        return self.dir.path

    def open(self, *, need_valid: bool, need_budget: bool, outputs: tuple = ()) -> "Run":
        """Check every input and output path (nothing is written before that), then create and lock the run
        directory and write ``config.json``."""
        self.dir.check_schema()
        self.inputs.preflight(need_valid=need_valid, need_budget=need_budget)
        for output in outputs:
            if output is not None:
                user_error_for_output(output, data=self.config.data, valid=self.config.valid)
                self.inputs.check_output(output)
        self.dir.create()
        self.dir.acquire_lock()
        try:
            self.stages = StageLog(self.dir)
            if self.inputs.from_stdin:
                self._keep_stdin_copy()
            self.dir.write_config(self.config, self.inputs.resolved(self.run_dir))
        except BaseException:
            self.close()
            raise
        return self

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
            from shed_jax.run import cluster, embed, select, value

            runner = {"embed": embed.run_stage, "cluster": cluster.run_stage, "value": value.run_stage,
                      "select": select.run_stage}[stage]
            self._results[stage] = runner(self)
        return self._results[stage]

    def is_up_to_date(self, stage: str, *files: str) -> bool:
        fp = self.inputs.fingerprints[stage]
        return self.stages.is_done(stage, fp) and all((self.run_dir / f).is_file() for f in files)
