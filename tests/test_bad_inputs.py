"""A corpus of bad inputs (issue 10): each one gives exit status 2, exactly one line on stderr naming the
problem (file + line + field, or the option), and writes nothing: no run directory, no cache entry, no
output, and no embedding is computed.

The corpus is data: each case is a function that writes its files into a fresh directory and returns the
arguments to change and the pattern the error line must match. ``shed refine`` runs in-process (click's
CliRunner) on tiny files; every error comes from the checks before the first stage, so the corpus takes
seconds. A few inputs are legitimately accepted (a UTF-8 byte order mark, CRLF line ends, exact duplicate
records): those are tested for the right behaviour instead, at the end.
"""
from __future__ import annotations

import json
import os
import re
import stat

import pytest
from click.testing import CliRunner

from shed_jax import cli

N_TRAIN = 12


def _train_records():
    return [{"instruction": f"Explain topic number {i} in one sentence", "input": "",
             "output": f"Topic {i} is about item {i * 7}."} for i in range(N_TRAIN)]


def _valid_records():
    return [{"question": f"Which number is {i}?", "choices": [str(i), str(i + 1), str(i + 2)], "answer": 0}
            for i in range(4)]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


GOOD_TRAIN = jsonl(_train_records())
GOOD_VALID = jsonl(_valid_records())


def base_args(d):
    return {"DATA": d / "train.jsonl", "--valid": d / "valid.jsonl", "--ratio": "0.5", "-o": d / "out.jsonl",
            "--run-dir": d / "run", "--clusters": "3", "--permutations": "2"}


def as_argv(args: dict) -> list[str]:
    argv = ["refine", str(args.pop("DATA"))]
    for key, value in args.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            argv += [key] if item is True else [key, str(item)]
    return argv + ["-q"]


def train_lines(d, lines: list[str] | str | bytes):
    """Write train.jsonl: a list of lines (appended to 2 good ones), or raw text/bytes."""
    path = d / "train.jsonl"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    elif isinstance(lines, str):
        path.write_text(lines, encoding="utf-8")
    else:
        path.write_text(jsonl(_train_records()[:2]) + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def valid_lines(d, lines: list[str] | str):
    path = d / "valid.jsonl"
    path.write_text(lines if isinstance(lines, str) else
                    jsonl(_valid_records()[:1]) + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record(**fields):
    return json.dumps({"instruction": "Do it", "input": "", "output": "Done", **fields})


# Each case: (name, setup(d) -> dict of argument overrides (None removes), regex the error line must match).
CASES = []


def case(name, pattern):
    def register(setup):
        CASES.append(pytest.param(setup, pattern, id=name))
        return setup
    return register


# -- malformed JSON / JSONL -------------------------------------------------------------------------------
@case("jsonl-unterminated-object", r"train\.jsonl:3: invalid JSON")
def _(d): train_lines(d, ['{"instruction": "x", "output": "y"'])


@case("jsonl-bare-word", r"train\.jsonl:3: invalid JSON")
def _(d): train_lines(d, ['{"instruction": "x", "output": oops}'])


@case("jsonl-single-quotes", r"train\.jsonl:4: invalid JSON")
def _(d): train_lines(d, [record(), "{'instruction': 'x', 'output': 'y'}"])


@case("jsonl-trailing-comma", r"train\.jsonl:3: invalid JSON")
def _(d): train_lines(d, ['{"instruction": "x", "output": "y",}'])


@case("jsonl-two-objects-on-a-line", r"train\.jsonl:3: invalid JSON: Extra data")
def _(d): train_lines(d, [record() + " " + record()])


@case("json-array-missing-bracket", r"train\.jsonl:\d+: invalid JSON: unexpected end of file")
def _(d): train_lines(d, "[\n" + ",\n".join(json.dumps(r) for r in _train_records()) + "\n")


@case("json-array-trailing-comma", r"train\.jsonl:\d+: invalid JSON: trailing comma")
def _(d): train_lines(d, "[\n" + ",\n".join(json.dumps(r) for r in _train_records()) + ",\n]\n")


@case("json-array-empty", r"train\.jsonl:1: the JSON array has no records")
def _(d): train_lines(d, "[]\n")


@case("record-is-an-array", r"train\.jsonl:3: each record must be a JSON object, got array")
def _(d): train_lines(d, ['["instruction", "output"]'])


@case("record-is-a-number", r"train\.jsonl:3: each record must be a JSON object, got number")
def _(d): train_lines(d, ["42"])


@case("file-starts-with-a-string", r"train\.jsonl:1: expected a JSON array .* starts with '\"'")
def _(d): train_lines(d, '"just a string"\n')


@case("single-multiline-object", r"train\.jsonl:1: file is a single JSON object spanning several lines")
def _(d): train_lines(d, json.dumps({"data": _train_records()}, indent=2))


@case("duplicate-key-in-object", r"train\.jsonl:3: output: duplicate key 'output'")
def _(d): train_lines(d, ['{"instruction": "x", "output": "y", "output": "z"}'])


@case("nested-too-deeply", r"train\.jsonl:3: invalid JSON: values nested too deeply")
def _(d): train_lines(d, ['{"instruction": "x", "output": "y", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"])


# -- literals JSON does not have, encodings ----------------------------------------------------------------
@case("nan-literal", r"train\.jsonl:3: invalid JSON: NaN is not a JSON value")
def _(d): train_lines(d, ['{"instruction": "x", "output": "y", "score": NaN}'])


@case("infinity-literal", r"train\.jsonl:3: invalid JSON: Infinity is not a JSON value")
def _(d): train_lines(d, ['{"instruction": "x", "output": "y", "score": Infinity}'])


@case("minus-infinity-literal", r"train\.jsonl:4: invalid JSON: -Infinity is not a JSON value")
def _(d): train_lines(d, [record(), '{"instruction": "x", "output": "y", "score": -Infinity}'])


@case("non-utf8-latin1", r"train\.jsonl:3: invalid UTF-8 byte b'\\xe9' at column 21")
def _(d): train_lines(d, GOOD_TRAIN.encode().split(b"\n", 2)[0] + b"\n" + GOOD_TRAIN.encode().split(b"\n")[1]
                      + b'\n{"instruction": "caf\xe9", "output": "y"}\n')


@case("utf16-with-bom", r"train\.jsonl:1: file is UTF-16 .*save it as UTF-8")
def _(d): train_lines(d, GOOD_TRAIN.encode("utf-16"))


@case("fifty-megabyte-line", r"train\.jsonl:3: invalid JSON: Unterminated string")
def _(d): train_lines(d, ['{"instruction": "' + "a" * (50 * 1024 * 1024)])


# -- wrong types, missing and empty fields ----------------------------------------------------------------
@case("output-is-a-number", r"train\.jsonl:3: output: must be a string, got number 3")
def _(d): train_lines(d, ['{"instruction": "x", "output": 3}'])


@case("instruction-is-null", r"train\.jsonl:3: instruction: must be a string, got null$")
def _(d): train_lines(d, ['{"instruction": null, "output": "y"}'])


@case("instruction-is-a-list", r"train\.jsonl:3: instruction: must be a string, got array")
def _(d): train_lines(d, ['{"instruction": ["x"], "output": "y"}'])


@case("input-is-an-object", r"train\.jsonl:3: input: must be a string, got object")
def _(d): train_lines(d, ['{"instruction": "x", "input": {"a": 1}, "output": "y"}'])


@case("missing-output", r"train\.jsonl:3: output: missing required field")
def _(d): train_lines(d, ['{"instruction": "no output here"}'])


@case("empty-record", r"train\.jsonl:3: instruction: missing required field")
def _(d): train_lines(d, ["{}"])


@case("empty-instruction-and-output", r"train\.jsonl:3: record has no text")
def _(d): train_lines(d, ['{"instruction": "", "input": "", "output": ""}'])


@case("whitespace-only-text", r"train\.jsonl:3: record has no text")
def _(d): train_lines(d, ['{"instruction": "  \\n", "output": "\\t"}'])


@case("sharegpt-turns-not-a-list", r"train\.jsonl:2: conversations: must be a list of turns, got string")
def _(d): train_lines(d, jsonl([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
                                {"conversations": "human: hi"}]))


@case("sharegpt-unknown-role", r"train\.jsonl:2: .*unknown role 'robot'")
def _(d): train_lines(d, jsonl([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
                                {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}]))


@case("messages-no-assistant-turn", r"train\.jsonl:2: messages: the conversation has no assistant turn")
def _(d): train_lines(d, jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                                {"messages": [{"role": "user", "content": "hi"}]}]))


@case("format-undetectable", r"train\.jsonl:1: cannot detect the record format .*--format")
def _(d): train_lines(d, jsonl([{"question": "q", "reply": "r"}]))


@case("text-key-missing", r"train\.jsonl:3: topic: record has no key 'topic'")
def _(d):
    train_lines(d, [json.dumps({"instruction": "x", "output": "y"})])
    (d / "train.jsonl").write_text(jsonl([{**r, "topic": "t"} for r in _train_records()[:2]])
                                   + json.dumps({"instruction": "x", "output": "y"}) + "\n")
    return {"--text": "topic"}


@case("field-map-to-a-missing-key", r"train\.jsonl:1: cannot detect the record format .*instruction\+answer")
def _(d): return {"--field-map": "output=answer"}


@case("duplicates-error", r"train\.jsonl:3: duplicate record: identical to the record at line 1")
def _(d):
    train_lines(d, [json.dumps(_train_records()[0])])
    return {"--duplicates": "error"}


# -- empty files, not-a-file --------------------------------------------------------------------------------
@case("empty-file", r"train\.jsonl: file is empty")
def _(d): train_lines(d, b"")


@case("blank-lines-only", r"train\.jsonl: file is empty")
def _(d): train_lines(d, "\n  \n\t\n")


@case("data-is-a-directory", r"train\.jsonl: is a directory")
def _(d):
    os.unlink(d / "train.jsonl")
    (d / "train.jsonl").mkdir()


@case("data-is-a-fifo", r"train\.jsonl: is not a regular file \(a FIFO\)")
def _(d):
    os.unlink(d / "train.jsonl")
    os.mkfifo(d / "train.jsonl")


@case("data-not-found", r"nope\.jsonl: file not found")
def _(d): return {"DATA": d / "nope.jsonl"}


@case("data-dangling-symlink", r"train\.jsonl: file not found")
def _(d):
    os.unlink(d / "train.jsonl")
    os.symlink(d / "gone.jsonl", d / "train.jsonl")


@case("data-symlink-loop", r"loop\.jsonl: symbolic link loop")
def _(d):
    os.symlink(d / "loop2.jsonl", d / "loop.jsonl")
    os.symlink(d / "loop.jsonl", d / "loop2.jsonl")
    return {"DATA": d / "loop.jsonl"}


@case("data-unreadable", r"train\.jsonl: permission denied")
def _(d):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file (nothing to test)")
    os.chmod(d / "train.jsonl", 0)


# -- validation file ---------------------------------------------------------------------------------------
@case("valid-answer-out-of-range", r"valid\.jsonl:2: answer: answer index 3 is out of range for 3 choices")
def _(d): valid_lines(d, [json.dumps({"question": "q", "choices": ["a", "b", "c"], "answer": 3})])


@case("valid-negative-answer", r"valid\.jsonl:2: answer: answer index -1 is out of range")
def _(d): valid_lines(d, [json.dumps({"question": "q", "choices": ["a", "b"], "answer": -1})])


@case("valid-one-choice", r"valid\.jsonl:2: choices: needs at least 2 choices, got 1")
def _(d): valid_lines(d, [json.dumps({"question": "q", "choices": ["a"], "answer": 0})])


@case("valid-answer-is-a-float", r"valid\.jsonl:2: answer: must be an integer index")
def _(d): valid_lines(d, [json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1.0})])


@case("valid-choices-not-strings", r"valid\.jsonl:2: choices\[1\]: must be a string, got number")
def _(d): valid_lines(d, [json.dumps({"question": "q", "choices": ["a", 2], "answer": 0})])


@case("valid-malformed-json", r"valid\.jsonl:2: invalid JSON")
def _(d): valid_lines(d, ['{"question": "q", "choices": ["a", "b"], "answer": 0'])


@case("valid-empty", r"valid\.jsonl: file is empty")
def _(d): valid_lines(d, "")


@case("valid-is-a-directory", r"vdir: is a directory, not a validation file")
def _(d):
    (d / "vdir").mkdir()
    return {"--valid": d / "vdir"}


@case("valid-is-a-fifo", r"valid\.fifo: is not a regular file \(a FIFO\)")
def _(d):
    os.mkfifo(d / "valid.fifo")
    return {"--valid": d / "valid.fifo"}


@case("valid-not-found", r"nope\.jsonl: validation file not found")
def _(d): return {"--valid": d / "nope.jsonl"}


# -- options ----------------------------------------------------------------------------------------------
@case("clusters-more-than-records", rf"train\.jsonl: --clusters: K=50 clusters is more than the {N_TRAIN} examples")
def _(d): return {"--clusters": "50"}


@case("clusters-zero", r"--clusters.*0")
def _(d): return {"--clusters": "0"}


@case("size-more-than-records", rf"train\.jsonl: --size: budget 100 is larger than the data \({N_TRAIN} candidate")
def _(d): return {"--ratio": None, "--size": "100"}


@case("ratio-zero", r"--ratio: must be in \(0, 1\], got 0")
def _(d): return {"--ratio": "0"}


@case("ratio-above-one", r"--ratio: must be in \(0, 1\], got 1.5")
def _(d): return {"--ratio": "1.5"}


@case("ratio-negative", r"--ratio: must be in \(0, 1\], got -0.1")
def _(d): return {"--ratio": "-0.1"}


@case("ratio-nan", r"--ratio: must be a finite number, got nan")
def _(d): return {"--ratio": "nan"}


@case("ratio-not-a-number", r"--ratio.*'half' is not a valid float")
def _(d): return {"--ratio": "half"}


@case("ratio-and-size", r"either --ratio or --size")
def _(d): return {"--size": "3"}


@case("unknown-format", r"--format.*'parquet' is not one of")
def _(d): return {"--format": "parquet"}


@case("unknown-valid-format", r"--valid-format.*'csv' is not one of")
def _(d): return {"--valid-format": "csv"}


@case("unknown-proxy", r"--proxy.*unknown proxy 'magic'")
def _(d): return {"--proxy": "magic"}


@case("unknown-proxy-option", r"--proxy-option: unknown option 'nope'")
def _(d): return {"--proxy-option": "nope=1"}


@case("proxy-option-bad-value", r"--proxy-option steps: cannot read 'many' as int")
def _(d): return {"--proxy-option": "steps=many"}


@case("proxy-option-without-equals", r"--proxy-option.*NAME=VALUE")
def _(d): return {"--proxy-option": "steps"}


@case("unknown-command-line-option", r"No such option '--frobnicate'.*\(see `cli refine --help`\)")
def _(d): return {"--frobnicate": "1"}


@case("removal-step-larger-than-players", r"--removal-step: 9 is larger than the number of players \(3\)")
def _(d): return {"--removal-step": "9", "--proxies-per-cluster": "1"}  # K x M players known before work


@case("field-map-without-equals", r"--field-map: expected NAME=KEY")
def _(d): return {"--field-map": "instruction"}


@case("field-map-unknown-name", r"unknown canonical name 'answer'")
def _(d): return {"--field-map": "answer=output"}


# -- output paths ------------------------------------------------------------------------------------------
@case("output-is-a-directory", r"adir: is a directory; give a file path for the output")
def _(d):
    (d / "adir").mkdir()
    return {"-o": d / "adir"}


@case("output-in-a-missing-directory", r"missing: output directory does not exist")
def _(d): return {"-o": d / "missing" / "out.jsonl"}


@case("output-under-a-file", r"afile: is not a directory, cannot hold the output")
def _(d):
    (d / "afile").write_text("x")
    return {"-o": d / "afile" / "out.jsonl"}


@case("output-is-the-data-file", r"train\.jsonl: the output would overwrite the input data")
def _(d): return {"-o": d / "train.jsonl"}


@case("output-is-the-validation-file", r"valid\.jsonl: the output would overwrite the validation file")
def _(d): return {"-o": d / "valid.jsonl"}


@case("scores-sidecar-is-a-directory", r"out\.scores\.jsonl: is a directory; give a file path .*scores sidecar")
def _(d): (d / "out.scores.jsonl").mkdir()


@case("run-dir-is-a-file", r"runfile: the run directory is not a directory")
def _(d):
    (d / "runfile").write_text("x")
    return {"--run-dir": d / "runfile"}


@case("run-dir-under-a-file", r"runfile/sub: cannot create the run directory \(Not a directory\)")
def _(d):
    (d / "runfile").write_text("x")
    return {"--run-dir": d / "runfile" / "sub"}


def _snapshot(d):
    out = {}
    for path in sorted(d.rglob("*")):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            out[str(path.relative_to(d))] = (st.st_size, st.st_mtime_ns)
        else:
            out[str(path.relative_to(d))] = stat.S_IFMT(st.st_mode)
    return out


@pytest.mark.parametrize("setup, pattern", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(setup, pattern, tmp_path, monkeypatch, fake_embed):
    d = tmp_path / "work"
    d.mkdir()
    (d / "train.jsonl").write_text(GOOD_TRAIN)
    (d / "valid.jsonl").write_text(GOOD_VALID)
    args = base_args(d)
    args.update(setup(d) or {})
    cache = tmp_path / "cache"
    monkeypatch.setenv("SHED_CACHE", str(cache))
    monkeypatch.setenv("SHED_HOME", str(d))
    before = _snapshot(d)
    result = CliRunner().invoke(cli.cli, as_argv(args))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[:2000]
    assert len(lines[0].replace(str(d), "")) < 400, lines[0][:600]  # names the problem; never echoes the data
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert _snapshot(d) == before  # no run directory, no output, nothing touched
    assert not cache.exists() and fake_embed == []


def test_removal_step_beyond_the_players_found_after_clustering_is_one_line_exit_2(tmp_path, monkeypatch,
                                                                                   fake_embed):
    """With ``--proxies-per-cluster auto`` (M=4 here: 3 x 4 <= 12 records) clusters smaller than M are valued
    whole, so the number of players is only known after k-means: a too-large removal step is then refused by
    the value stage with one line naming the option, exit 2 (the finished stages are kept for --resume)."""
    d = tmp_path / "work"
    d.mkdir()
    (d / "train.jsonl").write_text(GOOD_TRAIN)
    (d / "valid.jsonl").write_text(GOOD_VALID)
    args = base_args(d)
    args["--removal-step"] = "12"
    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(cli.cli, as_argv(args))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and re.search(r"--removal-step: 12 is larger than the number of players \((\d+): up to "
                                         r"4 per cluster, K=3", lines[0]), result.stderr
    assert int(re.search(r"players \((\d+)", lines[0]).group(1)) < 12
    assert not (d / "out.jsonl").exists() and not (d / "run" / "values.json").exists()


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40


# -- inputs that are legitimately accepted: the right behaviour instead --------------------------------------
def test_utf8_bom_and_crlf_are_read_as_the_same_records(tmp_path):
    from shed_jax.data import read_instructions

    plain = tmp_path / "plain.jsonl"
    plain.write_text(GOOD_TRAIN)
    bom_crlf = tmp_path / "bom_crlf.jsonl"
    bom_crlf.write_bytes(b"\xef\xbb\xbf" + GOOD_TRAIN.replace("\n", "\r\n").encode())
    a, b = read_instructions(plain), read_instructions(bom_crlf)
    assert b.records == a.records and b.texts("all") == a.texts("all") and b.line_numbers == a.line_numbers
    array_crlf = tmp_path / "array.json"
    array_crlf.write_bytes(b"\xef\xbb\xbf[\r\n" + ",\r\n".join(json.dumps(r) for r in _train_records()).encode()
                           + b"\r\n]\r\n")
    assert read_instructions(array_crlf).records == a.records


def test_bom_crlf_and_duplicates_refine_and_the_output_holds_the_input_records(tmp_path, monkeypatch, fake_embed):
    """One run: a BOM, CRLF line ends and 3 exact duplicates (dropped with a warning naming the lines)."""
    d = tmp_path / "work"
    d.mkdir()
    records = _train_records()
    (d / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl(records + records[:3]).replace("\n", "\r\n").encode())
    (d / "valid.jsonl").write_bytes(GOOD_VALID.replace("\n", "\r\n").encode())
    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    argv = [a for a in as_argv(base_args(d)) if a != "-q"]
    result = CliRunner().invoke(cli.cli, argv)
    assert result.exit_code == 0, (result.output, result.exception)
    assert re.search(r"train\.jsonl: 3 duplicate record\(s\) \(first: line 13 repeats line 1\)", result.stderr)
    selected = [json.loads(line) for line in (d / "out.jsonl").read_text().splitlines()]
    assert len(selected) == N_TRAIN // 2  # the budget counts candidates (duplicates dropped)
    assert all(r in records for r in selected)  # read correctly: exactly the input records
    assert len({json.dumps(r, sort_keys=True) for r in selected}) == len(selected)  # no record twice
