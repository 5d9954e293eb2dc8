"""The run directory: paths, schema version, lock, stage log with fingerprints, config and error log.

A run directory holds everything one SHED run produces::

    run.json        schema version and the shed_jax version that created the directory
    config.json     every option (RefineConfig) and the values resolved for this run
    stages.json     per stage: fingerprint of its inputs, status, timings; an event list
    clusters.npz  examples.json  values.json  convergence.npz  shapley_ckpt/  selection.json  scores.jsonl
    summary.json  report.html  logs/

Every file is written through :mod:`shed_jax.io` (atomically). A directory written with another schema
version is refused with a clear error instead of being misread. While a command works in a run directory it
holds an OS lock on ``.lock`` (``flock``; the file names the holder's pid and host); a second command on the same
directory refuses at once, and the kernel releases the lock of a process that dies.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import traceback
from pathlib import Path
from typing import Any

from shed_jax.errors import PipelineError, UserError
from shed_jax.io import atomic_write_json

__all__ = ["SCHEMA_VERSION", "RunDir", "StageLog", "default_run_dir", "utc_now"]

logger = logging.getLogger("shed_jax.run")

SCHEMA_VERSION = 2  # 1: run directories written before run.json existed (shed_jax 0.1)


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def default_run_dir(data: str | os.PathLike, *, now: _dt.datetime | None = None) -> Path:
    """``$SHED_HOME/runs/<data stem>-<YYYYmmdd-HHMMSS>`` (``$SHED_HOME`` defaults to the current directory; the
    stem of ``train.jsonl.gz`` is ``train``, of ``hf:OWNER/NAME`` ``NAME``, of ``-`` ``stdin``).

    A numeric suffix is added if that directory already exists.
    """
    from shed_jax.data import source_stem

    base = Path(os.environ.get("SHED_HOME") or Path.cwd())
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    stem = source_stem(os.fspath(data))
    candidate = base / "runs" / f"{stem}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = base / "runs" / f"{stem}-{stamp}-{suffix}"
    return candidate


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"unreadable ({exc})", path=path) from None


class RunDir:
    """One run directory. Cheap to construct; nothing touches the disk until :meth:`create` or a write.

    Args:
      path: the directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_held = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- schema ---------------------------------------------------------------------------------------
    def check_schema(self) -> None:
        """Raise :class:`PipelineError` if the directory was written by another schema version.

        A directory without ``run.json`` is accepted when it holds no shed files (new, or empty).
        """
        if self.path.exists() and not self.path.is_dir():
            raise PipelineError("the run directory is not a directory", path=self.path)
        marker = self.path / "run.json"
        if marker.is_file():
            payload = _read_json(marker)
            version = payload.get("schema_version") if isinstance(payload, dict) else None
            if version != SCHEMA_VERSION:
                newer = isinstance(version, int) and version > SCHEMA_VERSION
                raise PipelineError(
                    f"run directory schema {version} is {'newer' if newer else 'not'} the schema {SCHEMA_VERSION} "
                    f"this shed_jax reads; {'upgrade shed_jax' if newer else 'use a new run directory'}",
                    path=self.path)
        elif (self.path / "config.json").is_file() or (self.path / "stages.json").is_file():
            raise PipelineError(f"run directory written by an older shed_jax (schema 1, this version reads schema "
                                f"{SCHEMA_VERSION}); use a new run directory", path=self.path)

    def create(self) -> None:
        """Create the directory (and ``run.json``) if needed; check the schema of an existing one."""
        self.check_schema()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise PipelineError("the run directory path exists and is not a directory", path=self.path) from None
        except OSError as exc:
            raise PipelineError(f"cannot create the run directory ({exc.strerror})", path=self.path) from None
        if not (self.path / "run.json").is_file():
            from shed_jax import __version__

            atomic_write_json(self.path / "run.json", {"schema_version": SCHEMA_VERSION,
                                                       "created_by": f"shed_jax {__version__}",
                                                       "created_at": utc_now()})

    def require(self, what: str) -> None:
        """Raise :class:`PipelineError` unless the directory exists with a readable schema."""
        if not self.path.is_dir():
            raise PipelineError(f"not a directory ({what} needs a run directory)", path=self.path)
        self.check_schema()

    # -- lock ---------------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Take the run directory's OS lock (``fcntl.flock`` on ``.lock``, which also names the holder's pid and
        host). Raises :class:`PipelineError` when another process holds it. The kernel releases the lock when its
        holder dies, so a killed command never leaves a stale lock, and there is no pid logic to race on."""
        path = self.path / ".lock"
        key = os.path.realpath(path)
        if key in _HELD:
            self._lock_held = False  # held by this process already (nested use): leave it
            return
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                who = (f" (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
                       if holder else "")
                raise PipelineError(f"another shed command{who} is working in this run directory; wait for it or "
                                    "stop it", path=self.path) from None
            try:  # the previous holder unlinks .lock before it lets go: a lock on an unlinked file is no lock
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
            _HELD[key] = fd
            self._lock_key = key
            self._lock_held = True
            return

    def release_lock(self) -> None:
        if self._lock_held:
            fd = _HELD.pop(self._lock_key)
            try:
                (self.path / ".lock").unlink()  # still held: a process waiting on this file sees it replaced
            except FileNotFoundError:
                pass
            os.close(fd)  # releases the lock
            self._lock_held = False

    # -- config ---------------------------------------------------------------------------------------
    def write_config(self, config, resolved: dict) -> None:
        atomic_write_json(self.path / "config.json", {"schema_version": SCHEMA_VERSION, "config": config.to_dict(),
                                                       "resolved": resolved, "written_at": utc_now()})

    def load_config(self):
        """The :class:`shed_jax.config.RefineConfig` stored in ``config.json``."""
        from shed_jax.config import RefineConfig

        path = self.path / "config.json"
        if not path.is_file():
            raise PipelineError("no config.json in this run directory (is it a shed run directory?)", path=path)
        self.check_schema()
        payload = _read_json(path)
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise PipelineError("not a shed config (missing 'config')", path=path)
        return RefineConfig.from_dict(payload["config"])

    def resolved(self) -> dict:
        """The ``resolved`` part of ``config.json`` ({} if absent)."""
        path = self.path / "config.json"
        if not path.is_file():
            return {}
        payload = _read_json(path)
        return payload.get("resolved", {}) if isinstance(payload, dict) else {}

    def stored_data(self) -> str | None:
        """The data path recorded in ``config.json`` (None if absent or unreadable)."""
        path = self.path / "config.json"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return str(payload["config"]["data"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None

    # -- errors ---------------------------------------------------------------------------------------
    def write_error_log(self, exc: BaseException) -> Path | None:
        """Append the traceback of ``exc`` to ``logs/errors.log``; returns its path (None if not writable)."""
        try:
            if not self.path.is_dir():
                return None
            logs = self.path / "logs"
            logs.mkdir(exist_ok=True)
            path = logs / "errors.log"
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"--- {utc_now()} pid {os.getpid()}\n")
                handle.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            return path
        except OSError:
            return None


_HELD: dict[str, int] = {}  # .lock path -> file descriptor, for the locks this process holds


def _lock_holder(fd: int) -> dict | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return holder if isinstance(holder, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # caught between the holder's lock and its write


class StageLog:
    """``RUN_DIR/stages.json``: per stage the fingerprint and status of its last run, plus an event list."""

    def __init__(self, run_dir: RunDir):
        self.path = run_dir.path / "stages.json"
        self.state = {"stages": {}, "events": []}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict) and isinstance(loaded.get("stages"), dict):
                    self.state = {"stages": loaded["stages"], "events": list(loaded.get("events", []))}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("%s is unreadable; every stage will be recomputed", self.path)

    def record(self, stage: str) -> dict:
        return self.state["stages"].get(stage, {})

    def is_done(self, stage: str, fingerprint: str) -> bool:
        rec = self.record(stage)
        return rec.get("status") == "done" and rec.get("fingerprint") == fingerprint

    def _event(self, stage, event, **extra):
        self.state["events"].append({"stage": stage, "event": event, "at": utc_now(), **extra})

    def started(self, stage: str, fingerprint: str, *, event: str = "started"):
        self.state["stages"][stage] = {"fingerprint": fingerprint, "status": "running", "started_at": utc_now()}
        self._event(stage, event, fingerprint=fingerprint)
        self._save()

    def note(self, stage: str, **extra):
        """Add ``extra`` to the stage's record (e.g. a value the stage resolved when it started)."""
        self.state["stages"].setdefault(stage, {}).update(extra)
        self._save()

    def finished(self, stage: str, fingerprint: str, seconds: float, **extra):
        rec = self.state["stages"].setdefault(stage, {"started_at": utc_now()})
        rec.update({"fingerprint": fingerprint, "status": "done", "finished_at": utc_now(),
                    "seconds": round(seconds, 3), **extra})
        self._event(stage, "computed", fingerprint=fingerprint, seconds=round(seconds, 3))
        self._save()

    def skipped(self, stage: str, fingerprint: str):
        self._event(stage, "skipped", fingerprint=fingerprint)
        self._save()

    def discard_all(self):
        """Forget every stage (``--restart`` on a run directory of other data); the event list keeps the history."""
        for stage in list(self.state["stages"]):
            self._event(stage, "discarded")
        self.state["stages"] = {}
        self._save()

    def invalidate(self, stage: str):
        if stage in self.state["stages"]:
            self.state["stages"][stage]["status"] = "stale"
            self._event(stage, "invalidated")
            self._save()

    def _save(self):
        atomic_write_json(self.path, self.state)


def user_error_for_output(path: str | os.PathLike, *, data: str | None = None, valid: str | None = None) -> None:
    """Raise :class:`UserError` when ``path`` or its ``.scores.jsonl`` sidecar cannot be an output file
    (checked before any work starts): a directory, a missing or unwritable directory, or the data or
    validation file itself."""
    from shed_jax.data import scores_path

    out = Path(path)
    for target in (out, Path(scores_path(out))):
        for source, name in ((data, "the input data"), (valid, "the validation file")):
            if source is not None and target.exists() and _same_file(target, source):
                raise UserError(f"the output would overwrite {name}", path=target)
        if target.is_dir():
            raise UserError("is a directory; give a file path for the output"
                            + (" (this is where the scores sidecar goes)" if target != out else ""), path=target)
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError("is not a directory, cannot hold the output", path=out.parent)
    if not out.parent.is_dir():
        raise UserError("output directory does not exist", path=out.parent)
    if not os.access(out.parent, os.W_OK):
        raise UserError("output directory is not writable", path=out.parent)


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
