"""Where records come from, and how a selection of them is written back in the same kind of file.

A *source* is named the way a user names it on the command line (the DATA argument, ``--valid``):

============================ ====================================== =============================================
source                       name                                   read with (records as)
============================ ====================================== =============================================
JSON array or JSON Lines     any other file name                    :mod:`json` (exactly as in the file)
gzipped JSON / JSON Lines    ``*.jsonl.gz``, ``*.json.gz``          :mod:`gzip` + :mod:`json`
parquet                      ``*.parquet``                          :mod:`pyarrow.parquet` (``Table.to_pylist``)
CSV / TSV                    ``*.csv``, ``*.tsv``                   :mod:`csv`: every value is a string
``datasets`` ``save_to_disk`` a directory (``state.json`` or         :func:`datasets.load_from_disk`; a
directory                    ``dataset_dict.json`` inside)          ``DatasetDict`` needs a split
Hugging Face hub data set    ``hf:OWNER/NAME`` or                   :func:`datasets.load_dataset` (split,
                             ``hf:OWNER/NAME/CONFIG``               revision)
standard input               ``-``                                  JSON Lines (read once)
============================ ====================================== =============================================

Every source becomes a :class:`LoadedRecords`: a list of ``dict`` records and, for each, where it is — a 1-based
line (JSON, JSON Lines, CSV) or a 0-based row index (parquet, ``datasets``), so that errors name it
(``train.parquet: row 3: output: must be a string, got null``). The records are then validated by one code path
whatever their source (:mod:`shed_jax.data._instructions`, :mod:`shed_jax.data._multiple_choice`).

A selection is written in the format :func:`output_format` names: the output file's extension when it is one
of :data:`OUTPUT_EXTENSIONS`, else the input's (parquet in, parquet out; ``hf:``, ``save_to_disk`` and stdin
give JSON Lines). A parquet selection from a parquet or ``datasets`` source is ``table.take(indices)``: same
schema (and schema metadata), same values. :func:`selection_bytes` serialises everything before anything is
written, and raises a :class:`DataError` naming the record and field that cannot be written in that format.

``datasets`` and ``pyarrow`` are imported only when a source needs them.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from shed_jax.config import is_local_path
from shed_jax.data._json import CONTAINERS, _decode_text, _load_records, _parse_records, _read_bytes
from shed_jax.errors import DataError

__all__ = ["LoadedRecords", "OUTPUT_EXTENSIONS", "OUTPUT_FORMATS", "is_dataset_dir", "is_local_path",
           "load_records", "located", "output_format", "records_sha256", "selection_bytes", "source_kind",
           "source_stem"]

STDIN = "-"
HF_PREFIX = "hf:"
OUTPUT_FORMATS = ("jsonl", "jsonl.gz", "parquet", "csv", "tsv")
# Output file extension -> format (longest first). ".json" stays JSON Lines, as the writer always wrote.
OUTPUT_EXTENSIONS = ((".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"), (".ndjson.gz", "jsonl.gz"),
                     (".parquet", "parquet"), (".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"),
                     (".json", "jsonl"), (".ndjson", "jsonl"))
# Source kind -> output format when the output's extension names none.
_OUTPUT_OF_KIND = {"json": "jsonl", "json.gz": "jsonl.gz", "parquet": "parquet", "csv": "csv", "tsv": "tsv"}
_GZ_JSON_SUFFIXES = (".jsonl.gz", ".json.gz", ".ndjson.gz")


@dataclass(frozen=True, eq=False)
class LoadedRecords:
    """The records of one source.

    Attributes:
        name: the source as errors name it: the path, ``hf:OWNER/NAME[split]``, ``DIR[split]`` or ``<stdin>``.
        kind: ``json``, ``json.gz``, ``parquet``, ``csv``, ``tsv``, ``dataset`` (``save_to_disk``), ``hf`` or
            ``stdin``.
        records: N dicts, fields and values exactly as read.
        positions: N ints: 1-based line numbers (``unit == "line"``) or 0-based row indices (``"row"``).
        unit: ``"line"`` or ``"row"``.
        table: the ``pyarrow.Table`` of the N rows (parquet and ``datasets`` sources), else None.
        columns: the CSV/TSV header, else None.
        raw: the bytes read from stdin (kind ``stdin``), else None.
    """

    name: str
    kind: str
    records: list[dict]
    positions: list[int]
    unit: str = "line"
    table: Any = None
    columns: tuple[str, ...] | None = None
    raw: bytes | None = None


# --------------------------------------------------------------------------------------------------
# naming
# --------------------------------------------------------------------------------------------------


def is_dataset_dir(path: str) -> bool:
    """True for a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "state.json"))
                                    or os.path.isfile(os.path.join(path, "dataset_dict.json")))


def source_kind(spec: str) -> str:
    """The kind of source ``spec`` names (see the module docstring); directories are ``dataset``."""
    if spec == STDIN:
        return "stdin"
    if spec.startswith(HF_PREFIX):
        return "hf"
    if os.path.isdir(spec):
        return "dataset"
    lower = spec.lower()
    if lower.endswith(".gz"):
        return "json.gz"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".tsv"):
        return "tsv"
    return "json"


def source_stem(spec: str) -> str:
    """A short name for run directories: ``stdin``, the hub data set's name, or the file name without its
    data extensions (``train.jsonl.gz`` -> ``train``)."""
    if spec == STDIN:
        return "stdin"
    if spec.startswith(HF_PREFIX):
        parts = spec[len(HF_PREFIX):].strip("/").split("/")
        return parts[1] if len(parts) > 1 else parts[0] or "hf"
    name = os.path.basename(os.path.normpath(spec))
    lower = name.lower()
    for suffix in (".gz",) + tuple(s for s, _ in OUTPUT_EXTENSIONS if not s.endswith(".gz")):
        if lower.endswith(suffix) and len(name) > len(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
    return name or "data"


def _parse_hf(spec: str) -> tuple[str, str | None]:
    """``hf:OWNER/NAME[/CONFIG]`` -> (repository id, config name or None)."""
    parts = spec[len(HF_PREFIX):].strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError("expected hf:OWNER/NAME or hf:OWNER/NAME/CONFIG (a Hugging Face hub data set)",
                        path=spec)
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def load_records(spec, *, container: str = "auto", split: str | None = None, revision: str | None = None
                 ) -> LoadedRecords:
    """Read every record of a source (see the module docstring for the names).

    Args:
        spec: a path, a ``save_to_disk`` directory, ``hf:OWNER/NAME[/CONFIG]`` or ``-`` (stdin).
        container: JSON sources only: ``"auto"``, ``"jsonl"`` or ``"json"``.
        split: the split of a ``DatasetDict`` directory or hub data set (default ``"train"``); other sources
            ignore it.
        revision: hub data sets only: a branch, tag or commit (default: the main branch).

    Returns:
        LoadedRecords with N >= 1 records.

    Raises:
        DataError: any problem reading the source (one line naming it, and the line or row when known).
    """
    spec = os.fspath(spec)
    if container not in CONTAINERS:
        raise DataError(f"container must be one of {CONTAINERS}, got {container!r}", path=spec, field="container")
    kind = source_kind(spec)
    if revision is not None and kind != "hf":
        raise DataError("a revision applies only to hf: data sets", path=spec, field="--revision")
    if kind == "json":
        name, records, lines = _load_records(spec, container)
        return LoadedRecords(name, kind, records, lines)
    if kind == "json.gz":
        return _load_gzip(spec, container)
    if kind == "stdin":
        return _load_stdin(container)
    if kind in ("csv", "tsv"):
        return _load_csv(spec, kind)
    if kind == "parquet":
        return _load_parquet(spec)
    if kind == "dataset":
        return _load_dataset_dir(spec, split or "train")
    return _load_hub(spec, split or "train", revision)


def _load_gzip(path: str, container: str) -> LoadedRecords:
    if not path.lower().endswith(_GZ_JSON_SUFFIXES):
        raise DataError("unsupported compressed file; gzip is read for JSON and JSON Lines "
                        f"({', '.join(_GZ_JSON_SUFFIXES)})", path=path)
    data = _read_bytes(path)
    try:
        text_bytes = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"not a valid gzip file ({e})", path=path) from None
    _, records, lines = _parse_records(_decode_text(text_bytes, path), path, container)
    return LoadedRecords(path, "json.gz", records, lines)


def _load_stdin(container: str) -> LoadedRecords:
    stream = sys.stdin
    if stream is None:
        raise DataError("no standard input to read the data from", path="<stdin>")
    if stream.isatty():
        raise DataError("DATA is '-' but standard input is a terminal; pipe JSON Lines into shed "
                        "(e.g. `cat train.jsonl | shed refine - ...`)", path="<stdin>")
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8")
    _, records, lines = _parse_records(_decode_text(data, "<stdin>"), "<stdin>", container)
    return LoadedRecords("<stdin>", "stdin", records, lines, raw=data)


@contextmanager
def _csv_field_limit() -> Iterator[None]:
    """Lift the csv module's 128 KiB field limit while reading (long responses), then restore it."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _load_csv(path: str, kind: str) -> LoadedRecords:
    """A CSV (or TSV) file with a header row; every value stays a string (no type guessing)."""
    text = _decode_text(_read_bytes(path), path)
    delimiter = "\t" if kind == "tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[dict] = []
    lines: list[int] = []
    with _csv_field_limit():
        try:
            header = next(reader, None)
            while header == []:  # blank lines before the header
                header = next(reader, None)
            if header is None:
                raise DataError("file is empty (no header row)", path=path)
            header_line = reader.line_num
            seen: set[str] = set()
            for column, name in enumerate(header):
                if not name:
                    raise DataError(f"the header has an empty column name (column {column + 1})", path=path,
                                    line=header_line)
                if name in seen:
                    raise DataError(f"duplicate column name {name!r} in the header", path=path,
                                    line=header_line, field=name)
                seen.add(name)
            end_line = reader.line_num
            for row in reader:
                start_line, end_line = end_line + 1, reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"has {len(row)} fields, the header has {len(header)}", path=path,
                                    line=start_line)
                records.append(dict(zip(header, row)))
                lines.append(start_line)
        except csv.Error as e:
            raise DataError(f"invalid CSV: {e}", path=path, line=reader.line_num) from None
    if not records:
        raise DataError("file has a header but no records", path=path)
    return LoadedRecords(path, kind, records, lines, columns=tuple(header))


def _from_table(name: str, kind: str, table) -> LoadedRecords:
    if table.num_rows == 0:
        raise DataError("has no records (0 rows)", path=name)
    records = table.to_pylist()
    return LoadedRecords(name, kind, records, list(range(len(records))), unit="row", table=table)


def _load_parquet(path: str) -> LoadedRecords:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise DataError("file not found", path=path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read parquet: {e}", path=path) from None
    return _from_table(path, "parquet", table)


def _pick_split(dataset_dict, split: str, name: str):
    splits = list(dataset_dict.keys())
    if split not in dataset_dict:
        raise DataError(f"no split {split!r}; the splits are: {', '.join(splits)} (choose one with --split)",
                        path=name, field="--split")
    return dataset_dict[split]


def _load_dataset_dir(path: str, split: str) -> LoadedRecords:
    if not is_dataset_dir(path):
        raise DataError("is a directory, not a data file or a directory written by datasets' save_to_disk "
                        "(no state.json or dataset_dict.json in it)", path=path)
    import datasets

    datasets.disable_progress_bars()  # our own progress lines say what is happening
    try:
        loaded = datasets.load_from_disk(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot load the save_to_disk directory: {type(e).__name__}: {e}", path=path) from None
    name = path
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, path)
        name = f"{path}[{split}]"
    return _from_table(name, "dataset", loaded.with_format("arrow")[:])


def _offline() -> bool:
    try:
        import datasets.config
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - both are dependencies
        return False
    return bool(datasets.config.HF_HUB_OFFLINE or hub_constants.HF_HUB_OFFLINE)


def _load_hub(spec: str, split: str, revision: str | None) -> LoadedRecords:
    repo_id, config_name = _parse_hf(spec)
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(repo_id, config_name, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - the library's boundary: network, auth, missing data set or split
        message = " ".join(f"{type(e).__name__}: {e}".split())
        if len(message) > 300:
            message = message[:297] + "..."
        if isinstance(e, ValueError) and str(e).startswith("Unknown split"):
            raise DataError(f"no split {split!r} ({e}; choose one with --split)", path=spec, field="--split") from None
        if isinstance(e, ConnectionError) or _offline():
            raise DataError(f"cannot download {spec} (offline?): {message}") from None
        raise DataError(f"cannot load {spec} (split {split!r}"
                        f"{f', revision {revision!r}' if revision else ''}): {message}") from None
    return _from_table(f"{spec}[{split}]", "hf", loaded.with_format("arrow")[:])


@contextmanager
def located(source: LoadedRecords) -> Iterator[None]:
    """Errors raised while validating ``source``'s records name a row, not a line, for a table source (the
    validators count positions as lines)."""
    try:
        yield
    except DataError as e:
        if source.unit != "row" or e.line is None:
            raise
        raise DataError(e.message, path=e.path, row=e.line, field=e.field) from None


# --------------------------------------------------------------------------------------------------
# content hash
# --------------------------------------------------------------------------------------------------


def _tagged(value: Any) -> Any:
    """JSON stand-in for values JSON has no type for (bytes, dates, decimals): their type and repr."""
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).hex()}
    return {"__" + type(value).__name__ + "__": repr(value)}


def records_sha256(records: Sequence[dict]) -> str:
    """sha256 of the records' content: their keys and values, not the file they came from.

    Each record is serialised as JSON with sorted keys (so key order does not matter; ``1`` and ``1.0`` differ),
    one per line. The same records read from JSON Lines, parquet or a ``datasets`` directory hash alike.
    """
    digest = hashlib.sha256()
    dumps = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_tagged).encode
    for record in records:
        digest.update(dumps(record).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def output_format(path, source_kind_: str | None) -> str:
    """The format a selection is written in: from ``path``'s extension when it names one, else the input's."""
    lower = os.fspath(path).lower()
    for suffix, fmt in OUTPUT_EXTENSIONS:
        if lower.endswith(suffix):
            return fmt
    return _OUTPUT_OF_KIND.get(source_kind_ or "json", "jsonl")


def _where(source: LoadedRecords | None, position: int, name: str) -> dict:
    if source is not None and source.unit == "row":
        return {"path": name, "row": position}
    return {"path": name, "line": position}


def _union_keys(records: Sequence[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for key in record:
            keys.setdefault(key, None)
    return list(keys)


def _jsonl(records: Sequence[dict], idx: Sequence[int], positions: Sequence[int], source, name: str) -> bytes:
    from shed_jax.io import dumps

    lines = []
    for i in idx:
        try:
            lines.append(dumps(records[i]))
        except (TypeError, ValueError):
            for key, value in records[i].items():
                try:
                    dumps(value)
                except (TypeError, ValueError) as e:
                    raise DataError(f"cannot be written as JSON ({e}); write the selection as parquet instead "
                                    "(-o OUT.parquet)", field=str(key), **_where(source, positions[i], name)) from None
            raise  # pragma: no cover - a record fails only through one of its values
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _parquet(records: Sequence[dict], idx: Sequence[int], source, name: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if source is not None and source.table is not None:
        table = source.table.take(pa.array(list(idx), type=pa.int64()))
    else:
        columns = {}
        for key in _union_keys(records):
            try:  # the column's type is inferred from every record, so it does not depend on the selection
                full = pa.array([record.get(key) for record in records])
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
                raise DataError(f"cannot be written as a parquet column ({e}); its values must share one type "
                                "(or write the selection as JSON Lines: -o OUT.jsonl)", path=name,
                                field=str(key)) from None
            columns[key] = full.take(pa.array(list(idx), type=pa.int64()))
        table = pa.table(columns) if columns else pa.table({})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    from shed_jax.io import dumps

    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return dumps(value)


def _csv(records: Sequence[dict], idx: Sequence[int], positions: Sequence[int], source, name: str,
         fmt: str) -> bytes:
    columns = list(source.columns) if source is not None and source.columns else _union_keys(records)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    writer.writerow(columns)
    for i in idx:
        record = records[i]
        row = []
        for key in columns:
            try:
                row.append(_csv_cell(record.get(key)))
            except (TypeError, ValueError) as e:
                raise DataError(f"cannot be written as a CSV cell ({e})", field=str(key),
                                **_where(source, positions[i], name)) from None
        writer.writerow(row)
    return buffer.getvalue().encode("utf-8")


def selection_bytes(fmt: str, records: Sequence[dict], idx: Sequence[int], *, positions: Sequence[int],
                    source: LoadedRecords | None, name: str) -> bytes:
    """The bytes of the records ``records[i]`` for ``i`` in ``idx``, in format ``fmt`` (:data:`OUTPUT_FORMATS`).

    JSON Lines: one record per line, keys, key order and values as read. ``jsonl.gz``: the same, gzipped (no
    time stamp, so the bytes are reproducible). parquet: ``source.table.take(idx)`` when the source is a table
    (same schema), else columns inferred from every record (a key missing in a record becomes null). CSV/TSV:
    a header (the source's header, else every key in first-seen order) and one row per record; strings as
    they are, null as an empty cell, other values as JSON.

    Raises:
        DataError: a record has a value the format cannot hold (NaN or bytes in JSON, mixed types in a parquet
            column), naming the record's line or row and the field.
    """
    if fmt in ("jsonl", "jsonl.gz"):
        data = _jsonl(records, idx, positions, source, name)
        return gzip.compress(data, mtime=0) if fmt == "jsonl.gz" else data
    if fmt == "parquet":
        return _parquet(records, idx, source, name)
    if fmt in ("csv", "tsv"):
        return _csv(records, idx, positions, source, name, fmt)
    raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
