"""Refactors must not change results: a refine on the bundled demo data and on a 2,000-record dolly sample
gives the same clusters, values, selection, scores sidecar and selected records as recorded in
``tests/golden/`` (recorded with the code before the architecture change of issue 8).

``SHED_RECORD_GOLDEN=1`` rewrites the golden files instead of comparing (only when a change of results is
intended; say so in the commit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from golden_digest import _file_sha, digest
from shed_jax.cli import cli

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("SHED_RECORD_GOLDEN") == "1"


def _check(name: str, got: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if RECORD:
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert got == expected


def _run(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_demo_outputs_unchanged(tmp_path):
    run_dir = tmp_path / "demo"
    # recorded with one proxy per cluster (the default before `auto`): pinned so the digests stay the same
    _run(["demo", "--run-dir", str(run_dir), "--permutations", "10", "--seed", "0", "--proxies-per-cluster", "1",
          "-q"])
    got = digest(run_dir, run_dir / "selected.jsonl")
    got["train"] = _file_sha(run_dir / "demo_data" / "train.jsonl")
    _check("demo_small_seed0_p10", got)


def _dolly_sample(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    lines = (shared_data / "instruct" / "dolly15k.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_text("".join(lines[:2000]), encoding="utf-8")
    valid.write_text("".join(lines[2000:2100]), encoding="utf-8")
    return train, valid


@pytest.mark.slow
def test_dolly_sample_outputs_unchanged(shared_data, tmp_path):
    train, valid = _dolly_sample(shared_data, tmp_path)
    out, run_dir = tmp_path / "curated.jsonl", tmp_path / "run"
    _run(["refine", str(train), "--valid", str(valid), "-o", str(out), "--run-dir", str(run_dir),
          "--clusters", "40", "--permutations", "10", "--ratio", "0.1", "--text", "prompt", "--seed", "0",
          "--proxies-per-cluster", "1", "-q"])
    _check("dolly2000_k40_p10", digest(run_dir, out))
