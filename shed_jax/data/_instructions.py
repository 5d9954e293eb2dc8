"""Instruction-tuning records: formats, their detection and validation, :class:`InstructionSet`, duplicates.

See :mod:`shed_jax.data` for the formats (alpaca, sharegpt, messages, prompt_completion, text), ``field_map``
and how multi-turn chats become a (prompt, response) pair.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from shed_jax.data._json import _json_type, _short
from shed_jax.data._sources import LoadedRecords, load_records, located
from shed_jax.errors import DataError

logger = logging.getLogger("shed_jax.data")  # the package's logger, as before the split

INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text")
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
# Multiple-choice keys (shed_jax.data._multiple_choice); read here too, to tell such a file from instructions.
_MC_FIELDS = ("question", "choices", "answer")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}
_CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True, eq=False)
class InstructionSet:
    """An instruction-tuning data set of N records.

    Attributes:
        path: the file it was read from (for other sources: ``hf:OWNER/NAME[split]``, ``DIR[split]``,
            ``<stdin>``).
        format: resolved record format, one of :data:`INSTRUCTION_FORMATS`.
        records: the N parsed records (``dict``), exactly as in the file (key order preserved).
        prompts: N user-side texts (alpaca: ``instruction + "\\n\\n" + input`` when input is non-empty).
        responses: N assistant-side texts (``""`` for format ``"text"``).
        line_numbers: N 1-based line numbers (JSON array: the line where the element starts); for a table
            source (parquet, ``datasets``: ``source.unit == "row"``) N 0-based row indices.
        duplicate_of: ``(N,)`` int64; ``-1``, or the index of the first earlier record identical to this one
            (same keys and values; key order and whitespace do not matter, ``1`` and ``1.0`` differ).
        source: the :class:`~shed_jax.data._sources.LoadedRecords` read (kind, parquet table, CSV header),
            which decides the default output format; ``None`` for sets built in memory (JSON Lines out).
    """

    path: str
    format: str
    records: list[dict]
    prompts: list[str]
    responses: list[str]
    line_numbers: list[int]
    duplicate_of: np.ndarray
    source: Any = None

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
                    where = {"row": line} if self.unit == "row" else {"line": line}
                    raise DataError(f"record has no key {key!r} (asked for by fields={fields!r})",
                                    path=self.path, field=key, **where)
                value = record[key]
                if not isinstance(value, str):
                    value = json.dumps(value, ensure_ascii=False)
                if value:
                    parts.append(value)
            out.append("\n\n".join(parts))
        return out

    @property
    def unit(self) -> str:
        """What :attr:`line_numbers` count: ``"line"`` or ``"row"`` (table sources)."""
        return self.source.unit if self.source is not None else "line"

    def category(self, key: str = "category") -> list[str] | None:
        """Per-record ``str(record[key])`` (N values) if every record has ``key``, else ``None``."""
        if not all(key in r for r in self.records):
            return None
        return [v if isinstance(v, str) else str(v) for v in (r[key] for r in self.records)]


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
        hint = ("; give the format (--format, or format= in Python) or map the fields (--field-map NAME=KEY,..., "
                "or field_map= in Python)")
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
    shown = "" if value is None else f" {_short(value, 40)}"
    raise DataError(f"must be a string, got {_json_type(value)}{shown}", path=path, line=line, field=field)


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
                           field_map: Mapping[str, str] | None, duplicates: str,
                           source: LoadedRecords | None = None) -> InstructionSet:
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}",
                        path=path, field="duplicates")
    if format != "auto" and format not in INSTRUCTION_FORMATS:
        raise DataError(f"unknown format {format!r}; expected 'auto' or one of "
                        f"{', '.join(INSTRUCTION_FORMATS)}", path=path, field="format")
    keys = _resolve_field_map(field_map, _all_instruction_fields(), path)
    fmt = _detect_format(records[0], keys, path, lines[0]) if format == "auto" else format
    prompts, responses = _instruction_texts(fmt, records, lines, keys, path)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        if not (prompt.strip() or response.strip()):
            raise DataError(f"record has no text (its {fmt} prompt and response are empty or whitespace)",
                            path=path, line=lines[i])
    duplicate_of = _find_duplicates(records, prompts, responses)
    dup_idx = np.flatnonzero(duplicate_of >= 0)
    if dup_idx.size:
        i = int(dup_idx[0])
        j = int(duplicate_of[i])
        unit = source.unit if source is not None else "line"
        if duplicates == "error":
            raise DataError(f"duplicate record: identical to the record at {unit} {lines[j]} "
                            f"({dup_idx.size} duplicate record(s) in the file; pass duplicates='keep' "
                            f"or 'drop' to accept them)", path=path, line=lines[i])
        policy = ("dropped: never clustered or selected" if duplicates == "drop"
                  else "kept: clustered and selectable like any record")
        logger.warning("%s: %d duplicate record(s) (first: %s %d repeats %s %d); %s (--duplicates %s)",
                       path, dup_idx.size, unit, lines[i], unit, lines[j], policy, duplicates)
    return InstructionSet(path=path, format=fmt, records=records, prompts=prompts,
                          responses=responses, line_numbers=lines, duplicate_of=duplicate_of, source=source)


def read_instructions(path, *, format: str = "auto", field_map: Mapping[str, str] | None = None,
                      duplicates: str = "drop", container: str = "auto", split: str | None = None,
                      revision: str | None = None) -> InstructionSet:
    """Read instruction-tuning records into an :class:`InstructionSet`.

    Args:
        path: what to read (``str`` or path-like): a JSON array or JSON Lines file (also ``.jsonl.gz`` /
            ``.json.gz``), a ``.parquet``, ``.csv`` or ``.tsv`` file, a ``datasets`` ``save_to_disk``
            directory, ``hf:OWNER/NAME[/CONFIG]`` (a Hugging Face hub data set) or ``-`` (JSON Lines on stdin);
            see :mod:`shed_jax.data._sources`.
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
        split: the split of a ``DatasetDict`` directory or hub data set (default ``"train"``).
        revision: the revision (branch, tag, commit) of a hub data set.

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
    source = load_records(path, container=container, split=split, revision=revision)
    with located(source):
        return _build_instruction_set(source.name, source.records, source.positions, format=format,
                                      field_map=field_map, duplicates=duplicates, source=source)
