"""Errors: what the user got wrong vs what the program got wrong.

:class:`UserError` (and its subclasses) is raised only where input is validated: data and validation files,
options, run directories, output paths. The command line reports it as one line, ``Error: <message>``,
with exit status 2. Anything else that escapes is a bug: the command line writes the traceback to the run
directory's log (``RUN_DIR/logs/``, or a temporary file when there is no run directory yet), prints one
line pointing to it, and exits with status 1.

``str(UserError(...)) == "path:line: field: message"`` (``"path: row N: field: message"`` for a table), each
location part left out when unknown:

>>> str(UserError("must be a string", path="a.jsonl", line=3, field="output"))
'a.jsonl:3: output: must be a string'
>>> str(UserError("must be a string, got null", path="a.parquet", row=3, field="output"))
'a.parquet: row 3: output: must be a string, got null'
>>> str(UserError("must be in (0, 1], got 2.0", field="--ratio"))
'--ratio: must be in (0, 1], got 2.0'
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["DataError", "PipelineError", "UserError"]


class UserError(ValueError):
    """Bad user input, reported on one line (exit status 2 on the command line).

    A ``ValueError`` (library callers catching that keep working), but the command line treats only this
    type as the user's mistake: any other ``ValueError`` that escapes is a bug.

    Attributes:
        message: what is wrong (one line; newlines are folded into spaces).
        path: the file or directory, as given (``str``), or ``None``.
        line: 1-based line number in the file, or ``None``.
        row: 0-based row index in a table (parquet, a ``datasets`` data set), or ``None``; shown as ``row N``.
        field: the record field (key path such as ``conversations[2].from``) or the option (``--ratio``),
            or ``None``.
    """

    def __init__(self, message: str, *, path: Any = None, line: int | None = None, field: str | None = None,
                 row: int | None = None):
        self.message = " ".join(str(message).split())
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.field = field
        self.row = row
        super().__init__(self.__str__())

    def __str__(self) -> str:
        location = "" if self.path is None else self.path
        if self.line is not None:
            location = f"{location}:{self.line}" if location else f"line {self.line}"
        if self.row is not None:
            location = f"{location}: row {self.row}" if location else f"row {self.row}"
        parts = [p for p in (location, self.field) if p]
        return ": ".join(parts + [self.message])

    def __reduce__(self):  # keep the keyword-only attributes through pickling (multiprocessing)
        return (_rebuild, (type(self), self.message, self.path, self.line, self.field, self.row))


def _rebuild(cls, message, path, line, field, row=None):
    return cls(message, path=path, line=line, field=field, row=row)


class DataError(UserError):
    """A problem in a data, validation or values file (names the file, line and field).

    >>> str(DataError("file is empty", path="a.jsonl"))
    'a.jsonl: file is empty'
    """


class PipelineError(UserError):
    """A problem with the options or the run directory of a pipeline command."""
