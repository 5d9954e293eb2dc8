"""What every stage shares: the :class:`Run` a command works in, and the :class:`StageResult` it returns.

A stage is a function ``stage(run) -> StageResult`` in its own module (:mod:`~shed_jax.run.embed`,
:mod:`~shed_jax.run.cluster`, :mod:`~shed_jax.run.value`, :mod:`~shed_jax.run.select`). It loads its artifact
when the stage log says it is up to date for the current fingerprint, and computes and saves it otherwise;
upstream stages are reached through ``run.result(name)``, which runs each stage at most once per command.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from shed_jax.config import RefineConfig
from shed_jax.errors import PipelineError
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

    def __init__(self, config: RefineConfig, *, progress: bool = True, log: Log | None = None, resume: bool = False,
                 restart: bool = False):
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
        self._results: dict[str, StageResult] = {}

    @property
    def run_dir(self):
        return self.dir.path

    def open(self, *, need_valid: bool, need_budget: bool, outputs: tuple = (), valuation: bool = False) -> "Run":
        """Check every input and output path (nothing is written before that), then create and lock the run
        directory and write ``config.json``. With ``valuation`` (a command that runs the value stage) a valuation
        in ``RUN_DIR/shapley_ckpt`` that the command would lose is refused first
        (:func:`shed_jax.run.value.check_checkpoint`)."""
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
            if valuation and not self.is_up_to_date("value", "values.json"):
                from shed_jax.run import value

                value.check_checkpoint(self)
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
            from shed_jax.run import cluster, embed, select, value

            runner = {"embed": embed.run_stage, "cluster": cluster.run_stage, "value": value.run_stage,
                      "select": select.run_stage}[stage]
            self._results[stage] = runner(self)
        return self._results[stage]

    def is_up_to_date(self, stage: str, *files: str) -> bool:
        fp = self.inputs.fingerprints[stage]
        return self.stages.is_done(stage, fp) and all((self.run_dir / f).is_file() for f in files)
