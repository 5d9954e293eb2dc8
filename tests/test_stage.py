"""The one stage skeleton (shed_jax.run.stage.run_stage) on a toy stage: computed once and saved, loaded while up to
date, recomputed when its file is gone; a stage that refuses in ``prepare`` is never recorded as started; and
stage.py imports none of the stages (no import cycle through the run package, lazy imports counted)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shed_jax import synthetic
from shed_jax.config import RefineConfig
from shed_jax.errors import PipelineError
from shed_jax.run.stage import Computed, Run, Stage, Started, pipeline

ROOT = Path(__file__).resolve().parents[1]


class Note:
    """A toy artifact: one JSON file."""

    FILENAME = "note.json"

    def __init__(self, text):
        self.text = text

    def save(self, run_dir):
        (run_dir.path / self.FILENAME).write_text(json.dumps({"text": self.text}))


def toy_stage(calls: list, *, refuse: bool = False) -> Stage:
    def load(run):
        calls.append("load")
        return Note(json.loads((run.run_dir / Note.FILENAME).read_text())["text"]), "one note"

    def prepare(run):
        calls.append("prepare")
        if refuse:
            raise PipelineError("refused before starting")
        return Started("hello", notes={"resolved": 7})

    def compute(run, state):
        calls.append("compute")
        assert not (run.run_dir / Note.FILENAME).exists()  # the skeleton saves after compute returns
        note = Note(state)
        return Computed(note, outputs=(note,), record={"size": len(state)}, done=" (toy)")

    return Stage("select", load=load, prepare=prepare, compute=compute, files=(Note.FILENAME,))


@pytest.fixture
def config(tmp_path):
    demo = synthetic.make_demo(tmp_path / "demo", n_examples=30, n_topics=3, n_validation=6, seed=0)
    return RefineConfig(data=str(demo.train), run_dir=str(tmp_path / "run"))


def run_toy(config, stage, lines):
    with Run(config, pipeline=pipeline(stage), progress=False, log=lines.append).open(
            need_valid=False, need_budget=False) as run:
        return run.result("select"), json.loads((run.run_dir / "stages.json").read_text())


def test_computed_once_then_loaded_then_recomputed_without_its_file(config):
    calls, lines = [], []
    result, log = run_toy(config, toy_stage(calls), lines)
    assert calls == ["prepare", "compute"] and not result.skipped and result.artifact.text == "hello"
    record = log["stages"]["select"]
    assert record["status"] == "done" and record["size"] == 5 and record["resolved"] == 7
    assert [e["event"] for e in log["events"]] == ["started", "computed"]
    assert lines[-1].startswith("select: done in ") and lines[-1].endswith(" (toy)")

    calls.clear()
    result, log = run_toy(config, toy_stage(calls), lines)
    assert calls == ["load"] and result.skipped and result.text == "hello"
    assert lines[-1] == "select: up to date (one note); loaded note.json"
    assert log["events"][-1]["event"] == "skipped"

    (Path(config.run_dir) / Note.FILENAME).unlink()
    calls.clear()
    result, _ = run_toy(config, toy_stage(calls), lines)
    assert calls == ["prepare", "compute"] and not result.skipped


def test_a_stage_refused_in_prepare_is_not_recorded_as_started(config):
    calls = []
    with pytest.raises(PipelineError, match="refused before starting"):
        run_toy(config, toy_stage(calls, refuse=True), [])
    assert calls == ["prepare"]
    log = json.loads((Path(config.run_dir) / "stages.json").read_text()) \
        if (Path(config.run_dir) / "stages.json").exists() else {"stages": {}, "events": []}
    assert "select" not in log["stages"] and not log["events"]
    assert not (Path(config.run_dir) / Note.FILENAME).exists()


def test_a_run_without_the_stage_says_so(config):
    with Run(config, progress=False, log=lambda line: None).open(need_valid=False, need_budget=False) as run:
        with pytest.raises(KeyError, match="no stage 'value'"):
            run.result("value")


def test_stage_py_imports_no_stage_and_the_run_package_has_no_cycle():
    tree = ast.parse((ROOT / "shed_jax" / "run" / "stage.py").read_text())
    imported = set()
    for node in ast.walk(tree):  # lazy imports (inside functions) included
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    stages = {f"shed_jax.run.{name}" for name in ("embed", "cluster", "value", "select", "estimate", "refine")}
    assert not imported & stages, imported & stages
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_cycles.py"), "--lazy"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode in (0, 1) and "import cycle(s) among" in done.stdout, done.stderr
    cycles = [line for line in done.stdout.splitlines() if "<->" in line]
    assert not [line for line in cycles if "shed_jax.run." in line], cycles
