"""Data sources besides JSON/JSONL (shed_jax.data._sources): gzip, parquet, CSV/TSV, save_to_disk directories,
hf: hub names, stdin; a selection written in the input's format (or -o's); errors naming the row or line and
field; fingerprints of the records' content (the same data as JSONL and parquet embeds once).
"""
from __future__ import annotations

import csv
import gzip
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from shed_jax import cli, data
from shed_jax.data import DataError, read_instructions, read_validation, write_selection

RECORDS = [{"instruction": f"Task {i}: add {i} and {i + 1}", "input": "" if i % 2 else f"context {i}",
            "output": f"{2 * i + 1}", "id": i, "score": i / 3, "ok": bool(i % 2),
            "tags": [{"name": "math", "weight": i}], "meta": {"source": "gen", "rank": [i, i + 1]}}
           for i in range(12)]
KEEP = [7, 2, 9, 0]


def pairs(obj):
    """Key order and exact types, recursively (1, 1.0 and True all differ)."""
    if isinstance(obj, dict):
        return ("dict", [(k, pairs(v)) for k, v in obj.items()])
    if isinstance(obj, list):
        return ("list", [pairs(v) for v in obj])
    return (type(obj).__name__, repr(obj))


def jsonl_bytes(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def read_back(path, fmt):
    """Records of a written selection in format ``fmt``, read independently of shed_jax."""
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    raw = path.read_bytes()
    if fmt == "jsonl.gz":
        raw = gzip.decompress(raw)
    if fmt in ("csv", "tsv"):
        lines = raw.decode("utf-8").splitlines(keepends=True)
        return [dict(row) for row in csv.DictReader(lines, delimiter="\t" if fmt == "tsv" else ",")]
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def one_line(fn) -> str:
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------
# readers: records exactly as stored, one validation path
# ---------------------------------------------------------------------------------------------------


def test_jsonl_gz_and_json_gz_read_like_the_plain_file(tmp_path):
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(RECORDS)))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(json.dumps(RECORDS, indent=1).encode()))
    for name in ("d.jsonl.gz", "d.json.gz"):
        ds = read_instructions(tmp_path / name)
        assert [pairs(r) for r in ds.records] == [pairs(r) for r in RECORDS]
        assert ds.format == "alpaca" and ds.unit == "line"
    assert read_instructions(tmp_path / "d.jsonl.gz").line_numbers == list(range(1, 13))


def test_parquet_keeps_types_and_nesting(tmp_path):
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "d.parquet")
    ds = read_instructions(tmp_path / "d.parquet")
    assert [pairs(r) for r in ds.records] == [pairs(r) for r in RECORDS]  # ints stay ints, nested survive
    assert ds.unit == "row" and ds.line_numbers == list(range(12)) and ds.source.kind == "parquet"
    assert data.records_sha256(ds.records) == data.records_sha256(RECORDS)


def test_csv_and_tsv_values_are_strings_with_exact_lines(tmp_path):
    rows = [{"instruction": "first", "input": "", "output": "a, b"},
            {"instruction": "second\nspans two lines", "input": "x", "output": "7"},
            {"instruction": "third", "input": "\"quoted\"", "output": "3.0"}]
    for name, delimiter in (("d.csv", ","), ("d.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        ds = read_instructions(tmp_path / name)
        assert ds.records == rows and all(isinstance(v, str) for r in ds.records for v in r.values())
        assert ds.line_numbers == [2, 3, 5]  # the second record spans lines 3-4
        assert ds.source.columns == ("instruction", "input", "output")


def test_save_to_disk_dataset_and_dataset_dict_with_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:8]),
                          "test": datasets.Dataset.from_list(RECORDS[8:])}).save_to_disk(str(tmp_path / "dict"))
    ds = read_instructions(tmp_path / "one")
    assert [pairs(r) for r in ds.records] == [pairs(r) for r in RECORDS] and ds.source.kind == "dataset"
    train = read_instructions(tmp_path / "dict")
    assert train.records == RECORDS[:8] and train.path.endswith("dict[train]")
    test = read_instructions(tmp_path / "dict", split="test")
    assert test.records == RECORDS[8:]
    message = one_line(lambda: read_instructions(tmp_path / "dict", split="validation"))
    assert message.endswith("dict: --split: no split 'validation'; the splits are: train, test "
                            "(choose one with --split)")
    (tmp_path / "plain").mkdir()
    assert "not a data file or a directory written by datasets' save_to_disk" in one_line(
        lambda: read_instructions(tmp_path / "plain"))


def test_validation_set_from_parquet_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    mc = [{"question": f"q{i}", "choices": ["a", "b", "c"], "answer": i % 3} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(mc), tmp_path / "v.parquet")
    valid = read_validation(tmp_path / "v.parquet")
    assert valid.questions == [r["question"] for r in mc] and valid.answers.tolist() == [0, 1, 2, 0, 1]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(mc)}).save_to_disk(str(tmp_path / "vd"))
    assert read_validation(tmp_path / "vd", split="validation").answers.tolist() == [0, 1, 2, 0, 1]
    bad = [dict(r) for r in mc]
    bad[3]["answer"] = 7
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    assert one_line(lambda: read_validation(tmp_path / "bad.parquet")).endswith(
        "bad.parquet: row 3: answer: answer index 7 is out of range for 3 choices (valid: 0..2)")


# ---------------------------------------------------------------------------------------------------
# errors name the row (tables) or line (text files) and the field
# ---------------------------------------------------------------------------------------------------


def test_parquet_errors_name_row_and_field(tmp_path):
    missing = [{"instruction": "a", "response": "b"}, {"instruction": "c", "response": "d"}]
    pq.write_table(pa.Table.from_pylist(missing), tmp_path / "missing.parquet")
    assert one_line(lambda: read_instructions(tmp_path / "missing.parquet", format="alpaca")).startswith(
        f"{tmp_path / 'missing.parquet'}: row 0: output: missing required field")
    nulls = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}]
    pq.write_table(pa.Table.from_pylist(nulls), tmp_path / "null.parquet")
    assert one_line(lambda: read_instructions(tmp_path / "null.parquet")) == (
        f"{tmp_path / 'null.parquet'}: row 1: output: must be a string, got null")
    numbers = [{"instruction": "a", "output": 1}, {"instruction": "c", "output": 2}]
    pq.write_table(pa.Table.from_pylist(numbers), tmp_path / "int.parquet")
    assert one_line(lambda: read_instructions(tmp_path / "int.parquet")) == (
        f"{tmp_path / 'int.parquet'}: row 0: output: must be a string, got number 1")
    dup = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"},
           {"instruction": "a", "output": "b"}]
    pq.write_table(pa.Table.from_pylist(dup), tmp_path / "dup.parquet")
    assert re.search(r"dup\.parquet: row 2: duplicate record: identical to the record at row 0",
                     one_line(lambda: read_instructions(tmp_path / "dup.parquet", duplicates="error")))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    assert "junk.parquet: cannot read parquet" in one_line(lambda: read_instructions(tmp_path / "junk.parquet"))


def test_gzip_and_csv_errors_name_line_and_field(tmp_path):
    lines = jsonl_bytes(RECORDS[:2]) + b'{"instruction": "x", "output": 3}\n'
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(lines))
    assert one_line(lambda: read_instructions(tmp_path / "bad.jsonl.gz")) == (
        f"{tmp_path / 'bad.jsonl.gz'}:3: output: must be a string, got number 3")
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(RECORDS))[:60])
    assert "trunc.jsonl.gz: not a valid gzip file" in one_line(lambda: read_instructions(tmp_path / "trunc.jsonl.gz"))
    (tmp_path / "plain.jsonl.gz").write_bytes(jsonl_bytes(RECORDS))
    assert "not a valid gzip file" in one_line(lambda: read_instructions(tmp_path / "plain.jsonl.gz"))
    (tmp_path / "a.csv").write_text('instruction,output\n"multi\nline",ok\nshort\n', encoding="utf-8")
    assert one_line(lambda: read_instructions(tmp_path / "a.csv")) == (
        f"{tmp_path / 'a.csv'}:4: has 1 fields, the header has 2")
    (tmp_path / "b.csv").write_text("instruction,response\nhi,there\n", encoding="utf-8")
    assert one_line(lambda: read_instructions(tmp_path / "b.csv", format="alpaca")).startswith(
        f"{tmp_path / 'b.csv'}:2: output: missing required field")
    (tmp_path / "c.csv").write_text("instruction,output,output\na,b,c\n", encoding="utf-8")
    assert "c.csv:1: output: duplicate column name" in one_line(lambda: read_instructions(tmp_path / "c.csv"))


def test_revision_only_for_hub_names(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(jsonl_bytes(RECORDS))
    assert "--revision: a revision applies only to hf: data sets" in one_line(
        lambda: read_instructions(tmp_path / "d.jsonl", revision="main"))
    assert "expected hf:OWNER/NAME" in one_line(lambda: read_instructions("hf:just-a-name"))


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """No network: the offline switches of datasets and huggingface_hub (read at import, so set both ways) and
    empty caches, so that load_dataset cannot find the data set anywhere."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))


def test_hub_name_offline_is_one_clear_line(hub_offline, tmp_path):
    message = one_line(lambda: read_instructions("hf:databricks/databricks-dolly-15k"))
    assert message.startswith("cannot download hf:databricks/databricks-dolly-15k (offline?): ")
    result = CliRunner().invoke(cli.cli, ["embed", "hf:databricks/databricks-dolly-15k", "--split", "train",
                                          "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot download hf:databricks/databricks-dolly-15k "
                                                   "(offline?)"), result.stderr
    assert not (tmp_path / "run").exists()


def test_hub_name_goes_through_load_dataset_with_split(hub_offline, tmp_path, monkeypatch):
    """No hub here: ``load_dataset("owner/name")`` also reads a local directory of that name, which stands in for
    the repository, so the call, the split and the records' conversion are exercised offline."""
    (tmp_path / "owner" / "name").mkdir(parents=True)
    (tmp_path / "owner" / "name" / "train.jsonl").write_bytes(jsonl_bytes(RECORDS[:8]))
    (tmp_path / "owner" / "name" / "test.jsonl").write_bytes(jsonl_bytes(RECORDS[8:]))
    monkeypatch.chdir(tmp_path)
    train = read_instructions("hf:owner/name")
    assert train.path == "hf:owner/name[train]" and train.source.kind == "hf" and train.unit == "row"
    assert [pairs(r) for r in train.records] == [pairs(r) for r in RECORDS[:8]]
    assert read_instructions("hf:owner/name", split="test").records == RECORDS[8:]
    message = one_line(lambda: read_instructions("hf:owner/name", split="dev"))
    assert message.startswith("hf:owner/name: --split: no split 'dev'") and "'train', 'test'" in message


# ---------------------------------------------------------------------------------------------------
# writing: the input's format unless -o's extension says otherwise; values exactly
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def sources(tmp_path):
    """The same 12 records (12 rows of strings for CSV) as every kind of source."""
    datasets = pytest.importorskip("datasets")
    paths = {"jsonl": tmp_path / "d.jsonl", "jsonl.gz": tmp_path / "d.jsonl.gz", "parquet": tmp_path / "d.parquet",
             "csv": tmp_path / "d.csv", "dataset": tmp_path / "saved"}
    paths["jsonl"].write_bytes(jsonl_bytes(RECORDS))
    paths["jsonl.gz"].write_bytes(gzip.compress(jsonl_bytes(RECORDS)))
    pq.write_table(pa.Table.from_pylist(RECORDS), paths["parquet"])
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([[r["instruction"], r["input"], r["output"]] for r in RECORDS])
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(paths["dataset"]))
    return paths


@pytest.mark.parametrize("kind, out_name, fmt", [
    ("jsonl", "sel.jsonl", "jsonl"), ("jsonl.gz", "sel.jsonl.gz", "jsonl.gz"), ("jsonl.gz", "sel", "jsonl.gz"),
    ("parquet", "sel.parquet", "parquet"), ("parquet", "sel", "parquet"), ("csv", "sel.csv", "csv"),
    ("csv", "sel", "csv"), ("dataset", "sel", "jsonl"),
    # -o's extension overrides the input's format
    ("parquet", "sel.jsonl", "jsonl"), ("jsonl", "sel.parquet", "parquet"), ("csv", "sel.jsonl.gz", "jsonl.gz"),
    ("dataset", "sel.parquet", "parquet"), ("jsonl", "sel.tsv", "tsv"),
])
def test_selection_format_and_exact_values(sources, tmp_path, kind, out_name, fmt):
    ds = read_instructions(sources[kind])
    out = tmp_path / "out" / out_name
    out.parent.mkdir()
    write_selection(out, ds, np.array(KEEP), scores=[{"index": i} for i in KEEP])
    assert data.selection_format(out, ds) == fmt
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out_name, "sel.scores.jsonl"])
    got = read_back(out, fmt)
    expected = [ds.records[i] for i in KEEP]
    if fmt in ("csv", "tsv") and kind != "csv":  # CSV holds strings: other values are written as JSON
        expected = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in expected]
    assert [pairs(r) for r in got] == [pairs(r) for r in expected]
    assert [json.loads(line)["index"] for line in (out.parent / "sel.scores.jsonl").read_text().splitlines()] == KEEP


def test_parquet_round_trip_keeps_schema_and_metadata(sources, tmp_path):
    original = pq.read_table(sources["parquet"])
    original = original.replace_schema_metadata({**(original.schema.metadata or {}), b"note": b"kept"})
    pq.write_table(original, tmp_path / "meta.parquet")
    ds = read_instructions(tmp_path / "meta.parquet")
    write_selection(tmp_path / "sel.parquet", ds, KEEP)
    back = pq.read_table(tmp_path / "sel.parquet")
    assert back.schema.equals(original.schema, check_metadata=True)
    assert back.equals(original.take(KEEP))


def test_csv_round_trip_is_byte_identical_for_plain_cells(tmp_path):
    text = "instruction,input,output\n" + "".join(f"do {i},,out {i}\n" for i in range(6))
    (tmp_path / "d.csv").write_text(text, encoding="utf-8")
    write_selection(tmp_path / "sel.csv", read_instructions(tmp_path / "d.csv"), [4, 1])
    assert (tmp_path / "sel.csv").read_text(encoding="utf-8") == "instruction,input,output\ndo 4,,out 4\ndo 1,,out 1\n"


def test_unwritable_values_are_named_before_writing(tmp_path):
    records = [{"instruction": "a", "output": "b", "x": 1}, {"instruction": "c", "output": "d", "x": "one"}]
    (tmp_path / "d.jsonl").write_bytes(jsonl_bytes(records))
    ds = read_instructions(tmp_path / "d.jsonl")
    message = one_line(lambda: data.check_selection_writable(tmp_path / "sel.parquet", ds))
    assert message.startswith(f"{tmp_path / 'd.jsonl'}: x: cannot be written as a parquet column")
    pq.write_table(pa.table({"instruction": ["a", "b"], "output": ["c", "d"], "w": [1.0, float("nan")]}),
                   tmp_path / "nan.parquet")
    nan = read_instructions(tmp_path / "nan.parquet")
    assert one_line(lambda: data.check_selection_writable(tmp_path / "sel.jsonl", nan)).startswith(
        f"{tmp_path / 'nan.parquet'}: row 1: w: cannot be written as JSON")
    assert one_line(lambda: data.check_selection_writable(tmp_path / "sel.csv", nan)).startswith(
        f"{tmp_path / 'nan.parquet'}: row 1: w: cannot be written as a CSV cell")
    assert data.check_selection_writable(tmp_path / "sel.parquet", nan) == "parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "nan.parquet"]


def test_scores_path_and_run_dir_names():
    assert data.scores_path("a/sel.jsonl.gz") == "a/sel.scores.jsonl"
    assert data.scores_path("sel.parquet") == "sel.scores.jsonl"
    assert data.source_stem("hf:databricks/databricks-dolly-15k") == "databricks-dolly-15k"
    assert data.source_stem("-") == "stdin" and data.source_stem("/x/train.jsonl.gz") == "train"
    assert data.source_stem("/x/saved/") == "saved"


# ---------------------------------------------------------------------------------------------------
# the command line: stdin, parquet in -> parquet out, the embedding cache across formats
# ---------------------------------------------------------------------------------------------------

from test_cli import FAST, demo, fake_shapley  # noqa: E402,F401  (fixtures shared with tests/test_cli.py)


def invoke(args, **kwargs):
    return CliRunner().invoke(cli.cli, [str(a) for a in args], **kwargs)


def test_refine_from_stdin_keeps_a_copy_and_resumes(demo, tmp_path, fake_embed, fake_shapley):
    run, out = tmp_path / "run", tmp_path / "refined.jsonl"
    raw = demo.train.read_bytes()
    result = invoke(["refine", "-", "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run, "-q",
                     *FAST], input=raw)
    assert result.exit_code == 0, result.output
    assert (run / "stdin.jsonl").read_bytes() == raw
    stored = json.loads((run / "config.json").read_text())
    assert stored["config"]["data"] == str(run / "stdin.jsonl") and stored["resolved"]["data_source"] == "stdin"
    lines = raw.decode("utf-8").splitlines()
    indices = json.loads((run / "selection.json").read_text())["indices"]
    assert out.read_text(encoding="utf-8").splitlines() == [lines[i] for i in indices]
    result = invoke(["refine", "--resume", "--run-dir", run, "--json", "-q"])  # nothing on stdin this time
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["stages"].values()) == {"skipped"}


def test_refine_parquet_in_parquet_out(demo, tmp_path, fake_embed, fake_shapley):
    records = [json.loads(line) for line in demo.train.read_text(encoding="utf-8").splitlines()]
    for i, record in enumerate(records):
        record["row_id"] = i  # an int column that must stay int
    table = pa.Table.from_pylist(records)
    pq.write_table(table, tmp_path / "train.parquet")
    run, out = tmp_path / "run", tmp_path / "refined"  # no extension: the input's format
    result = invoke(["refine", tmp_path / "train.parquet", "--valid", demo.valid, "--ratio", "0.2", "-o", out,
                     "--run-dir", run, "-q", *FAST])
    assert result.exit_code == 0, result.output
    indices = json.loads((run / "selection.json").read_text())["indices"]
    back = pq.read_table(out)
    assert back.schema.equals(table.schema, check_metadata=True) and back.equals(table.take(indices))
    assert (tmp_path / "refined.scores.jsonl").is_file()


def test_corrupted_gzip_is_one_line_and_writes_nothing(tmp_path, fake_embed):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 broken")
    result = invoke(["embed", tmp_path / "bad.jsonl.gz", "--run-dir", tmp_path / "run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"Error: .*bad\.jsonl\.gz: not a valid gzip file", lines[0]), result.stderr
    assert not (tmp_path / "run").exists() and fake_embed == []


def test_same_records_as_parquet_embed_nothing_the_second_time(demo, tmp_path, monkeypatch):
    """The embedding cache is keyed by the texts, and the data fingerprint by the records' content: a JSONL run
    then a parquet run of the same records in a new run directory encodes nothing the second time."""
    from conftest import hashing_embed
    from shed_jax import embed as embed_module

    encoded = []
    monkeypatch.setattr(embed_module, "_get_model", lambda *args, **kwargs: object())
    monkeypatch.setattr(embed_module, "_encode",
                        lambda encoder, texts, **kw: encoded.append(len(texts)) or hashing_embed(list(texts)))
    records = [json.loads(line) for line in demo.train.read_text(encoding="utf-8").splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")
    first = invoke(["embed", demo.train, "--run-dir", tmp_path / "a", "--json", "-q"])
    assert first.exit_code == 0, first.output
    assert encoded and sum(encoded) > 0
    second = invoke(["embed", tmp_path / "train.parquet", "--run-dir", tmp_path / "b", "--json", "-q"])
    assert second.exit_code == 0, second.output
    assert len(encoded) == 1  # nothing encoded by the second run
    assert json.loads(second.stdout)["fingerprint"] == json.loads(first.stdout)["fingerprint"]
    resolved = [json.loads((tmp_path / d / "config.json").read_text())["resolved"] for d in ("a", "b")]
    assert resolved[0]["data_sha256"] == resolved[1]["data_sha256"]
    assert [r["data_source"] for r in resolved] == ["json", "parquet"]
