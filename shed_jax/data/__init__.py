"""Read, validate and write instruction-tuning and multiple-choice data sets.

SHED (He et al., "SHED: Shapley-Based Automated Dataset Refinement for Instruction Fine-Tuning",
NeurIPS 2024) values an instruction pool against a small validation set and writes out a subset of the
pool. This module is the boundary between user files and the rest of the pipeline:

* **Sources** (:mod:`shed_jax.data._sources`). Besides JSON files: ``.jsonl.gz``/``.json.gz``, ``.parquet``
  (pyarrow), ``.csv``/``.tsv`` (every value a string), a ``datasets`` ``save_to_disk`` directory (``split=`` for a
  ``DatasetDict``), ``hf:OWNER/NAME[/CONFIG]`` (``datasets.load_dataset`` with ``split=``/``revision=``) and
  ``-`` (JSON Lines on stdin). Every source becomes a list of dicts validated by the same code; errors name the
  line, or for tables the 0-based ``row N``. A selection is written in the input's format unless the output's
  extension names another (:func:`selection_format`).
* **Containers.** A JSON file is either one JSON array of records or JSON Lines (one object per line). The
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
  single line ``"{path}:{line}: {field}: {message}"`` (tables: ``"{path}: row {row}: {field}: {message}"``):
  missing or empty files, a path that is not a regular file (a directory that is not a ``save_to_disk``
  dataset, a FIFO, a symbolic-link loop: checked before opening, so nothing blocks), invalid JSON (line and
  column), non-UTF-8 bytes (line), NaN/Infinity (not JSON), duplicate keys inside one object, records that
  are not objects, missing or wrong-typed fields, records with no text (prompt and response both empty), a
  JSON array in a file declared JSON Lines, duplicate records when ``duplicates="error"``. Parsing uses
  :mod:`json` only; nothing is evaluated or unpickled. Inside a JSON array a record's line is the line
  where the record starts.
* **Writes are atomic**: the bytes are fully serialised first, written to a temporary file in the target
  directory, flushed and fsync-ed, then moved into place with :func:`os.replace`. On any error the
  temporary file is removed and an existing target is left as it was.

Selected records are written back exactly as they were read (same keys, key order and values; JSON
numbers keep their int/float type), so ``write_selection`` on a file written by ``json.dumps(...,
ensure_ascii=False)`` reproduces its lines byte for byte; a parquet selection of a parquet input has its
schema and its rows' values.
"""
from __future__ import annotations

import os

from shed_jax.data._checks import check_budget, check_clusters
from shed_jax.data._instructions import (DUPLICATE_POLICIES, INSTRUCTION_FORMATS, InstructionSet, logger,
                                        read_instructions)
from shed_jax.data._json import CONTAINERS
from shed_jax.data._multiple_choice import MultipleChoiceSet, read_multiple_choice, read_validation
from shed_jax.data._sources import (OUTPUT_FORMATS, is_dataset_dir, is_local_path, load_records, records_sha256,
                                    source_kind, source_stem)
from shed_jax.data._write import check_selection_writable, scores_path, selection_format, write_selection
from shed_jax.errors import DataError
from shed_jax.io import atomic_write_bytes, atomic_write_json, atomic_write_text, write_jsonl

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
    "selection_format",
    "check_selection_writable",
    "load_records",
    "records_sha256",
    "OUTPUT_FORMATS",
    "check_budget",
    "check_clusters",
]

# Importable from here as before the split into modules, though not in ``__all__``; ``os`` too, since tests
# patch ``os.replace`` / ``os.fsync`` through ``shed_jax.data.os``.
_REEXPORTED = (CONTAINERS, DUPLICATE_POLICIES, logger, os, scores_path, is_dataset_dir, is_local_path, source_kind,
               source_stem)
