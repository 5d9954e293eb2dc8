"""Read, validate and write instruction-tuning and multiple-choice data sets.

SHED (He et al., "SHED: Shapley-Based Automated Dataset Refinement for Instruction Fine-Tuning",
NeurIPS 2024) values an instruction pool against a small validation set and writes out a subset of the
pool. This module is the boundary between user files and the rest of the pipeline:

* **Containers.** A file is either one JSON array of records or JSON Lines (one object per line). The
  container is detected from the content (first non-blank character ``[`` = array, ``{`` = JSON Lines),
  never from the file extension; ``container="json"|"jsonl"`` declares it explicitly. A UTF-8 byte order
  mark is accepted and skipped. Blank lines in JSON Lines are skipped, and line numbers still count them.
* **Record formats** (:data:`INSTRUCTION_FORMATS`), auto-detected from the first record's keys:

  ============== ================================================ =========================================
  format         keys                                             prompt / response
  ============== ================================================ =========================================
  alpaca         ``instruction``, ``input`` (optional), ``output`` instruction [+ "\\n\\n" + input] / output
  sharegpt       ``conversations``: [{``from``, ``value``}, ...]   see *multi-turn* below
  messages       ``messages``: [{``role``, ``content``}, ...]      see *multi-turn* below
  prompt_completion ``prompt``, ``completion``                    prompt / completion
  text           ``text``                                         text / ""
  ============== ================================================ =========================================

  ``field_map`` maps canonical names (the left-hand names above, plus ``from``/``value``/``role``/
  ``content`` for the turns of a chat) to the keys actually used in the file.
* **Multi-turn chats.** The response is the *last* assistant turn. The prompt is every user turn before
  it, joined with ``"\\n\\n"``; system turns, earlier assistant turns and turns after the last assistant
  turn are left out of the text (they are still kept, untouched, in ``records``). A chat needs at least
  one user turn before its last assistant turn. ShareGPT roles: ``human``/``user`` (user),
  ``gpt``/``assistant`` (assistant), ``system``. Chat roles: ``user``, ``assistant``, ``system``.
* **Multiple-choice sets** (e.g. MMLU): ``question`` (str), ``choices`` (list of >= 2 str), ``answer``
  (int index into ``choices``, checked to be in range).
* **Errors.** Every problem with user input raises :class:`DataError` (a ``ValueError``) whose ``str`` is a
  single line ``"{path}:{line}: {field}: {message}"``: missing or empty files, invalid JSON (line and
  column), non-UTF-8 bytes (line), NaN/Infinity (not JSON), duplicate keys inside one object, records
  that are not objects, missing or wrong-typed fields, a JSON array in a file declared JSON Lines,
  duplicate records when ``duplicates="error"``. Parsing uses :mod:`json` only; nothing is evaluated or
  unpickled. Inside a JSON array a record's line is the line where the record starts.
* **Writes are atomic**: the bytes are fully serialised first, written to a temporary file in the target
  directory, flushed and fsync-ed, then moved into place with :func:`os.replace`. On any error the
  temporary file is removed and an existing target is left as it was.

Selected records are written back exactly as they were read (same keys, key order and values; JSON
numbers keep their int/float type), so ``write_selection`` on a file written by ``json.dumps(...,
ensure_ascii=False)`` reproduces its lines byte for byte.
"""
from __future__ import annotations

import json
import logging
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from shed_jax.errors import DataError
from shed_jax.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_many,
    atomic_write_text,
    finite_or_none as _finite_or_none,
    jsonl_bytes as _jsonl_bytes,
    write_jsonl,
)

__all__ = [
    "DataError",
    "INSTRUCTION_FORMATS",
    "InstructionSet",
    "MultipleChoiceSet",
    "read_instructions",
    "read_multiple_choice",
    "read_validation",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "write_jsonl",
    "write_selection",
    "check_budget",
    "check_clusters",
]

logger = logging.getLogger(__name__)

INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text")
CONTAINERS = ("auto", "jsonl", "json")
DUPLICATE_POLICIES = ("error", "keep", "drop")

# Canonical field names each instruction format reads (chat formats also read the turn keys).
_FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output"),
    "sharegpt": ("conversations", "from", "value"),
    "messages": ("messages", "role", "content"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
# Top-level keys that identify a format, in detection order (most specific first).
_DETECT_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sharegpt", ("conversations",)),
    ("messages", ("messages",)),
    ("prompt_completion", ("prompt", "completion")),
    ("alpaca", ("instruction", "output")),
    ("text", ("text",)),
)
_MC_FIELDS = ("question", "choices", "answer")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}
_CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}

_JSON_WS = re.compile(r"[ \t\n\r]*")


# ----------------------------------------------------------------------------------------------------
# Data classes
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InstructionSet:
    """An instruction-tuning data set of N records.

    Attributes:
        path: the file it was read from.
        format: resolved record format, one of :data:`INSTRUCTION_FORMATS`.
        records: the N parsed records (``dict``), exactly as in the file (key order preserved).
        prompts: N user-side texts (alpaca: ``instruction + "\\n\\n" + input`` when input is non-empty).
        responses: N assistant-side texts (``""`` for format ``"text"``).
        line_numbers: N 1-based line numbers (JSON array: the line where the element starts).
        duplicate_of: ``(N,)`` int64; ``-1``, or the index of the first earlier record identical to this one
            (same keys and values; key order and whitespace do not matter, ``1`` and ``1.0`` differ).
    """

    path: str
    format: str
    records: list[dict]
    prompts: list[str]
    responses: list[str]
    line_numbers: list[int]
    duplicate_of: np.ndarray

    def __len__(self) -> int:
        return len(self.records)

    def texts(self, fields: str = "all") -> list[str]:
        """The N texts to embed, one per record.

        Args:
            fields: ``"all"`` (``prompt + "\\n\\n" + response``, or just the prompt when the response is
                empty), ``"prompt"``, ``"response"``, or a comma-separated list of raw record keys (e.g.
                ``"instruction,output"``) whose values are joined with ``"\\n\\n"`` (empty strings are
                skipped, non-string values are written as JSON).

        Returns:
            list of N ``str``.

        Raises:
            DataError: a raw key is missing from a record (names its line), or ``fields`` is empty.
        """
        if fields == "all":
            return [p + "\n\n" + r if r else p for p, r in zip(self.prompts, self.responses)]
        if fields == "prompt":
            return list(self.prompts)
        if fields == "response":
            return list(self.responses)
        keys = [k.strip() for k in fields.split(",")]
        if not fields.strip() or any(not k for k in keys):
            raise DataError(f"expected 'all', 'prompt', 'response' or a comma list of record keys, got "
                            f"{fields!r}", field="fields")
        out = []
        for record, line in zip(self.records, self.line_numbers):
            parts = []
            for key in keys:
                if key not in record:
                    raise DataError(f"record has no key {key!r} (asked for by fields={fields!r})",
                                    path=self.path, line=line, field=key)
                value = record[key]
                if not isinstance(value, str):
                    value = json.dumps(value, ensure_ascii=False)
                if value:
                    parts.append(value)
            out.append("\n\n".join(parts))
        return out

    def category(self, key: str = "category") -> list[str] | None:
        """Per-record ``str(record[key])`` (N values) if every record has ``key``, else ``None``."""
        if not all(key in r for r in self.records):
            return None
        return [v if isinstance(v, str) else str(v) for v in (r[key] for r in self.records)]


@dataclass(frozen=True, eq=False)
class MultipleChoiceSet:
    """A multiple-choice evaluation set of V questions (e.g. MMLU).

    Attributes:
        path: the file it was read from.
        records: the V parsed records, exactly as in the file.
        questions: V question texts.
        choices: V lists of choice texts (ragged allowed, at least 2 each).
        answers: ``(V,)`` int64, index of the correct choice in ``choices[i]``.
        line_numbers: V 1-based line numbers.
    """

    path: str
    records: list[dict]
    questions: list[str]
    choices: list[list[str]]
    answers: np.ndarray
    line_numbers: list[int]

    def __len__(self) -> int:
        return len(self.records)


# ----------------------------------------------------------------------------------------------------
# Low-level parsing: bytes -> (records, line numbers)
# ----------------------------------------------------------------------------------------------------


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


def _read_text(path: str) -> str:
    """Read a file as UTF-8 (a leading BOM is dropped); DataError on missing file or bad bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a JSON or JSON Lines file", path=path) from None
    except PermissionError:
        raise DataError("permission denied", path=path) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", path=path) from None
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
    text = _read_text(path_str)
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


# ----------------------------------------------------------------------------------------------------
# Instruction formats
# ----------------------------------------------------------------------------------------------------


def _resolve_field_map(field_map: Mapping[str, str] | None, allowed: Iterable[str],
                       path: str) -> dict[str, str]:
    """Canonical name -> file key, for every name in ``allowed`` (identity unless remapped)."""
    allowed = tuple(allowed)
    mapping = {name: name for name in allowed}
    if field_map is None:
        return mapping
    if not isinstance(field_map, Mapping):
        raise DataError(f"field_map must be a dict of canonical name -> key, got "
                        f"{type(field_map).__name__}", path=path, field="field_map")
    for name, key in field_map.items():
        if name not in mapping:
            raise DataError(f"unknown canonical name {name!r}; valid names: {', '.join(allowed)}",
                            path=path, field="field_map")
        if not isinstance(key, str) or not key:
            raise DataError(f"field_map[{name!r}] must be a non-empty string, got {_short(key)}",
                            path=path, field="field_map")
        mapping[name] = key
    return mapping


def _all_instruction_fields() -> tuple[str, ...]:
    names: list[str] = []
    for fields in _FORMAT_FIELDS.values():
        names.extend(f for f in fields if f not in names)
    return tuple(names)


def _detect_format(record: dict, keys: dict[str, str], path: str, line: int) -> str:
    for name, required in _DETECT_KEYS:
        if all(keys[r] in record for r in required):
            return name
    if all(k in record for k in _MC_FIELDS):
        hint = "; this looks like a multiple-choice set: use read_multiple_choice or read_validation"
    else:
        hint = "; pass format= or field_map= (canonical name -> key in the file)"
    expected = "; ".join(f"{name}: {'+'.join(keys[r] for r in req)}" for name, req in _DETECT_KEYS)
    raise DataError(f"cannot detect the record format from the keys {list(record)[:12]} (expected "
                    f"{expected}){hint}", path=path, line=line)


def _get_str(record: dict, key: str, path: str, line: int, *, optional: bool = False,
             field: str | None = None) -> str:
    field = key if field is None else field
    if key not in record:
        if optional:
            return ""
        raise DataError(f"missing required field (record keys: {list(record)[:12]})", path=path,
                        line=line, field=field)
    value = record[key]
    if isinstance(value, str):
        return value
    if value is None and optional:
        return ""
    raise DataError(f"must be a string, got {_json_type(value)} {_short(value, 40)}", path=path,
                    line=line, field=field)


def _chat_texts(record: dict, list_key: str, role_key: str, text_key: str, roles: dict[str, str],
                path: str, line: int) -> tuple[str, str]:
    """(prompt, response) of one chat: user turns before the last assistant turn / that turn."""
    turns = record.get(list_key)
    if list_key not in record:
        raise DataError(f"missing required field (record keys: {list(record)[:12]})", path=path,
                        line=line, field=list_key)
    if not isinstance(turns, list):
        raise DataError(f"must be a list of turns, got {_json_type(turns)}", path=path, line=line,
                        field=list_key)
    normalised = []
    for i, turn in enumerate(turns):
        where = f"{list_key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"each turn must be an object, got {_json_type(turn)}", path=path,
                            line=line, field=where)
        role = _get_str(turn, role_key, path, line, field=f"{where}.{role_key}")
        if role not in roles:
            raise DataError(f"unknown role {role!r}; expected one of {', '.join(roles)}", path=path,
                            line=line, field=f"{where}.{role_key}")
        normalised.append((roles[role], _get_str(turn, text_key, path, line, field=f"{where}.{text_key}")))
    last_assistant = max((i for i, (role, _) in enumerate(normalised) if role == "assistant"), default=-1)
    if last_assistant < 0:
        raise DataError("the conversation has no assistant turn", path=path, line=line, field=list_key)
    user_turns = [text for role, text in normalised[:last_assistant] if role == "user"]
    if not user_turns:
        raise DataError("the conversation has no user turn before its last assistant turn", path=path,
                        line=line, field=list_key)
    return "\n\n".join(user_turns), normalised[last_assistant][1]


def _instruction_texts(fmt: str, records: list[dict], lines: list[int], keys: dict[str, str],
                       path: str) -> tuple[list[str], list[str]]:
    prompts: list[str] = []
    responses: list[str] = []
    if fmt == "alpaca":
        k_ins, k_inp, k_out = keys["instruction"], keys["input"], keys["output"]
        for record, line in zip(records, lines):
            instruction = _get_str(record, k_ins, path, line)
            extra = _get_str(record, k_inp, path, line, optional=True)
            prompts.append(instruction + "\n\n" + extra if extra else instruction)
            responses.append(_get_str(record, k_out, path, line))
    elif fmt == "prompt_completion":
        k_p, k_c = keys["prompt"], keys["completion"]
        for record, line in zip(records, lines):
            prompts.append(_get_str(record, k_p, path, line))
            responses.append(_get_str(record, k_c, path, line))
    elif fmt == "text":
        k_t = keys["text"]
        for record, line in zip(records, lines):
            prompts.append(_get_str(record, k_t, path, line))
            responses.append("")
    elif fmt == "sharegpt":
        for record, line in zip(records, lines):
            p, r = _chat_texts(record, keys["conversations"], keys["from"], keys["value"],
                               _SHAREGPT_ROLES, path, line)
            prompts.append(p)
            responses.append(r)
    elif fmt == "messages":
        for record, line in zip(records, lines):
            p, r = _chat_texts(record, keys["messages"], keys["role"], keys["content"], _CHAT_ROLES,
                               path, line)
            prompts.append(p)
            responses.append(r)
    else:  # pragma: no cover - callers validate fmt
        raise AssertionError(fmt)
    return prompts, responses


def _canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _find_duplicates(records: list[dict], prompts: list[str], responses: list[str]) -> np.ndarray:
    """(N,) int64: -1 or index of the first earlier identical record.

    Identical records have identical (prompt, response), so only records that share them are compared,
    by a canonical JSON form (sorted keys, so key order does not matter; 1 and 1.0 stay different).
    """
    duplicate_of = np.full(len(records), -1, dtype=np.int64)
    by_text: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(prompts, responses)):
        by_text.setdefault(key, []).append(i)
    for group in by_text.values():
        if len(group) < 2:
            continue
        first_by_canonical: dict[str, int] = {}
        for i in group:
            canonical = _canonical(records[i])
            first = first_by_canonical.setdefault(canonical, i)
            if first != i:
                duplicate_of[i] = first
    return duplicate_of


def _build_instruction_set(path: str, records: list[dict], lines: list[int], *, format: str,
                           field_map: Mapping[str, str] | None, duplicates: str) -> InstructionSet:
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}",
                        path=path, field="duplicates")
    if format != "auto" and format not in INSTRUCTION_FORMATS:
        raise DataError(f"unknown format {format!r}; expected 'auto' or one of "
                        f"{', '.join(INSTRUCTION_FORMATS)}", path=path, field="format")
    keys = _resolve_field_map(field_map, _all_instruction_fields(), path)
    fmt = _detect_format(records[0], keys, path, lines[0]) if format == "auto" else format
    prompts, responses = _instruction_texts(fmt, records, lines, keys, path)
    duplicate_of = _find_duplicates(records, prompts, responses)
    dup_idx = np.flatnonzero(duplicate_of >= 0)
    if dup_idx.size:
        i = int(dup_idx[0])
        j = int(duplicate_of[i])
        if duplicates == "error":
            raise DataError(f"duplicate record: identical to the record at line {lines[j]} "
                            f"({dup_idx.size} duplicate record(s) in the file; pass duplicates='keep' "
                            f"or 'drop' to accept them)", path=path, line=lines[i])
        logger.warning("%s: %d duplicate record(s) (first: line %d repeats line %d); duplicates=%r",
                       path, dup_idx.size, lines[i], lines[j], duplicates)
    return InstructionSet(path=path, format=fmt, records=records, prompts=prompts,
                          responses=responses, line_numbers=lines, duplicate_of=duplicate_of)


def read_instructions(path, *, format: str = "auto", field_map: Mapping[str, str] | None = None,
                      duplicates: str = "drop", container: str = "auto") -> InstructionSet:
    """Read an instruction-tuning file (JSON array or JSON Lines) into an :class:`InstructionSet`.

    Args:
        path: file to read (``str`` or path-like).
        format: ``"auto"`` (detect from the first record's keys) or one of :data:`INSTRUCTION_FORMATS`.
            Every record is then validated against that format.
        field_map: canonical name -> key in the file, e.g. ``{"instruction": "question",
            "output": "answer"}``. Canonical names: instruction, input, output, conversations, from,
            value, messages, role, content, prompt, completion, text.
        duplicates: ``"error"`` raises a DataError naming the lines of the first duplicate and of its
            original; ``"keep"`` and ``"drop"`` keep every record and fill ``duplicate_of`` (the pipeline
            leaves records with ``duplicate_of >= 0`` out of the candidate pool under ``"drop"``) and log a
            warning.
        container: ``"auto"`` (detect from the content), ``"jsonl"`` or ``"json"`` (one array).

    Returns:
        InstructionSet with N >= 1 records.

    Raises:
        DataError: any problem with the file or the arguments (one line: path, line, field, message).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "a.jsonl")
    ...     _ = open(p, "w").write('{"instruction": "Add", "input": "1+1", "output": "2"}\\n')
    ...     ds = read_instructions(p)
    >>> ds.format, ds.prompts, ds.responses
    ('alpaca', ['Add\\n\\n1+1'], ['2'])
    """
    path_str, records, lines = _load_records(path, container)
    return _build_instruction_set(path_str, records, lines, format=format, field_map=field_map,
                                  duplicates=duplicates)


# ----------------------------------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------------------------------


def _build_multiple_choice(path: str, records: list[dict], lines: list[int],
                           field_map: Mapping[str, str] | None) -> MultipleChoiceSet:
    keys = _resolve_field_map(field_map, _MC_FIELDS, path)
    k_q, k_c, k_a = keys["question"], keys["choices"], keys["answer"]
    questions: list[str] = []
    choices: list[list[str]] = []
    answers = np.empty(len(records), dtype=np.int64)
    for n, (record, line) in enumerate(zip(records, lines)):
        questions.append(_get_str(record, k_q, path, line))
        if k_c not in record:
            raise DataError(f"missing required field (record keys: {list(record)[:12]})", path=path,
                            line=line, field=k_c)
        options = record[k_c]
        if not isinstance(options, list):
            raise DataError(f"must be a list of strings, got {_json_type(options)}", path=path,
                            line=line, field=k_c)
        if len(options) < 2:
            raise DataError(f"needs at least 2 choices, got {len(options)}", path=path, line=line,
                            field=k_c)
        for i, option in enumerate(options):
            if not isinstance(option, str):
                raise DataError(f"must be a string, got {_json_type(option)} {_short(option, 40)}",
                                path=path, line=line, field=f"{k_c}[{i}]")
        choices.append(options)
        if k_a not in record:
            raise DataError(f"missing required field (record keys: {list(record)[:12]})", path=path,
                            line=line, field=k_a)
        answer = record[k_a]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise DataError(f"must be an integer index into {k_c}, got {_json_type(answer)} "
                            f"{_short(answer, 40)}", path=path, line=line, field=k_a)
        if not 0 <= answer < len(options):
            raise DataError(f"answer index {answer} is out of range for {len(options)} choices "
                            f"(valid: 0..{len(options) - 1})", path=path, line=line, field=k_a)
        answers[n] = answer
    return MultipleChoiceSet(path=path, records=records, questions=questions, choices=choices,
                             answers=answers, line_numbers=lines)


def read_multiple_choice(path, *, field_map: Mapping[str, str] | None = None,
                         container: str = "auto") -> MultipleChoiceSet:
    """Read a multiple-choice set: records with ``question`` (str), ``choices`` (list of >= 2 str) and
    ``answer`` (int index into ``choices``, 0-based, checked to be in range).

    Args:
        path: JSON array or JSON Lines file.
        field_map: canonical name (question, choices, answer) -> key in the file.
        container: ``"auto"``, ``"jsonl"`` or ``"json"``.

    Returns:
        MultipleChoiceSet with V >= 1 records; ``answers`` has shape ``(V,)``, dtype int64.

    Raises:
        DataError: any problem with the file (one line: path, line, field, message).
    """
    path_str, records, lines = _load_records(path, container)
    return _build_multiple_choice(path_str, records, lines, field_map)


def read_validation(path, *, format: str = "auto", field_map: Mapping[str, str] | None = None,
                    container: str = "auto") -> MultipleChoiceSet | InstructionSet:
    """Read a validation set: multiple-choice or instruction data.

    Args:
        path: JSON array or JSON Lines file.
        format: ``"auto"`` (multiple-choice when the first record has question/choices/answer, else an
            instruction format detected from its keys), ``"multiple_choice"``, or one of
            :data:`INSTRUCTION_FORMATS`.
        field_map: canonical name -> key in the file (multiple-choice or instruction names).
        container: ``"auto"``, ``"jsonl"`` or ``"json"``.

    Returns:
        MultipleChoiceSet, or InstructionSet (duplicates kept; ``duplicate_of`` is filled).
    """
    path_str = os.fspath(path)
    if format != "auto" and format != "multiple_choice" and format not in INSTRUCTION_FORMATS:
        raise DataError(f"unknown format {format!r}; expected 'auto', 'multiple_choice' or one of "
                        f"{', '.join(INSTRUCTION_FORMATS)}", path=path_str, field="format")
    path_str, records, lines = _load_records(path, container)
    mc_map = {k: v for k, v in (field_map or {}).items() if k in _MC_FIELDS}
    other_map = {k: v for k, v in (field_map or {}).items() if k not in _MC_FIELDS}
    if format == "auto":
        mc_keys = _resolve_field_map(mc_map, _MC_FIELDS, path_str)
        is_mc = all(mc_keys[k] in records[0] for k in _MC_FIELDS)
    else:
        is_mc = format == "multiple_choice"
    if is_mc:
        if other_map:
            raise DataError(f"unknown canonical name(s) {sorted(other_map)} for a multiple-choice set; "
                            f"valid names: {', '.join(_MC_FIELDS)}", path=path_str, field="field_map")
        return _build_multiple_choice(path_str, records, lines, mc_map)
    return _build_instruction_set(path_str, records, lines, format=format, field_map=field_map,
                                  duplicates="keep")


def scores_path(path) -> str:
    """Sidecar file of per-record scores for the selection at ``path``: ``<dir>/<stem>.scores.jsonl``."""
    p = Path(os.fspath(path))
    return str(p.with_name(p.stem + ".scores.jsonl"))


def write_selection(path, dataset: InstructionSet, indices, *,
                    scores: list[dict] | None = None) -> None:
    """Write the selected records ``dataset.records[i]`` for ``i`` in ``indices``, exactly as read.

    Args:
        path: output JSON Lines file (one record per line, same keys/values/key order as the input).
        dataset: the InstructionSet the indices refer to (N records).
        indices: ``(B,)`` distinct integers in ``[0, N)`` (list or integer numpy array), written in order.
        scores: optional ``B`` dicts, written in the same order to the sidecar :func:`scores_path` (e.g.
            ``sel.jsonl`` -> ``sel.scores.jsonl``). numpy values become Python numbers; NaN and infinite
            floats are written as ``null``.

    Both files are serialised completely before anything is written; each is replaced atomically.

    Raises:
        ValueError: indices not 1-D integers, out of range or repeated; scores of the wrong length or not
            dicts.
    """
    n = len(dataset.records)
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size == 0:
        idx = idx.astype(np.int64)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    bad = np.flatnonzero((idx < 0) | (idx >= n))
    if bad.size:
        raise ValueError(f"index {int(idx[bad[0]])} (position {int(bad[0])}) is out of range for a data set "
                         f"of {n} records")
    if np.unique(idx).size != idx.size:
        values, counts = np.unique(idx, return_counts=True)
        raise ValueError(f"indices must be distinct; {int(values[counts > 1][0])} is repeated")
    records = dataset.records
    data, _ = _jsonl_bytes(records[i] for i in idx.tolist())
    items = [(os.fspath(path), data)]
    if scores is not None:
        scores = list(scores)
        if len(scores) != idx.size:
            raise ValueError(f"scores has {len(scores)} entries, expected one per selected record "
                             f"({idx.size})")
        for i, entry in enumerate(scores):
            if not isinstance(entry, Mapping):
                raise ValueError(f"scores[{i}] must be a dict, got {type(entry).__name__}")
        score_data, _ = _jsonl_bytes((_finite_or_none(dict(s)) for s in scores), what="scores entry")
        sidecar = scores_path(path)
        if os.path.abspath(sidecar) == os.path.abspath(os.fspath(path)):  # pragma: no cover
            raise ValueError(f"the scores file would overwrite the selection: {sidecar}")
        items.append((sidecar, score_data))
    atomic_write_many(items)


# ----------------------------------------------------------------------------------------------------
# Argument checks shared by the pipeline and the CLI
# ----------------------------------------------------------------------------------------------------


def _as_count(value: Any, name: str, path: Any) -> int:
    if isinstance(value, bool):
        raise DataError(f"must be an integer, got bool {value!r}", path=path, field=name)
    try:
        return operator.index(value)
    except TypeError:
        raise DataError(f"must be an integer, got {type(value).__name__} {_short(value, 40)}", path=path,
                        field=name) from None


def check_budget(n_examples: int, budget: int, *, path=None) -> int:
    """Check that ``budget`` examples can be selected from ``n_examples``; return ``budget`` as ``int``.

    Raises:
        DataError: non-integers, ``n_examples < 1``, ``budget < 1`` or ``budget > n_examples`` (the
            message names ``path`` when given).
    """
    n = _as_count(n_examples, "n_examples", path)
    b = _as_count(budget, "budget", path)
    if n < 1:
        raise DataError(f"the data set has no candidate examples (n_examples={n})", path=path,
                        field="n_examples")
    if b < 1:
        raise DataError(f"must be a positive number of examples, got {b}", path=path, field="budget")
    if b > n:
        raise DataError(f"budget {b} is larger than the data ({n} candidate examples)", path=path,
                        field="budget")
    return b


def check_clusters(n_examples: int, n_clusters: int, *, path=None) -> int:
    """Check that ``n_clusters`` clusters (K) can be made from ``n_examples`` (N); return K as ``int``.

    Raises:
        DataError: non-integers, ``N < 1``, ``K < 1`` or ``K > N``.
    """
    n = _as_count(n_examples, "n_examples", path)
    k = _as_count(n_clusters, "n_clusters", path)
    if n < 1:
        raise DataError(f"the data set has no candidate examples (n_examples={n})", path=path,
                        field="n_examples")
    if k < 1:
        raise DataError(f"must be a positive number of clusters, got {k}", path=path, field="n_clusters")
    if k > n:
        raise DataError(f"K={k} clusters is more than the {n} examples (K must be <= N)", path=path,
                        field="n_clusters")
    return k
