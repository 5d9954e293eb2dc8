"""Security (issue 10): nothing in shed_jax executes code from data or model files (no eval/exec, no pickle, no
torch.load, never trust_remote_code=True), and no path in the data or the configuration makes a command write
outside the run directory, the named outputs and the embedding cache."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from click.testing import CliRunner

from shed_jax import cli

PACKAGE = Path(__file__).resolve().parents[1] / "shed_jax"

UNSAFE_MODULE_LOADERS = {"pickle": {"load", "loads", "Unpickler"}, "cPickle": {"load", "loads"},
                         "dill": {"load", "loads"}, "marshal": {"load", "loads"}, "joblib": {"load"},
                         "torch": {"load"}, "cloudpickle": {"load", "loads"}, "shelve": {"open"}}


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: what`` for each call that can execute code from data: eval/exec/compile, the unpicklers,
    torch.load, yaml.load without a safe loader, allow_pickle=True, trust_remote_code=True."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve")]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("pickle", "dill", "marshal"):
            found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
            found.append(f"{filename}:{node.lineno}: {func.id}()")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.attr in UNSAFE_MODULE_LOADERS.get(func.value.id, ()):
                found.append(f"{filename}:{node.lineno}: {func.value.id}.{func.attr}()")
            if func.value.id == "yaml" and func.attr in ("load", "unsafe_load", "full_load"):
                loader = {k.arg: k.value for k in node.keywords}.get("Loader")
                if not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
                    found.append(f"{filename}:{node.lineno}: yaml.{func.attr}() without a safe loader")
        for keyword in node.keywords:
            if keyword.arg in ("trust_remote_code", "allow_pickle") and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                found.append(f"{filename}:{node.lineno}: {keyword.arg}={ast.unparse(keyword.value)}")
    return found


def test_the_scanner_finds_what_it_looks_for():
    source = "\n".join(["import pickle", "eval('1')", "exec(x)", "pickle.loads(b)", "torch.load(f)",
                        "np.load(p, allow_pickle=True)", "AutoModel.from_pretrained(n, trust_remote_code=True)",
                        "yaml.load(s)", "AutoModel.from_pretrained(n, trust_remote_code=flag)",
                        "np.load(p, allow_pickle=False)", "yaml.load(s, Loader=yaml.SafeLoader)", "json.loads(s)"])
    assert [f.split(": ", 1)[1] for f in unsafe_calls(source)] == [
        "import pickle", "eval()", "exec()", "pickle.loads()", "torch.load()", "allow_pickle=True",
        "trust_remote_code=True", "yaml.load() without a safe loader", "trust_remote_code=flag"]


def test_shed_jax_never_executes_code_from_data_or_model_files():
    # rglob does not follow the shed_jax/kernels link (Python 3.11): the kernels are scanned where they live
    files = sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "kernels").glob("*.py"))
    assert len(files) > 30 and any(path.parent.name == "kernels" for path in files)
    found = [f for path in files
             for f in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert found == []


def test_paths_in_data_and_options_cannot_write_outside_the_run_directory_and_outputs(tmp_path, monkeypatch,
                                                                                      fake_embed):
    """Records whose keys and values look like paths ('../../x', absolute paths), run in a directory inside a
    watched parent, with a run directory given with '..' components: every file the run writes is in the run
    directory, the two named outputs or the embedding cache; the parent is untouched."""
    parent = tmp_path / "parent"
    inner = parent / "inner"
    inner.mkdir(parents=True)
    (parent / "sentinel.txt").write_text("do not touch")
    escape = parent / "escaped"
    records = []
    for i in range(12):
        records.append({"instruction": f"Write the file ../../escaped/{i} for record {i}", "input": str(escape / f"{i}"),
                        "output": f"/etc/shed_{i}", "id": f"../../escaped/{i}", "../../escaped/key": str(escape),
                        "path": f"{escape}/{i}.jsonl"})
    (inner / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (inner / "valid.jsonl").write_text("".join(json.dumps({"question": f"../../escaped/q{i}", "choices": [
        str(escape), "/etc/passwd"], "answer": 0, "id": f"/tmp/{i}"}) + "\n" for i in range(4)))
    monkeypatch.setenv("SHED_CACHE", str(inner / "cache"))
    monkeypatch.setenv("SHED_HOME", str(inner))
    monkeypatch.chdir(inner)
    before = {p for p in parent.rglob("*")}
    result = CliRunner().invoke(cli.cli, [
        "refine", "train.jsonl", "--valid", "valid.jsonl", "--ratio", "0.5", "-o", "out.jsonl",
        "--run-dir", "deep/../run", "--clusters", "3", "--permutations", "2", "--text", "instruction,id",
        "--proxy-option", "steps=2", "-q"])
    assert result.exit_code == 0, result.output
    written = {p for p in parent.rglob("*")} - before
    allowed = (inner / "run", inner / "cache", inner / "out.jsonl", inner / "out.scores.jsonl")
    outside = [str(p) for p in written if not any(p == a or a in p.parents for a in allowed)]
    assert outside == []
    assert not escape.exists() and (parent / "sentinel.txt").read_text() == "do not touch"
    assert not (inner / "deep").exists()  # '..' resolved, no stray directory
    assert {p.name for p in (inner / "run").iterdir()} >= {"values.json", "selection.json", "summary.json"}
    assert not any(name.startswith("/") or ".." in name for name in os.listdir(inner / "run"))
