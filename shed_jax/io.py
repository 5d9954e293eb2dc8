"""The one atomic writer of the project, and the JSON conventions of its files.

Every file shed_jax writes (run-directory artifacts, checkpoints' metadata, the embedding cache, the
selected records) goes through :func:`atomic_write_many`: the bytes are serialised completely first,
written to a temporary file in the target's directory, flushed and fsync-ed, then moved into place with
:func:`os.replace`. Readers see the old file or the complete new one, never a part; on any error the
temporary files are removed and existing targets are left as they were. A process killed between writing a
temporary file and moving it into place leaves it behind (``.NAME.HOST.PID.XXXXXXXX.tmp``); the next write of
the same target on the same host removes it once that process is gone.

JSON is strict (no NaN/Infinity: :func:`finite_or_none` turns them into ``null`` where a value may be
missing), UTF-8 with non-ASCII characters kept, key order kept.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np

from shed_jax._faults import fault_point
from shed_jax.errors import UserError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_many", "atomic_write_npy",
           "atomic_write_npz", "atomic_write_text", "dumps", "finite_or_none", "jsonl_bytes", "write_jsonl"]




def _new_file_mode(path: str) -> int:
    """Permission bits for a written file: the existing target's, else 0o666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    umask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for status_line in f:
                if status_line.startswith("Umask:"):
                    umask = int(status_line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _temp_prefix(path: str, pid: int | None = None) -> str:
    """Temporary files of ``path`` are ``.NAME.HOST.PID.XXXXXXXX.tmp``: the writer can be told from its name."""
    return f".{os.path.basename(path)}.{_HOST}.{os.getpid() if pid is None else pid}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(path: str, directory: str) -> None:
    """Remove temporary files of ``path`` left by a writer on this host that no longer runs (a killed process);
    those of live processes (or of other hosts) are left alone."""
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.{_HOST}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            _remove_quietly(os.path.join(directory, name))


def _write_temp(path: str, data: bytes) -> str:
    """Write ``data`` to a new temporary file next to ``path`` (flushed + fsync-ed); return its name."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError("the output directory does not exist", path=path)
    _remove_stale_temps(path, directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_many(items: Sequence[tuple[str, bytes]]) -> None:
    """Write every (path, bytes) through temporary files; replace the targets only once all are written.

    If a later ``os.replace`` fails after an earlier one succeeded, the earlier target is already in
    place (rename of several files cannot be made atomic together); every temporary file is removed.
    """
    temps: list[str] = []
    try:
        for path, data in items:
            temps.append(_write_temp(path, data))
        fault_point("write", items[0][0] if items else None)  # testing hook (shed_jax._faults)
        for (path, _), tmp in zip(items, temps):
            os.replace(tmp, path)
            fault_point("replace", path)
    except BaseException:
        for tmp in temps:
            _remove_quietly(tmp)
        raise
    for directory in {os.path.dirname(os.path.abspath(p)) for p, _ in items}:
        _fsync_directory(directory)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory + fsync + ``os.replace``.

    Readers see either the old file or the complete new one. On error nothing is left behind (the
    temporary file is removed and an existing ``path`` is unchanged).

    Raises:
        UserError: the directory of ``path`` does not exist.
        OSError: writing failed (disk full, permissions, ...).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    atomic_write_many([(os.fspath(path), bytes(data))])


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars and arrays (``np.float32(0.5)`` -> ``0.5``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON (no NaN/Infinity), non-ASCII kept as is; lone surrogates fall back to \\u escapes."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False, default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, indent=indent, allow_nan=False, default=_json_default)
    return text


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as JSON (``indent=2``, UTF-8, key order kept, trailing newline) atomically.

    numpy scalars/arrays are converted to Python numbers/lists.

    Raises:
        ValueError: ``obj`` holds NaN or infinity (not valid JSON); TypeError: not serialisable.
    """
    atomic_write_many([(os.fspath(path), (dumps(obj, indent=2) + "\n").encode("utf-8"))])


def jsonl_bytes(records: Iterable[Any], what: str = "record") -> tuple[bytes, int]:
    lines = []
    for i, record in enumerate(records):
        try:
            lines.append(dumps(record))
        except ValueError as e:
            raise ValueError(f"{what} {i}: {e} (NaN and infinity are not valid JSON)") from None
        except TypeError as e:
            raise TypeError(f"{what} {i}: {e}") from None
    return "".join(line + "\n" for line in lines).encode("utf-8"), len(lines)


def write_jsonl(path, records: Iterable[dict]) -> None:
    """Write ``records`` as JSON Lines (one per line, ``ensure_ascii=False``, key order kept) atomically.

    The whole iterable is serialised before anything touches the disk, so an exception while iterating
    or serialising leaves no file.
    """
    data, _ = jsonl_bytes(records)
    atomic_write_many([(os.fspath(path), data)])


def atomic_write_npy(path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` (no pickles) to ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def npz_bytes(**arrays) -> bytes:
    """The bytes of an uncompressed ``.npz`` holding ``arrays`` (no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def atomic_write_npz(path, **arrays) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` to ``path`` atomically."""
    atomic_write_bytes(path, npz_bytes(**arrays))


def finite_or_none(value: Any) -> Any:
    """Replace NaN/infinite floats (also inside lists and dicts) with None; numpy -> Python."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
