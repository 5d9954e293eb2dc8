"""A command run by several processes (``--distributed``): the same deterministic host loop everywhere, one
writer.

Every process runs the whole command (the collectives of k-means and of the Shapley engine need all of them),
but only process 0 writes the run directory, the outputs and the report. Process ``I > 0`` works in a private
copy of the run directory (a temporary directory, removed at the end) taken before process 0 changes anything,
so that it reads the same finished stages and the same checkpoint as process 0 (``--resume`` included) and makes
the same decisions; in ``RUN_DIR`` it writes nothing but its log, ``RUN_DIR/logs/process-I.log``.

The run directory must be on a file system that every process sees (NFS, a cluster file system, the local disk
of a one-host run): each process checks at the start that its view of ``RUN_DIR`` is process 0's (the names and
sizes of its files) and refuses otherwise.
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from shed_jax.config import RefineConfig
from shed_jax.errors import PipelineError

__all__ = ["ProcessView", "one_writer", "start"]

_SKIP = (".lock", "logs")  # never copied: the lock is process 0's, the logs are each process's own


def start(distributed) -> bool:
    """Connect this process to the others if asked (``distributed=True``: :func:`shed_jax.distributed.initialize`
    with no arguments: JAX detects TPU pods, SLURM, Open MPI or reads its environment variables; a dict: the
    arguments of ``initialize``). Returns True when more than one process takes part."""
    from shed_jax import distributed as _distributed

    if not distributed and not _distributed.is_initialized():
        return False
    if distributed and not _distributed.is_initialized():
        kwargs = dict(distributed) if isinstance(distributed, dict) else {}
        try:
            _distributed.initialize(**kwargs)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
    import jax

    return jax.process_count() > 1


class ProcessView:
    """What one process of a multi-process command uses: its config (process ``I > 0``: run directory and output
    in a private copy), its log and whether it shows progress."""

    def __init__(self, config: RefineConfig, log: Callable[[str], None] | None, progress: bool, *,
                 writer: bool = True, process: int = 0, n_processes: int = 1):
        self.config, self.log, self.progress = config, log, progress
        self.writer, self.process, self.n_processes = writer, process, n_processes


def _digest(run_dir: Path) -> str:
    """Names and sizes of the run directory's files (its lock and logs left out): equal on every process that
    sees the same directory."""
    if not run_dir.is_dir():
        return "absent"
    entries = sorted(f"{p.relative_to(run_dir)}:{p.stat().st_size}" for p in run_dir.rglob("*")
                     if p.is_file() and p.relative_to(run_dir).parts[0] not in _SKIP)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _copy_run_dir(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=lambda d, names: [n for n in names if Path(d) == source and n in _SKIP],
                        dirs_exist_ok=True)


@contextlib.contextmanager
def one_writer(config: RefineConfig, log: Callable[[str], None] | None, progress: bool,
               distributed=False) -> Iterator[ProcessView]:
    """The :class:`ProcessView` of this process for one command on ``config`` (see the module docstring).

    Single-process runs get ``config``, ``log`` and ``progress`` unchanged. With several processes ``config.run_dir``
    is required (a default one would differ between processes), data cannot come from stdin, and every process
    must call this for the same command at the same time.
    """
    if not start(distributed):
        yield ProcessView(config, log, progress)
        return
    import jax

    from shed_jax import distributed as _distributed

    process, n = jax.process_index(), jax.process_count()
    if config.run_dir is None:
        raise PipelineError("a run of several processes needs --run-dir DIR (the same directory in every process, "
                            "on a file system they all see)", field="--run-dir")
    if str(config.data) == "-":
        raise PipelineError("a run of several processes cannot read its data from stdin; give a file",
                            field="DATA")
    run_dir = Path(config.run_dir)
    private = None
    log_file = None
    try:
        _distributed.barrier("start")  # nobody has touched RUN_DIR yet
        _distributed.mark_finished(False)
        mine = _digest(run_dir)
        theirs = _distributed.broadcast_text("rundir-digest", mine)
        if mine != theirs:
            raise PipelineError(f"this is process {process} of {n}, and its view of the run directory differs from "
                                "process 0's: every process must see RUN_DIR on a shared file system", path=run_dir)
        if process == 0:
            view = ProcessView(config, log, progress, process=0, n_processes=n)
        else:
            private = Path(tempfile.mkdtemp(prefix=f"shed-process-{process}-"))
            shadow = private / "run"
            _copy_run_dir(run_dir, shadow)
            output = None if config.output is None else str(private / Path(config.output).name)
            log_path = _distributed.process_log_path(run_dir)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(log_path, "a", encoding="utf-8", buffering=1)

            def process_log(message: str) -> None:
                log_file.write(f"{message}\n")

            process_log(f"process {process} of {n}: run directory {run_dir} (process 0 writes it; this process "
                        f"works in a private copy, {shadow})")
            view = ProcessView(config.replace(run_dir=str(shadow), output=output), process_log, False,
                               writer=False, process=process, n_processes=n)
        _distributed.barrier("copied")  # process 0 may write from here on
        with _native_stdout_to_stderr():  # gloo's "[Gloo] Rank I is connected ..." must not precede --json output
            yield view
        _distributed.barrier("end")  # nobody leaves (and takes the coordinator away) while others still work
        _distributed.mark_finished()
    except BaseException as exc:
        watchdog = _distributed.watchdog()
        if watchdog is not None and _distributed._looks_like_a_lost_peer(exc):
            # a dead peer: its line (and the exit) comes from the watchdog, and nothing may follow it
            if watchdog.yield_to_verdict(watchdog.timeout + 2) is not None:
                raise
        _distributed.report_failure(exc)
        raise
    finally:
        if log_file is not None:
            log_file.close()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 points to stderr meanwhile (native libraries print there; Python's ``sys.stdout`` object is
    untouched, and the command prints its summary after this)."""
    import os
    import sys

    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (embedded interpreter)
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        try:
            sys.stdout.flush()
        except ValueError:
            pass
        os.dup2(saved, 1)
        os.close(saved)
