"""Multiple-choice sets (e.g. MMLU) and validation sets that are either multiple-choice or instruction data."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from shed_jax.data._instructions import (
    INSTRUCTION_FORMATS,
    InstructionSet,
    _MC_FIELDS,
    _build_instruction_set,
    _get_str,
    _resolve_field_map,
)
from shed_jax.data._json import _json_type, _short
from shed_jax.data._sources import load_records, located
from shed_jax.errors import DataError


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
                         container: str = "auto", split: str | None = None) -> MultipleChoiceSet:
    """Read a multiple-choice set: records with ``question`` (str), ``choices`` (list of >= 2 str) and
    ``answer`` (int index into ``choices``, 0-based, checked to be in range).

    Args:
        path: JSON array or JSON Lines file, or any source :func:`shed_jax.data.read_instructions` reads.
        field_map: canonical name (question, choices, answer) -> key in the file.
        container: ``"auto"``, ``"jsonl"`` or ``"json"``.
        split: the split of a ``DatasetDict`` directory or hub data set (default ``"train"``).

    Returns:
        MultipleChoiceSet with V >= 1 records; ``answers`` has shape ``(V,)``, dtype int64.

    Raises:
        DataError: any problem with the file (one line: path, line or row, field, message).
    """
    source = load_records(path, container=container, split=split)
    with located(source):
        return _build_multiple_choice(source.name, source.records, source.positions, field_map)


def read_validation(path, *, format: str = "auto", field_map: Mapping[str, str] | None = None,
                    container: str = "auto", split: str | None = None) -> MultipleChoiceSet | InstructionSet:
    """Read a validation set: multiple-choice or instruction data.

    Args:
        path: JSON array or JSON Lines file, or any source :func:`shed_jax.data.read_instructions` reads.
        format: ``"auto"`` (multiple-choice when the first record has question/choices/answer, else an
            instruction format detected from its keys), ``"multiple_choice"``, or one of
            :data:`INSTRUCTION_FORMATS`.
        field_map: canonical name -> key in the file (multiple-choice or instruction names).
        container: ``"auto"``, ``"jsonl"`` or ``"json"``.
        split: the split of a ``DatasetDict`` directory or hub data set (default ``"train"``).

    Returns:
        MultipleChoiceSet, or InstructionSet (duplicates kept; ``duplicate_of`` is filled).
    """
    path_str = os.fspath(path)
    if format != "auto" and format != "multiple_choice" and format not in INSTRUCTION_FORMATS:
        raise DataError(f"unknown format {format!r}; expected 'auto', 'multiple_choice' or one of "
                        f"{', '.join(INSTRUCTION_FORMATS)}", path=path_str, field="format")
    source = load_records(path, container=container, split=split)
    with located(source):
        return _validation_set(source, format, field_map)


def _validation_set(source, format: str, field_map: Mapping[str, str] | None) -> MultipleChoiceSet | InstructionSet:
    path_str, records, lines = source.name, source.records, source.positions
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
                                  duplicates="keep", source=source)
