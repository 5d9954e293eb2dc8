"""``RUN_DIR/logs/commands.log``: one JSON line per ``shed`` command run on a run directory.

Each command that works in a run directory appends, when it ends, one line::

    {"event": "end", "argv": ["shed", "value", "--run-dir", "run/", ...], "started": "2026-...Z",
     "ended": "2026-...Z", "seconds": 12.3, "exit_status": 0, "version": "0.2.0", "pid": 4242, "host": "..."}

and, when the run directory already exists as it starts, a ``"start"`` line (same ``pid`` and ``started``) first,
so that a command killed outright (``kill -9``, a power cut) still leaves its start. The exit status is what the
process exits with: 0, 2 for bad input, 1 for an internal or operating-system error, 130 when interrupted (also
when a second Ctrl-C ends the process at once: :mod:`shed_jax.interrupt` calls :func:`write_pending` before it
exits).

Lines are appended with one ``write`` on a file opened with ``O_APPEND``, so concurrent writers (a refused second
command and the one holding the lock) never interleave within a line. Logging is best effort: a directory that is
not a run directory (no ``run.json``; nothing is created there), or one that cannot be written, is skipped without
a word, and a dry run (which writes nothing) is not logged. In a ``--distributed`` command only process 0 writes
(the end line only: the others never write the run directory).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

__all__ = ["LOG_NAME", "append", "read", "recording", "write_pending"]

LOG_NAME = "commands.log"
_pending: list[dict] = []  # commands in progress in this process (the innermost last)
_lock = threading.Lock()


def _version() -> str:
    from shed_jax import __version__

    return __version__


def _utc(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file()


def _other_process() -> bool:
    """True in process ``I > 0`` of a ``--distributed`` command: only process 0 writes the run directory (the
    others log to ``logs/process-I.log``, :mod:`shed_jax.run.processes`)."""
    if "jax" not in sys.modules:
        return False
    from shed_jax import distributed

    if not distributed.is_initialized():
        return False
    import jax

    return jax.process_index() != 0


def append(run_dir, record: dict) -> Path | None:
    """Append ``record`` as one JSON line to ``RUN_DIR/logs/commands.log`` (one ``O_APPEND`` write); returns the
    path, or None when ``run_dir`` is not a run directory or cannot be written."""
    directory = Path(run_dir)
    if _other_process():
        return None
    try:
        if not _is_run_dir(directory):
            return None
        logs = directory / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / LOG_NAME
        line = (json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return path
    except OSError:
        return None


def read(run_dir) -> list[dict]:
    """The records of ``RUN_DIR/logs/commands.log`` (lines that do not parse are skipped)."""
    path = Path(run_dir) / "logs" / LOG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _status_of(exc: BaseException | None) -> int:
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    exit_code = getattr(exc, "exit_code", None)  # click.ClickException and its subclasses
    return int(exit_code) if isinstance(exit_code, int) else 1


def _finish(entry: dict, status: int) -> None:
    with _lock:
        if entry.get("done"):
            return
        entry["done"] = True
    end = time.time()
    append(entry["run_dir"], {"event": "end", "argv": entry["argv"], "started": _utc(entry["start"]),
                              "ended": _utc(end), "seconds": round(end - entry["start"], 3),
                              "exit_status": int(status), "version": entry["version"], "pid": entry["pid"],
                              "host": entry["host"]})


def write_pending(status: int) -> None:
    """Write the end line of every command still in progress with ``status`` (for an exit that skips the normal
    unwinding, e.g. ``os._exit(130)`` after a second Ctrl-C)."""
    for entry in list(reversed(_pending)):
        _finish(entry, status)


@contextlib.contextmanager
def recording(run_dir, argv: list[str] | None = None):
    """Log the command running inside the block to ``RUN_DIR/logs/commands.log`` (nothing when ``run_dir`` is
    None). The exit status comes from the exception that leaves the block (see the module docstring)."""
    if run_dir is None:
        yield
        return
    start = time.time()
    entry = {"run_dir": str(run_dir), "argv": ["shed", *(sys.argv[1:] if argv is None else argv)], "start": start,
             "version": _version(), "pid": os.getpid(), "host": socket.gethostname()}
    if not any(flag in entry["argv"] for flag in ("--distributed", "--coordinator")):
        # (a --distributed command does not know yet whether it is process 0, the one writer: its end line,
        # which holds the start time too, is written by process 0 only)
        append(run_dir, {"event": "start", "argv": entry["argv"], "started": _utc(start),
                         "version": entry["version"], "pid": entry["pid"], "host": entry["host"]})
    _pending.append(entry)
    try:
        yield
    except BaseException as exc:
        _finish(entry, _status_of(exc))
        raise
    else:
        _finish(entry, 0)
    finally:
        _pending.remove(entry)
