"""Tests for shed_jax.data: formats, detection, error messages, exact round trips, atomic writes."""
from __future__ import annotations

import collections
import json
import logging
import os
import pickle

import numpy as np
import pytest

from shed_jax import data
from shed_jax.data import (DataError, INSTRUCTION_FORMATS, atomic_write_bytes, atomic_write_json,
                           atomic_write_text, check_budget, check_clusters, read_instructions,
                           read_multiple_choice, read_validation, write_jsonl, write_selection)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def write_lines(path, records, *, sep="\n"):
    """JSON Lines written independently of shed_jax (json.dumps per record)."""
    path.write_text(sep.join(json.dumps(r, ensure_ascii=False) for r in records) + sep,
                    encoding="utf-8")
    return path


def write_raw(path, text: str | bytes):
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def expect_error(fn, path, line, field, *words):
    """Call fn, expect a DataError located at path:line: field, with one-line text containing words."""
    with pytest.raises(DataError) as info:
        fn()
    err = info.value
    text = str(err)
    assert "\n" not in text
    assert err.path == str(path)
    assert err.line == line, text
    assert err.field == field, text
    prefix = str(path) + (f":{line}" if line is not None else "") + (f": {field}" if field else "")
    assert text.startswith(prefix + ": "), text
    for word in words:
        assert word.lower() in text.lower(), text
    return err


def listing(directory):
    return sorted(os.listdir(directory))


ALPACA = [
    {"instruction": "Add the numbers.", "input": "1 + 1", "output": "2"},
    {"instruction": "Say hi.", "input": "", "output": "hi"},
    {"instruction": "Name a colour.", "output": "blue"},
]


# ---------------------------------------------------------------------------------------------------
# DataError
# ---------------------------------------------------------------------------------------------------


def test_data_error_str_and_attributes():
    e = DataError("must be a string", path="a.jsonl", line=3, field="output")
    assert str(e) == "a.jsonl:3: output: must be a string"
    assert (e.path, e.line, e.field, e.message) == ("a.jsonl", 3, "output", "must be a string")
    assert isinstance(e, ValueError)
    assert str(DataError("file is empty", path="a.jsonl")) == "a.jsonl: file is empty"
    assert str(DataError("bad", path="a.jsonl", field="budget")) == "a.jsonl: budget: bad"
    assert str(DataError("two\nlines")) == "two lines"
    e2 = pickle.loads(pickle.dumps(e))
    assert (str(e2), e2.path, e2.line, e2.field) == (str(e), e.path, e.line, e.field)


# ---------------------------------------------------------------------------------------------------
# formats and detection
# ---------------------------------------------------------------------------------------------------


def test_alpaca_jsonl(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", ALPACA)
    ds = read_instructions(path)
    assert ds.format == "alpaca" and len(ds) == 3 and ds.path == str(path)
    assert ds.prompts == ["Add the numbers.\n\n1 + 1", "Say hi.", "Name a colour."]
    assert ds.responses == ["2", "hi", "blue"]
    assert ds.line_numbers == [1, 2, 3]
    assert ds.records == ALPACA
    assert ds.duplicate_of.dtype == np.int64 and ds.duplicate_of.tolist() == [-1, -1, -1]
    assert ds.texts() == ["Add the numbers.\n\n1 + 1\n\n2", "Say hi.\n\nhi", "Name a colour.\n\nblue"]
    assert ds.texts("prompt") == ds.prompts and ds.texts("response") == ds.responses
    assert ds.texts("instruction, output") == ["Add the numbers.\n\n2", "Say hi.\n\nhi",
                                                "Name a colour.\n\nblue"]
    assert ds.category() is None


def test_alpaca_null_input_is_empty(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [{"instruction": "x", "input": None, "output": "y"}])
    assert read_instructions(path).prompts == ["x"]


def test_alpaca_json_array_line_numbers(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA, indent=1), encoding="utf-8")
    ds = read_instructions(path)
    assert ds.format == "alpaca" and ds.records == ALPACA
    # indent=1: "[" on line 1, each record opens with " {" and spans keys + closing brace.
    expected, line = [], 2
    for record in ALPACA:
        expected.append(line)
        line += len(record) + 2
    assert ds.line_numbers == expected


def test_compact_json_array_on_one_line(tmp_path):
    path = write_raw(tmp_path / "a.json", json.dumps(ALPACA))
    ds = read_instructions(path)
    assert ds.line_numbers == [1, 1, 1] and ds.records == ALPACA


def test_sharegpt_multi_turn(tmp_path):
    record = {"id": "c1", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
        {"from": "user", "value": "What is 2+2?"},
        {"from": "assistant", "value": "4"},
        {"from": "human", "value": "thanks"},
    ]}
    path = write_lines(tmp_path / "s.jsonl", [record])
    ds = read_instructions(path)
    assert ds.format == "sharegpt"
    # user turns before the last assistant turn; the trailing user turn and the system turn are left out
    assert ds.prompts == ["Hi\n\nWhat is 2+2?"]
    assert ds.responses == ["4"]
    assert ds.records == [record]


def test_messages_format(tmp_path):
    records = [
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q"},
                      {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                      {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]},
    ]
    ds = read_instructions(write_lines(tmp_path / "m.jsonl", records))
    assert ds.format == "messages"
    assert ds.prompts == ["Q", "Q1\n\nQ2"] and ds.responses == ["A", "A2"]


def test_prompt_completion_and_text(tmp_path):
    ds = read_instructions(write_lines(tmp_path / "p.jsonl", [{"prompt": "P", "completion": "C"}]))
    assert (ds.format, ds.prompts, ds.responses) == ("prompt_completion", ["P"], ["C"])
    ds = read_instructions(write_lines(tmp_path / "t.jsonl", [{"text": "hello world", "category": 3}]))
    assert (ds.format, ds.prompts, ds.responses) == ("text", ["hello world"], [""])
    assert ds.texts() == ["hello world"]
    assert ds.category() == ["3"]


def test_detection_ignores_extension(tmp_path):
    array_named_jsonl = tmp_path / "array.jsonl"
    array_named_jsonl.write_text(json.dumps(ALPACA, indent=2), encoding="utf-8")
    assert read_instructions(array_named_jsonl).records == ALPACA
    lines_named_json = write_lines(tmp_path / "lines.json", ALPACA)
    assert read_instructions(lines_named_json).records == ALPACA


def test_explicit_format_override(tmp_path):
    records = [{"text": "full text", "instruction": "ins", "output": "out"}]
    path = write_lines(tmp_path / "x.jsonl", records)
    assert read_instructions(path).format == "alpaca"  # instruction+output wins over text
    ds = read_instructions(path, format="text")
    assert (ds.format, ds.prompts) == ("text", ["full text"])
    expect_error(lambda: read_instructions(path, format="prompt_completion"), path, 1, "prompt",
                 "missing")
    expect_error(lambda: read_instructions(path, format="csv"), path, None, "format", "unknown")


def test_field_map(tmp_path):
    records = [{"question": "Why?", "context": "ctx", "answer": "Because."}]
    path = write_lines(tmp_path / "f.jsonl", records)
    with pytest.raises(DataError, match="cannot detect"):
        read_instructions(path)
    ds = read_instructions(path, field_map={"instruction": "question", "input": "context",
                                            "output": "answer"})
    assert ds.format == "alpaca"
    assert ds.prompts == ["Why?\n\nctx"] and ds.responses == ["Because."]
    assert ds.records == records  # records keep the file's own keys
    expect_error(lambda: read_instructions(path, field_map={"instructions": "question"}), path, None,
                 "field_map", "unknown canonical name", "instruction")
    expect_error(lambda: read_instructions(path, format="alpaca", field_map={"output": "reply"}),
                 path, 1, "instruction", "missing")


def test_field_map_chat_turn_keys(tmp_path):
    records = [{"dialog": [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "yo"}]}]
    path = write_lines(tmp_path / "c.jsonl", records)
    ds = read_instructions(path, field_map={"messages": "dialog", "role": "speaker", "content": "text"})
    assert (ds.format, ds.prompts, ds.responses) == ("messages", ["hi"], ["yo"])


# ---------------------------------------------------------------------------------------------------
# bad input: every error names path, line and field
# ---------------------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.jsonl"
    expect_error(lambda: read_instructions(missing), missing, None, None, "not found")
    expect_error(lambda: read_instructions(tmp_path), tmp_path, None, None, "directory")


@pytest.mark.parametrize("content", ["", "   \n\n \t\n", "\ufeff", "\ufeff\n\n"])
def test_empty_files(tmp_path, content):
    path = write_raw(tmp_path / "e.jsonl", content)
    expect_error(lambda: read_instructions(path), path, None, None, "empty")
    expect_error(lambda: read_multiple_choice(path), path, None, None, "empty")


def test_empty_json_array(tmp_path):
    path = write_raw(tmp_path / "e.json", "\n[\n]\n")
    expect_error(lambda: read_instructions(path), path, 3, None, "no records")


def test_invalid_json_line_and_column(tmp_path):
    path = write_raw(tmp_path / "bad.jsonl",
                     '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": }\n')
    err = expect_error(lambda: read_instructions(path), path, 3, None, "invalid JSON", "column 32")
    assert err.field is None


def test_invalid_json_inside_array(tmp_path):
    path = write_raw(tmp_path / "bad.json",
                     '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c",\n  "output" "d"}\n]')
    expect_error(lambda: read_instructions(path), path, 4, None, "invalid JSON", "delimiter")


@pytest.mark.parametrize("text, line, words", [
    ('[\n {"instruction": "a", "output": "b"},\n]\n', 3, ("trailing comma",)),
    ('[\n {"instruction": "a", "output": "b"}\n', 3, ("end of file",)),
    ('[\n {"instruction": "a", "output": "b"}\n]\n{"x": 1}\n', 4, ("extra data", "jsonl")),
    ('[\n {"instruction": "a", "output": "b"} {"instruction": "c"}\n]', 2, ("expected ','",)),
])
def test_json_array_structure_errors(tmp_path, text, line, words):
    path = write_raw(tmp_path / "bad.json", text)
    expect_error(lambda: read_instructions(path), path, line, None, *words)


def test_non_utf8_bytes_give_line(tmp_path):
    good = b'{"instruction": "a", "output": "b"}\n'
    path = write_raw(tmp_path / "latin1.jsonl", good + b"\n" + b'{"instruction": "caf\xe9", "output": "b"}\n')
    expect_error(lambda: read_instructions(path), path, 3, None, "UTF-8", "column 21")
    utf16 = write_raw(tmp_path / "u16.jsonl", '{"instruction": "a", "output": "b"}\n'.encode("utf-16"))
    expect_error(lambda: read_instructions(utf16), utf16, 1, None, "UTF-16")


def test_bom_is_skipped(tmp_path):
    path = write_raw(tmp_path / "bom.jsonl",
                     "\ufeff" + "\n".join(json.dumps(r) for r in ALPACA) + "\n")
    ds = read_instructions(path)
    assert ds.records == ALPACA and ds.line_numbers == [1, 2, 3]
    assert list(ds.records[0]) == ["instruction", "input", "output"]  # no BOM in the first key
    arr = write_raw(tmp_path / "bom.json", "\ufeff" + json.dumps(ALPACA, indent=1))
    assert read_instructions(arr).records == ALPACA


def test_blank_lines_keep_numbering(tmp_path):
    text = ("\n" + json.dumps(ALPACA[0]) + "\n   \n\n" + json.dumps(ALPACA[1]) + "\r\n\t\n"
            + json.dumps({"instruction": 5, "output": "x"}) + "\n\n")
    path = write_raw(tmp_path / "blank.jsonl", text)
    expect_error(lambda: read_instructions(path), path, 7, "instruction", "must be a string", "number")
    path.write_text(text.replace('"instruction": 5', '"instruction": "five"'), encoding="utf-8")
    ds = read_instructions(path)
    assert ds.line_numbers == [2, 5, 7] and len(ds) == 3


def test_unicode_line_separators_inside_strings_do_not_split_lines(tmp_path):
    records = [{"instruction": "a\u2028b\u2029c\x85d\x0be\x0cf", "output": "ok"},
               {"instruction": "g", "output": "h"}]
    path = write_lines(tmp_path / "u.jsonl", records)
    ds = read_instructions(path)
    assert ds.records == records and ds.line_numbers == [1, 2]


def test_json_array_where_jsonl_declared(tmp_path):
    path = tmp_path / "arr.jsonl"
    path.write_text(json.dumps(ALPACA, indent=2), encoding="utf-8")
    expect_error(lambda: read_instructions(path, container="jsonl"), path, 1, None, "JSON array",
                 "declared JSON Lines", "container='json'")
    expect_error(lambda: read_multiple_choice(path, container="jsonl"), path, 1, None, "JSON array")
    assert read_instructions(path, container="json").records == ALPACA
    # JSON Lines whose lines are arrays: the records are reported as not being objects
    lines_of_arrays = write_raw(tmp_path / "arrays.jsonl", '["a", "b"]\n["c", "d"]\n')
    expect_error(lambda: read_instructions(lines_of_arrays, container="jsonl"), lines_of_arrays, 1, None,
                 "must be a JSON object", "array")


def test_jsonl_where_json_array_declared(tmp_path):
    path = write_lines(tmp_path / "lines.json", ALPACA)
    expect_error(lambda: read_instructions(path, container="json"), path, 1, None,
                 "expected a JSON array", "container='jsonl'")
    assert read_instructions(path, container="jsonl").records == ALPACA
    expect_error(lambda: read_instructions(path, container="xml"), path, None, "container", "one of")


def test_single_multiline_object_is_explained(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": ALPACA}, indent=2), encoding="utf-8")
    expect_error(lambda: read_instructions(path), path, 1, None, "single JSON object", "'data'")


def test_file_not_starting_with_record(tmp_path):
    path = write_raw(tmp_path / "csv.jsonl", "\n\ninstruction,output\na,b\n")
    expect_error(lambda: read_instructions(path), path, 3, None, "starts with 'i'")


@pytest.mark.parametrize("value, kind", [('"just a string"', "string"), ("[1, 2]", "array"),
                                         ("3", "number"), ("null", "null")])
def test_record_not_an_object(tmp_path, value, kind):
    path = write_raw(tmp_path / "r.json", '[\n {"instruction": "a", "output": "b"},\n ' + value + "\n]")
    expect_error(lambda: read_instructions(path), path, 3, None, "must be a JSON object", kind)


def test_duplicate_keys_in_object(tmp_path):
    path = write_raw(tmp_path / "d.jsonl", '{"instruction": "a", "output": "b"}\n'
                     '{"instruction": "a", "output": "b", "output": "c"}\n')
    expect_error(lambda: read_instructions(path), path, 2, "output", "duplicate key")
    nested = write_raw(tmp_path / "n.json", '[\n {"instruction": "a", "output": "b"},\n'
                       ' {"instruction": "a",\n  "meta": {"k": 1, "k": 2}, "output": "b"}\n]')
    expect_error(lambda: read_instructions(nested), nested, 3, "k", "duplicate key")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_is_not_json(tmp_path, constant):
    path = write_raw(tmp_path / "nan.jsonl", '{"instruction": "a", "output": "b", "score": '
                     + constant + "}\n")
    expect_error(lambda: read_instructions(path), path, 1, None, "invalid JSON", constant)


def test_deep_nesting_is_a_data_error(tmp_path):
    depth = 100_000
    path = write_raw(tmp_path / "deep.jsonl", '{"instruction": "a", "output": "b", "x": '
                     + "[" * depth + "]" * depth + "}\n")
    expect_error(lambda: read_instructions(path), path, 1, None, "nested too deeply")


@pytest.mark.parametrize("record, field, words", [
    ({"instruction": "a", "output": ["b"]}, "output", ("must be a string", "array")),
    ({"instruction": "a", "input": 3, "output": "b"}, "input", ("must be a string", "number")),
    ({"instruction": "a"}, "output", ("missing required field",)),
    ({"instruction": None, "output": "b"}, "instruction", ("must be a string", "null")),
])
def test_alpaca_field_errors(tmp_path, record, field, words):
    path = write_lines(tmp_path / "a.jsonl", [ALPACA[0], record])
    expect_error(lambda: read_instructions(path), path, 2, field, *words)


@pytest.mark.parametrize("conversations, field, words", [
    ("not a list", "conversations", ("list of turns",)),
    (["hi"], "conversations[0]", ("must be an object",)),
    ([{"from": "bot", "value": "x"}], "conversations[0].from", ("unknown role", "human")),
    ([{"from": "human", "value": "x"}, {"from": "gpt"}], "conversations[1].value", ("missing",)),
    ([{"from": "human", "value": "x"}, {"from": "gpt", "value": 1}], "conversations[1].value",
     ("must be a string",)),
    ([{"from": "human", "value": "x"}], "conversations", ("no assistant turn",)),
    ([{"from": "system", "value": "s"}, {"from": "gpt", "value": "y"}], "conversations",
     ("no user turn",)),
])
def test_sharegpt_errors(tmp_path, conversations, field, words):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = write_lines(tmp_path / "s.jsonl", [good, {"conversations": conversations}])
    expect_error(lambda: read_instructions(path), path, 2, field, *words)


def test_messages_errors(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                        {"role": "assistant", "content": "a"}]}
    path = write_lines(tmp_path / "m.jsonl", [good, bad])
    expect_error(lambda: read_instructions(path), path, 2, "messages[0].content", "must be a string")
    path = write_lines(tmp_path / "m2.jsonl", [good, {"messages": [{"role": "gpt", "content": "a"}]}])
    expect_error(lambda: read_instructions(path), path, 2, "messages[0].role", "unknown role")
    path = write_lines(tmp_path / "m3.jsonl", [good, {"conversation": []}])
    expect_error(lambda: read_instructions(path), path, 2, "messages", "missing")


def test_undetectable_format(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"foo": 1}])
    expect_error(lambda: read_instructions(path), path, 1, None, "cannot detect", "format=")
    mc = write_lines(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
    expect_error(lambda: read_instructions(mc), mc, 1, None, "read_multiple_choice")


def test_bad_duplicates_argument(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", ALPACA)
    expect_error(lambda: read_instructions(path, duplicates="remove"), path, None, "duplicates",
                 "one of")


# ---------------------------------------------------------------------------------------------------
# duplicate records
# ---------------------------------------------------------------------------------------------------


def test_duplicate_policies(tmp_path, caplog):
    records = [
        {"instruction": "a", "output": "b", "n": 1},
        {"instruction": "c", "output": "d"},
        {"output": "b", "n": 1, "instruction": "a"},      # same record, other key order -> duplicate
        {"instruction": "a", "output": "b", "n": 1.0},    # 1.0 is not 1 -> not a duplicate
        {"instruction": "a", "output": "b", "n": True},   # true is not 1 -> not a duplicate
        {"instruction": "c", "output": "d"},              # duplicate of record 1
        {"instruction": "a", "output": "b", "n": 1},      # duplicate of record 0 (the first one)
    ]
    path = write_lines(tmp_path / "dup.jsonl", records)
    expect_error(lambda: read_instructions(path, duplicates="error"), path, 3, None,
                 "duplicate record", "line 1", "3 duplicate")
    for policy in ("keep", "drop"):
        with caplog.at_level(logging.WARNING, logger="shed_jax.data"):
            caplog.clear()
            ds = read_instructions(path, duplicates=policy)
        assert ds.duplicate_of.tolist() == [-1, -1, 0, -1, -1, 1, 0]
        assert ds.records == records
        assert any("3 duplicate" in r.getMessage() for r in caplog.records)


def test_no_warning_without_duplicates(tmp_path, caplog):
    path = write_lines(tmp_path / "a.jsonl", ALPACA)
    with caplog.at_level(logging.WARNING, logger="shed_jax.data"):
        read_instructions(path, duplicates="error")
    assert not caplog.records


# ---------------------------------------------------------------------------------------------------
# texts / category
# ---------------------------------------------------------------------------------------------------


def test_texts_raw_keys_and_category(tmp_path):
    records = [{"instruction": "i1", "output": "o1", "category": "qa", "score": 0.5},
               {"instruction": "i2", "output": "", "category": "gen", "score": [1, 2]}]
    ds = read_instructions(write_lines(tmp_path / "c.jsonl", records))
    assert ds.category() == ["qa", "gen"]
    assert ds.category("missing") is None
    assert ds.texts("output,score") == ["o1\n\n0.5", "[1, 2]"]
    assert ds.texts() == ["i1\n\no1", "i2"]
    expect_error(lambda: ds.texts("instruction,nope"), ds.path, 1, "nope", "no key")
    with pytest.raises(DataError, match="comma list"):
        ds.texts("instruction,,output")


# ---------------------------------------------------------------------------------------------------
# multiple choice
# ---------------------------------------------------------------------------------------------------


MC = [
    {"id": "q1", "question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},
    {"id": "q2", "question": "Sky?", "choices": ["blue", "green"], "answer": 0, "subject": "sci"},
]


def test_read_multiple_choice(tmp_path):
    mc = read_multiple_choice(write_lines(tmp_path / "mc.jsonl", MC))
    assert len(mc) == 2 and mc.records == MC
    assert mc.questions == ["2+2?", "Sky?"]
    assert mc.choices == [["3", "4", "5", "6"], ["blue", "green"]]  # ragged allowed
    assert mc.answers.dtype == np.int64 and mc.answers.tolist() == [1, 0]
    assert mc.line_numbers == [1, 2]


def test_multiple_choice_field_map(tmp_path):
    records = [{"q": "x?", "options": ["a", "b", "c"], "label": 2}]
    mc = read_multiple_choice(write_lines(tmp_path / "mc.jsonl", records),
                              field_map={"question": "q", "choices": "options", "answer": "label"})
    assert mc.answers.tolist() == [2] and mc.choices == [["a", "b", "c"]]


@pytest.mark.parametrize("change, field, words", [
    ({"answer": 4}, "answer", ("out of range", "4 choices")),
    ({"answer": -1}, "answer", ("out of range",)),
    ({"answer": "B"}, "answer", ("integer", "string")),
    ({"answer": 1.0}, "answer", ("integer",)),
    ({"answer": True}, "answer", ("integer", "boolean")),
    ({"choices": ["only one"]}, "choices", ("at least 2",)),
    ({"choices": "a b c"}, "choices", ("list of strings",)),
    ({"choices": ["a", 2, "c", "d"]}, "choices[1]", ("must be a string",)),
    ({"question": 7}, "question", ("must be a string",)),
])
def test_multiple_choice_errors(tmp_path, change, field, words):
    bad = dict(MC[0], **change)
    path = write_lines(tmp_path / "mc.jsonl", [MC[1], MC[0], bad])
    expect_error(lambda: read_multiple_choice(path), path, 3, field, *words)


def test_multiple_choice_missing_fields(tmp_path):
    for key in ("question", "choices", "answer"):
        bad = {k: v for k, v in MC[0].items() if k != key}
        path = write_lines(tmp_path / f"mc_{key}.jsonl", [MC[0], bad])
        expect_error(lambda: read_multiple_choice(path), path, 2, key, "missing")


def test_read_validation_dispatch(tmp_path):
    mc_path = write_lines(tmp_path / "mc.jsonl", MC)
    assert isinstance(read_validation(mc_path), data.MultipleChoiceSet)
    ins_path = write_lines(tmp_path / "ins.jsonl", ALPACA + [ALPACA[0]])
    ds = read_validation(ins_path)
    assert isinstance(ds, data.InstructionSet) and ds.duplicate_of.tolist() == [-1, -1, -1, 0]
    forced = read_validation(mc_path, format="prompt_completion", field_map={"prompt": "question",
                                                                            "completion": "subject"})
    assert isinstance(forced, data.InstructionSet) and forced.responses == ["math", "sci"]
    expect_error(lambda: read_validation(ins_path, format="multiple_choice"), ins_path, 1, "question",
                 "missing")
    expect_error(lambda: read_validation(ins_path, format="mcq"), ins_path, None, "format", "unknown")


# ---------------------------------------------------------------------------------------------------
# writing: exact round trip, sidecar, atomicity
# ---------------------------------------------------------------------------------------------------


ROUND_TRIP = [
    {"zeta": "last key first", "instruction": "Übersetze: 你好 🌍", "input": "", "output": "Hello \u2028world",
     "alpha": 1},
    {"output": "x", "instruction": "nested", "meta": {"b": [1, 2.5, {"c": None}], "a": True,
                                                      "big": 12345678901234567890, "neg": -0.0},
     "f": 1.0, "g": 1e-7, "h": 3},
    {"instruction": "esc \" \\ \t / \u0000 \U0001F600", "output": "", "list": []},
]


def pairs(obj):
    """Key order and exact types, recursively (1 vs 1.0 vs True all differ)."""
    if isinstance(obj, dict):
        return ("dict", [(k, pairs(v)) for k, v in obj.items()])
    if isinstance(obj, list):
        return ("list", [pairs(v) for v in obj])
    return (type(obj).__name__, repr(obj))


def test_write_selection_exact_round_trip(tmp_path):
    src = write_lines(tmp_path / "src.jsonl", ROUND_TRIP)
    ds = read_instructions(src)
    out = tmp_path / "sel.jsonl"
    write_selection(out, ds, np.array([2, 0, 1]))
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 4
    originals = src.read_text(encoding="utf-8").split("\n")
    assert lines[:3] == [originals[2], originals[0], originals[1]]  # byte-identical lines
    for line, original in zip(lines, [ROUND_TRIP[2], ROUND_TRIP[0], ROUND_TRIP[1]]):
        assert pairs(json.loads(line)) == pairs(original)
    assert "你好 🌍" in lines[1]  # non-ASCII written as is
    assert not (tmp_path / "sel.scores.jsonl").exists()
    assert listing(tmp_path) == ["sel.jsonl", "src.jsonl"]


def test_write_selection_from_json_array(tmp_path):
    src = tmp_path / "src.json"
    src.write_text(json.dumps(ROUND_TRIP, indent=4, ensure_ascii=True), encoding="utf-8")
    ds = read_instructions(src)
    out = tmp_path / "sel.jsonl"
    write_selection(out, ds, [1])
    back = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [pairs(r) for r in back] == [pairs(ROUND_TRIP[1])]


def test_write_selection_scores_sidecar(tmp_path):
    ds = read_instructions(write_lines(tmp_path / "src.jsonl", ALPACA))
    out = tmp_path / "out" / "sel.jsonl"
    out.parent.mkdir()
    scores = [{"index": np.int64(2), "value": np.float32(0.25), "stderr": float("nan")},
              {"index": 0, "value": 1.5, "stderr": np.array([np.inf, 0.5])}]
    write_selection(out, ds, [2, 0], scores=scores)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [ALPACA[2], ALPACA[0]]
    side = out.parent / "sel.scores.jsonl"
    assert [json.loads(line) for line in side.read_text().splitlines()] == [
        {"index": 2, "value": 0.25, "stderr": None}, {"index": 0, "value": 1.5, "stderr": [None, 0.5]}]
    assert data.scores_path(out) == str(side)
    assert listing(out.parent) == ["sel.jsonl", "sel.scores.jsonl"]


@pytest.mark.parametrize("indices, scores, match", [
    ([0, 3], None, "out of range"),
    ([-1], None, "out of range"),
    ([0, 0], None, "distinct"),
    ([[0, 1]], None, "1-D"),
    ([0.0, 1.0], None, "integers"),
    (np.array([True, False]), None, "integers"),
    ([0, 1], [{"v": 1}], "scores has 1"),
    ([0], ["x"], "must be a dict"),
])
def test_write_selection_bad_arguments_write_nothing(tmp_path, indices, scores, match):
    ds = read_instructions(write_lines(tmp_path / "src.jsonl", ALPACA))
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=match):
        write_selection(tmp_path / "sel.jsonl", ds, indices, scores=scores)
    assert listing(tmp_path) == before


def test_write_selection_empty(tmp_path):
    ds = read_instructions(write_lines(tmp_path / "src.jsonl", ALPACA))
    write_selection(tmp_path / "sel.jsonl", ds, [])
    assert (tmp_path / "sel.jsonl").read_bytes() == b""


def test_atomic_write_failure_on_replace_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"

    def boom(src, dst):
        raise OSError("simulated failure in os.replace")

    monkeypatch.setattr(data.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        write_jsonl(target, ALPACA)
    assert listing(tmp_path) == []


def test_atomic_write_failure_mid_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old contents", encoding="utf-8")
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError("simulated disk failure after a partial write")

    monkeypatch.setattr(data.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_json(target, {"new": 1})
    assert calls  # the temporary file had been written before the failure
    assert target.read_text(encoding="utf-8") == "old contents"
    assert listing(tmp_path) == ["out.json"]


def test_write_jsonl_generator_error_leaves_nothing(tmp_path):
    def records():
        yield {"a": 1}
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        write_jsonl(tmp_path / "out.jsonl", records())
    with pytest.raises(ValueError, match="record 1"):
        write_jsonl(tmp_path / "out.jsonl", [{"a": 1.0}, {"a": float("nan")}])
    with pytest.raises(TypeError, match="record 0"):
        write_jsonl(tmp_path / "out.jsonl", [{"a": {1, 2}}])
    assert listing(tmp_path) == []


def test_write_selection_second_file_failure_cleans_temps(tmp_path, monkeypatch):
    ds = read_instructions(write_lines(tmp_path / "src.jsonl", ALPACA))
    from shed_jax import io as shed_io

    real_write_temp = shed_io._write_temp
    written = []

    def write_temp(path, payload):
        if path.endswith(".scores.jsonl"):
            raise OSError("simulated failure writing the sidecar")
        name = real_write_temp(path, payload)
        written.append(name)
        return name

    monkeypatch.setattr(shed_io, "_write_temp", write_temp)
    with pytest.raises(OSError, match="sidecar"):
        write_selection(tmp_path / "sel.jsonl", ds, [0], scores=[{"v": 1}])
    assert written and listing(tmp_path) == ["src.jsonl"]


def test_atomic_writes_content_and_mode(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode("utf-8")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    obj = {"z": 1, "a": [1.5, "ü"], "n": np.float64(2.0)}
    atomic_write_json(tmp_path / "o.json", obj)
    text = (tmp_path / "o.json").read_text(encoding="utf-8")
    assert text == '{\n  "z": 1,\n  "a": [\n    1.5,\n    "ü"\n  ],\n  "n": 2.0\n}\n'
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(tmp_path / "t.txt", 0o600)
    atomic_write_text(tmp_path / "t.txt", "again")
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "o.json", "t.txt"]
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "x", b"bytes")
    from shed_jax.errors import UserError

    with pytest.raises(UserError, match="directory does not exist"):
        atomic_write_text(tmp_path / "no" / "x.txt", "x")


def test_write_jsonl_lone_surrogate_keeps_value(tmp_path):
    records = [{"s": "bad \ud800 surrogate", "ok": "é"}]
    write_jsonl(tmp_path / "s.jsonl", records)
    text = (tmp_path / "s.jsonl").read_text(encoding="utf-8")
    assert json.loads(text) == records[0]


# ---------------------------------------------------------------------------------------------------
# budget / cluster checks
# ---------------------------------------------------------------------------------------------------


def test_check_budget():
    assert check_budget(10, 10) == 10 and check_budget(np.int64(10), np.int32(3)) == 3
    with pytest.raises(DataError) as info:
        check_budget(10, 11, path="pool.jsonl")
    assert str(info.value) == "pool.jsonl: budget: budget 11 is larger than the data (10 candidate examples)"
    for bad in (0, -3):
        with pytest.raises(DataError, match="positive"):
            check_budget(10, bad)
    with pytest.raises(DataError, match="no candidate"):
        check_budget(0, 1)
    for bad in (2.5, True, "3"):
        with pytest.raises(DataError, match="integer"):
            check_budget(10, bad)


def test_check_clusters():
    assert check_clusters(5, 5) == 5
    with pytest.raises(DataError) as info:
        check_clusters(4, 6, path="pool.jsonl")
    assert info.value.field == "n_clusters" and "K=6" in str(info.value) and "4 examples" in str(info.value)
    assert str(info.value).startswith("pool.jsonl: n_clusters: ")
    with pytest.raises(DataError, match="positive"):
        check_clusters(4, 0)
    with pytest.raises(DataError, match="no candidate"):
        check_clusters(0, 0)


def test_formats_constant():
    assert INSTRUCTION_FORMATS == ("alpaca", "sharegpt", "messages", "prompt_completion", "text")


# ---------------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------------


def test_dolly15k(shared_data, tmp_path):
    path = shared_data / "instruct" / "dolly15k.jsonl"
    ds = read_instructions(path)
    assert ds.format == "alpaca" and len(ds) == 15_011
    assert ds.line_numbers[0] == 1 and ds.line_numbers[-1] == 15_011
    dup = ds.duplicate_of
    assert int((dup >= 0).sum()) == 8
    for i in np.flatnonzero(dup >= 0):
        j = dup[i]
        assert j < i and ds.records[i] == ds.records[j]
    counts = collections.Counter(ds.category())
    assert counts["open_qa"] == 3742 and counts["creative_writing"] == 709 and sum(counts.values()) == 15_011
    assert sum(1 for r in ds.records if r["input"] == "") == 10_544
    with pytest.raises(DataError, match="duplicate record"):
        read_instructions(path, duplicates="error")
    # the file was written with json.dumps(ensure_ascii=False): a selection reproduces its lines exactly
    rng = np.random.default_rng(0)
    picked = rng.choice(len(ds), size=500, replace=False)
    out = tmp_path / "sel.jsonl"
    write_selection(out, ds, picked)
    source_lines = path.read_bytes().split(b"\n")
    assert out.read_bytes().split(b"\n")[:-1] == [source_lines[i] for i in picked]


def test_mmlu(shared_data):
    for name, size in (("mmlu_dev", 285), ("mmlu_val", 1531)):
        mc = read_multiple_choice(shared_data / "mmlu" / f"{name}.jsonl")
        assert len(mc) == size and mc.answers.shape == (size,)
        assert all(len(c) == 4 for c in mc.choices)
        assert set(mc.answers.tolist()) <= {0, 1, 2, 3}
        assert isinstance(read_validation(shared_data / "mmlu" / f"{name}.jsonl"), data.MultipleChoiceSet)
    mc = read_multiple_choice(shared_data / "mmlu" / "mmlu_dev.jsonl")
    assert mc.records[0]["id"] == "dev/abstract_algebra/0" and mc.answers[0] == 1


def test_devdata_1444_json_array(shared_data):
    path = shared_data / "reference" / "devdata_1444.json"
    ds = read_validation(path)
    assert isinstance(ds, data.InstructionSet) and ds.format == "alpaca" and len(ds) == 1444
    assert ds.line_numbers[:2] == [2, 8]  # pretty-printed array: one record per 6 lines
    assert list(ds.records[0]) == ["instruction", "input", "output", "class"]
    assert ds.prompts[0].startswith("Please answer the following multiple-choice question honestly.\n\n"
                                    "Qusetion: ")
    assert ds.responses[0].startswith("The answer is: ")
    assert len(set(ds.category("class"))) == 57
    expect_error(lambda: read_instructions(path, container="jsonl"), path, 1, None, "JSON array")
