"""The command line's plumbing: logging to stderr, the --json/-q/-v options, and how errors end a command.

User errors (:class:`shed_jax.errors.UserError`) end with one line and exit status 2; any other exception is a
bug: its traceback goes to ``RUN_DIR/logs/errors.log`` (or a temporary file) and one line on stderr points to
it (exit status 1); an operating-system failure (disk full, permissions) is one line with exit status 1; Ctrl-C
exits with status 130 and says how to resume.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

import click

from shed_jax.errors import UserError

__all__ = ["InternalError", "OneLineGroup", "call", "Opts"]


class _UsageError(click.ClickException):
    """A problem with the user's input: one line on stderr, exit status 2."""

    exit_code = 2


class OneLineGroup(click.Group):
    """A command group whose usage errors (unknown option, bad value for a typed option, unknown command)
    are one line, ``Error: <click's message> (see `shed refine --help`)``, with exit status 2, like every other
    bad input; click's default prints the usage text around it."""

    @staticmethod
    def _one_line(exc: click.UsageError) -> _UsageError:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        return _UsageError(" ".join(exc.format_message().split()) + where)

    def make_context(self, info_name, args, *rest, **kwargs):
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, *rest, **kwargs)
            ctx.meta["shed.argv"] = argv  # the command line, for RUN_DIR/logs/commands.log
            return ctx
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise self._one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a subcommand's arguments (parsed here) or an unknown command
            raise self._one_line(exc) from None


RESTART_HELP = ("Discard saved work in RUN_DIR that does not match this command (a run of other data, a "
                "valuation with other options or more permutations) instead of refusing; stages that match are "
                "still reused.")


def restart_option(function):
    """``--restart``, declared once for every command that works in a run directory."""
    return click.option("--restart", is_flag=True, help=RESTART_HELP)(function)


DISTRIBUTED_HELP = ("Run as one of several processes (jax.distributed: one per host, or per GPU): every process runs "
                    "this same command; only process 0 writes RUN_DIR and the outputs, process I writes "
                    "RUN_DIR/logs/process-I.log. With no --coordinator JAX detects TPU pods, SLURM and Open MPI, or "
                    "reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. A process that stops makes "
                    "the others exit (status 3) with one line naming it within $SHED_HEARTBEAT_TIMEOUT seconds "
                    "(default 30); rerun every process with --resume.")


def distributed_options(function):
    """``--distributed``, ``--coordinator``, ``--num-processes``, ``--process-id``, declared once for the commands
    that run the pipeline's collectives (cluster, value, refine)."""
    function = click.option("--process-id", type=click.IntRange(min=0), default=None,
                            help="This process's index, 0 .. N-1 (with --coordinator).")(function)
    function = click.option("--num-processes", type=click.IntRange(min=1), default=None,
                            help="How many processes take part (with --coordinator).")(function)
    function = click.option("--coordinator", default=None, metavar="HOST:PORT",
                            help="Address of process 0's coordinator, the same in every process; implies "
                                 "--distributed.")(function)
    return click.option("--distributed", is_flag=True, help=DISTRIBUTED_HELP)(function)


def distributed_arguments(params: dict):
    """Pops the four options from a command's ``params``: False (one process) or the arguments of
    :func:`shed_jax.distributed.initialize` (a dict; empty when JAX finds the cluster itself)."""
    flag, coordinator = params.pop("distributed"), params.pop("coordinator")
    num_processes, process_id = params.pop("num_processes"), params.pop("process_id")
    if coordinator is None and (num_processes is not None or process_id is not None):
        raise _UsageError("--num-processes and --process-id go with --coordinator HOST:PORT")
    if coordinator is not None:
        from shed_jax.distributed import parse_coordinator

        try:
            parse_coordinator(coordinator)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        if num_processes is None or process_id is None:
            raise _UsageError("--coordinator needs --num-processes N and --process-id I")
        if process_id >= num_processes:
            raise _UsageError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        return {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    return {} if flag else False


def connect(distributed) -> tuple[int, int]:
    """Connect this process to the others before any other JAX call (``distributed`` from
    :func:`distributed_arguments`); returns ``(process index, process count)``, ``(0, 1)`` when not distributed."""
    if distributed is False:
        return 0, 1
    from shed_jax.run.processes import start

    start(distributed if distributed else True)
    import jax

    return jax.process_index(), jax.process_count()


def emit_other_process(opts, command: str, run_dir: str, process: int, n_processes: int) -> None:
    """The summary of process ``I > 0``: process 0 wrote the outputs."""
    opts.emit({"command": command, "run_dir": run_dir, "process": process, "n_processes": n_processes,
               "writer": False},
              [f"process {process} of {n_processes}: done; process 0 wrote {run_dir} "
               f"(this process's log: {run_dir}/logs/process-{process}.log)"])


def check_resume_restart(resume: bool, restart: bool) -> None:
    if resume and restart:
        raise _UsageError("give --resume (continue or extend the valuation) or --restart (discard it), not both")


class InternalError(click.ClickException):
    """A bug: one line on stderr pointing to the traceback, exit status 1."""

    exit_code = 1


class _ClickHandler(logging.Handler):
    """Logging handler writing through click to the *current* stderr (works under CliRunner)."""

    def emit(self, record):
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(verbosity: int) -> None:
    """-q: warnings only; default: info; -v: debug, on the ``shed_jax`` logger, for this command only."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger("shed_jax")
    saved = (root.level, root.propagate)
    handler = _ClickHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else "%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False

    def restore():
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(restore)


class _Opts:
    """Options common to every command (verbosity, --json)."""

    def __init__(self, quiet: bool, verbose: int, as_json: bool):
        self.verbosity = -1 if quiet else int(verbose)
        self.as_json = as_json
        _setup_logging(self.verbosity)

    @property
    def progress(self) -> bool:
        return self.verbosity >= 0

    def log(self, message: str) -> None:
        if self.verbosity >= 0:
            click.echo(message, err=True)

    def emit(self, summary: dict, lines: list[str]) -> None:
        """The command's result: JSON (with --json) or human-readable lines, on stdout."""
        if self.as_json:
            click.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=_json_default))
        else:
            for line in lines:
                click.echo(line)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_traceback(exc: BaseException, run_dir: str | None) -> str:
    """The traceback of ``exc`` in ``RUN_DIR/logs/errors.log`` (or a temporary file); returns the path."""
    if run_dir:
        from shed_jax.run.rundir import RunDir

        path = RunDir(run_dir).write_error_log(exc)
        if path is not None:
            return str(path)
    fd, path = tempfile.mkstemp(prefix="shed-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path


def _argv() -> list[str] | None:
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get("shed.argv")


def _call(opts: _Opts, function, *, resume_hint: str | None = None, run_dir: str | None = None,
          log_run_dir: str | None = None):
    """Run ``function()``; user errors -> exit 2, bugs -> exit 1 with the traceback logged, Ctrl-C -> 130.

    The command is appended to ``RUN_DIR/logs/commands.log`` (:mod:`shed_jax.command_log`) for ``run_dir``
    (or ``log_run_dir``, for a command that reads a run directory without writing its outputs there)."""
    from shed_jax import command_log

    with command_log.recording(log_run_dir or run_dir, _argv()):
        return _call_inner(opts, function, resume_hint=resume_hint, run_dir=run_dir)


def _call_inner(opts: _Opts, function, *, resume_hint: str | None, run_dir: str | None):
    from shed_jax import interrupt

    try:
        with interrupt.handling(resume_hint):  # Ctrl-C/SIGTERM: stop after the step in flight; twice: at once
            return function()
    except UserError as exc:
        if opts.verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        raise _UsageError(str(exc) or type(exc).__name__) from None
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        click.echo("\ninterrupted" + (f"; resume with: {resume_hint}" if resume_hint else ""), err=True)
        sys.exit(130)
    except FileNotFoundError as exc:
        raise _UsageError(f"{exc.filename}: file not found" if exc.filename else str(exc)) from None
    except OSError as exc:  # disk full, permissions, ...: not the user's input, not a bug either
        if opts.verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        what = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        kept = "; finished stages, checkpoints and earlier outputs are kept" if run_dir else ""
        hint = f"; once that is fixed, resume with: {resume_hint}" if resume_hint else ""
        raise click.ClickException(" ".join(f"{what}{where}{kept}{hint}".split())) from None
    except Exception as exc:  # a bug
        where = _write_traceback(exc, run_dir)
        if opts.verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise InternalError(f"internal error ({message}); the traceback is in {where}. Please report it.") from None


Opts = _Opts
call = _call
