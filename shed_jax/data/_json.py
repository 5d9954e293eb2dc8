"""Low-level JSON / JSON Lines parsing for :mod:`shed_jax.data`: bytes -> (records, line numbers).

The container (one JSON array, or JSON Lines) is detected from the content; every problem becomes a one-line
:class:`~shed_jax.errors.DataError` naming the line: invalid JSON (with its column), non-UTF-8 bytes,
NaN/Infinity, duplicate keys inside one object, records that are not objects. Parsing uses :mod:`json` only.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any

from shed_jax.errors import DataError

CONTAINERS = ("auto", "jsonl", "json")

_JSON_WS = re.compile(r"[ \t\n\r]*")


class _DuplicateKey(Exception):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


class _BadConstant(Exception):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _object_pairs(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _reject_constant(name):
    raise _BadConstant(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_object_pairs, parse_constant=_reject_constant)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device"}


def check_input_file(path: str, *, what: str = "file") -> None:
    """Raise a :class:`DataError` unless ``path`` is a regular file (after symbolic links), *before* it is opened:
    opening a FIFO would block, a directory or a symbolic-link loop gives an obscure ``OSError``.

    ``what`` names the file in the messages ("file", "validation file").
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{what} not found", path=path) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError("symbolic link loop (too many levels of symbolic links)", path=path) from None
        if e.errno == errno.ENOTDIR:
            raise DataError(f"{what} not found (a parent is not a directory)", path=path) from None
        raise DataError(f"cannot read file: {e.strerror or e}", path=path) from None
    if stat.S_ISDIR(mode):
        raise DataError(f"is a directory, not a {'data file' if what == 'file' else what}", path=path)
    if not stat.S_ISREG(mode):
        raise DataError(f"is not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}); "
                        f"give a data file", path=path)


def _read_bytes(path: str) -> bytes:
    """The bytes of a file; DataError on a missing file, a directory, a FIFO or an unreadable file."""
    check_input_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a JSON or JSON Lines file", path=path) from None
    except PermissionError:
        raise DataError("permission denied", path=path) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", path=path) from None


def _read_text(path: str) -> str:
    """Read a file as UTF-8 (a leading BOM is dropped); DataError on missing file or bad bytes."""
    return _decode_text(_read_bytes(path), path)


def _decode_text(data: bytes, path: str) -> str:
    """``data`` as UTF-8 text (a leading BOM is dropped); DataError naming the line of a bad byte."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError("file is UTF-16 (byte order mark found); save it as UTF-8", path=path, line=1)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"invalid UTF-8 byte {data[e.start:e.start + 1]!r} at column {column} (byte "
                        f"offset {e.start}); the file must be UTF-8", path=path, line=line) from None


def _decode_error(exc: BaseException, path: str, line: int, *, column: int | None = None) -> DataError:
    """Turn an exception raised while decoding one JSON value into a DataError at ``line``."""
    if isinstance(exc, _DuplicateKey):
        return DataError(f"duplicate key {exc.key!r} in a JSON object", path=path, line=line,
                         field=str(exc.key))
    if isinstance(exc, _BadConstant):
        return DataError(f"invalid JSON: {exc.name} is not a JSON value (use null or a number)",
                         path=path, line=line)
    if isinstance(exc, RecursionError):
        return DataError("invalid JSON: values nested too deeply", path=path, line=line)
    if isinstance(exc, json.JSONDecodeError):
        col = exc.colno if column is None else column
        return DataError(f"invalid JSON: {exc.msg} (column {col})", path=path, line=line)
    raise exc  # pragma: no cover - only the exceptions above are expected


def _parse_jsonl(text: str, path: str, *, declared: bool) -> tuple[list, list[int]]:
    """Parse JSON Lines. Splits on "\\n" only (U+2028 etc. may legally appear inside strings)."""
    values, lines = [], []
    decode = _DECODER.decode
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            values.append(decode(line))
        except (json.JSONDecodeError, _DuplicateKey, _BadConstant, RecursionError) as e:
            if not values and not declared and isinstance(e, json.JSONDecodeError):
                _explain_multiline_object(text, path)
            raise _decode_error(e, path, number) from None
        lines.append(number)
    return values, lines


def _explain_multiline_object(text: str, path: str) -> None:
    """The first line of an auto-detected JSON Lines file failed: is the file one multi-line object?"""
    try:
        whole = _DECODER.decode(text)
    except (json.JSONDecodeError, _DuplicateKey, _BadConstant, RecursionError):
        return
    if isinstance(whole, dict):
        hint = ""
        for key, value in whole.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                hint = f" (the records may be the list under key {key!r}: save that list as the file)"
                break
        raise DataError("file is a single JSON object spanning several lines, expected a JSON array of "
                        "records or JSON Lines (one object per line)" + hint, path=path, line=1)


def _parse_json_array(text: str, path: str) -> tuple[list, list[int]]:
    """Parse a JSON array element by element, recording the line where each element starts."""
    values, lines = [], []
    ws = _JSON_WS.match
    raw_decode = _DECODER.raw_decode
    line, counted_to = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        return line

    n = len(text)
    pos = ws(text, 0).end()
    if pos >= n:
        raise DataError("file is empty (no records)", path=path)
    if text[pos] != "[":
        hint = " (if the file is JSON Lines, pass container='jsonl' or 'auto')" if text[pos] == "{" else ""
        raise DataError(f"expected a JSON array of records (container='json'), but the file starts with "
                        f"{text[pos]!r}{hint}", path=path, line=line_at(pos))
    pos = ws(text, pos + 1).end()
    if pos < n and text[pos] == "]":
        raise DataError("the JSON array has no records", path=path, line=line_at(pos))
    while True:
        if pos >= n:
            raise DataError("invalid JSON: unexpected end of file inside the array (missing ']')",
                            path=path, line=line_at(n))
        start_line = line_at(pos)
        try:
            value, end = raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if e.pos >= n:
                raise DataError("invalid JSON: unexpected end of file inside the array",
                                path=path, line=line_at(n)) from None
            if text[e.pos] == "]" and e.pos == pos:
                raise DataError("invalid JSON: trailing comma before ']'", path=path,
                                line=line_at(e.pos)) from None
            raise _decode_error(e, path, line_at(e.pos)) from None
        except (_DuplicateKey, _BadConstant, RecursionError) as e:
            raise _decode_error(e, path, start_line) from None
        values.append(value)
        lines.append(start_line)
        pos = ws(text, end).end()
        if pos < n and text[pos] == ",":
            pos = ws(text, pos + 1).end()
            continue
        if pos < n and text[pos] == "]":
            pos = ws(text, pos + 1).end()
            break
        if pos >= n:
            raise DataError("invalid JSON: unexpected end of file inside the array (missing ']')",
                            path=path, line=line_at(n))
        raise DataError(f"invalid JSON: expected ',' or ']' after an array element, found "
                        f"{text[pos]!r}", path=path, line=line_at(pos))
    if pos < n:
        raise DataError("invalid JSON: extra data after the JSON array (if the file is JSON Lines, pass "
                        "container='jsonl' or 'auto')", path=path, line=line_at(pos))
    return values, lines


def _parses(text: str) -> bool:
    try:
        _DECODER.decode(text)
    except (json.JSONDecodeError, _DuplicateKey, _BadConstant, RecursionError):
        return False
    return True


def _load_records(path: Any, container: str = "auto") -> tuple[str, list[dict], list[int]]:
    """Read ``path`` -> (path str, N record dicts, N line numbers). DataError on any problem."""
    path_str = os.fspath(path)
    if container not in CONTAINERS:
        raise DataError(f"container must be one of {CONTAINERS}, got {container!r}", path=path_str,
                        field="container")
    return _parse_records(_read_text(path_str), path_str, container)


def _parse_records(text: str, path_str: str, container: str = "auto") -> tuple[str, list[dict], list[int]]:
    """Parse the text of a JSON array or JSON Lines file (see :func:`_load_records`)."""
    first = _JSON_WS.match(text, 0).end()
    if first >= len(text):
        raise DataError("file is empty (no records)", path=path_str)
    first_line = text.count("\n", 0, first) + 1
    if container == "auto":
        if text[first] == "[":
            container = "json"
        elif text[first] == "{":
            container = "jsonl"
        else:
            raise DataError(f"expected a JSON array ('[') or JSON Lines objects ('{{'), but the file "
                            f"starts with {text[first]!r}", path=path_str, line=first_line)
        declared = False
    else:
        declared = True
    if container == "json":
        values, lines = _parse_json_array(text, path_str)
    else:
        line_end = text.find("\n", first)
        if text[first] == "[" and not _parses(text[first:] if line_end < 0 else text[first:line_end]):
            raise DataError("found a JSON array, but the file was declared JSON Lines (one object per "
                            "line); pass container='json' or 'auto'", path=path_str, line=first_line)
        values, lines = _parse_jsonl(text, path_str, declared=declared)
    for value, line in zip(values, lines):
        if not isinstance(value, dict):
            raise DataError(f"each record must be a JSON object, got {_json_type(value)} "
                            f"{_short(value, 40)}", path=path_str, line=line)
    return path_str, values, lines
