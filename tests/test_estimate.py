"""`shed refine --dry-run` and the estimate a run logs when it starts (issue 11): the plan's counts, positive
time estimates from a calibration on this machine, cached stages counted as free, and nothing written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from shed_jax import cli, synthetic
from shed_jax.run.value import expected_evaluations


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=200, n_topics=8, n_validation=40, seed=0)


@pytest.fixture
def real_embed_texts(monkeypatch, tmp_path):
    """The real embed_texts (cache, batching, calibration path) with the hashing stand-in for the model, and a
    private embedding cache; counts the texts encoded."""
    from conftest import hashing_embed
    from shed_jax import embed as embed_module

    encoded = []

    class Encoder:
        def encode(self, batch, **kwargs):
            encoded.append(len(batch))
            return hashing_embed(list(batch))

    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embed_module, "_get_model", lambda *args, **kwargs: Encoder())
    return encoded


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def invoke(args, **kwargs):
    return CliRunner().invoke(cli.cli, [str(a) for a in args], **kwargs)


def test_dry_run_prints_a_plan_with_positive_estimates_and_writes_nothing(demo, tmp_path, real_embed_texts):
    out, run_dir = tmp_path / "out.jsonl", tmp_path / "run"
    before = tree(tmp_path)
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run_dir,
                     "--clusters", "8", "--permutations", "6", "--dry-run", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert tree(tmp_path) == before  # no run directory, no output, no cache entry
    assert not (tmp_path / "cache").exists() and not run_dir.exists() and not out.exists()
    assert sum(real_embed_texts) > 0  # the encoder was really timed (on a sample)
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["command"] == "refine"
    stages = {s["stage"]: s for s in plan["stages"]}
    assert list(stages) == ["embed", "cluster", "value", "select"]
    assert stages["embed"]["details"]["n_records"] == 200
    assert stages["embed"]["details"]["dtype"] == "float32"  # the default the encoder was timed in (--embed-dtype)
    assert stages["cluster"]["details"]["n_clusters"] == 8
    value = stages["value"]["details"]
    # --proxies-per-cluster auto: M=16 (8 x 16 = 128 players <= the 1,000-player budget and <= 200 records)
    assert (value["proxies_per_cluster"], value["n_players"], value["n_permutations"], value["removal_step"]) == (
        16, 128, 6, 4)
    assert value["n_evaluations"] == expected_evaluations(128, 4, 6) == 6 * 31 + 2  # the engine's count
    assert value["texts_to_embed"] > 0  # the validation set and the players' texts are not cached yet
    assert stages["select"]["details"]["budget"] == 40
    for name in ("embed", "cluster", "value"):
        assert not stages[name]["cached"] and stages[name]["seconds"] > 0, stages[name]
    assert plan["total_seconds"] == pytest.approx(sum(s["seconds"] for s in plan["stages"]))
    calibration = plan["calibration"]
    assert calibration["embed"]["texts_per_second"] > 0 and calibration["embed"]["sample_size"] == 64
    assert calibration["kmeans"]["lloyd_seconds"] > 0 and calibration["kmeans"]["compile_seconds"] >= 0
    assert calibration["value"]["seconds_per_evaluation"] > 0 and calibration["value"]["compile_seconds"] >= 0

    text = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run_dir,
                   "--clusters", "8", "--permutations", "6", "--dry-run"])
    assert text.exit_code == 0 and tree(tmp_path) == before
    assert text.stdout.splitlines()[0].startswith("dry run: nothing was written")
    assert any(line.startswith("estimated total: ") for line in text.stdout.splitlines())


@pytest.mark.slow
def test_dry_run_counts_cached_stages_as_free(demo, tmp_path, real_embed_texts):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "8", "--run-dir", run_dir, "-q"]).exit_code == 0
    encoded = sum(real_embed_texts)
    cache_files = tree(tmp_path / "cache")
    run_files = {p: (run_dir / p).stat().st_mtime_ns for p in tree(run_dir)}
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", tmp_path / "o.jsonl",
                     "--run-dir", run_dir, "--clusters", "8", "--permutations", "6", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    stages = {s["stage"]: s for s in json.loads(result.stdout)["stages"]}
    assert stages["embed"]["cached"] and stages["embed"]["seconds"] == 0
    assert stages["cluster"]["cached"] and stages["cluster"]["seconds"] == 0
    assert not stages["value"]["cached"] and stages["value"]["seconds"] > 0
    # the validation set is not embedded yet, so the encoder is timed (on a sample: 8 warm-up + 64 texts)
    assert stages["value"]["details"]["texts_to_embed"] > 0 and sum(real_embed_texts) == encoded + 72
    assert tree(tmp_path / "cache") == cache_files
    assert {p: (run_dir / p).stat().st_mtime_ns for p in tree(run_dir)} == run_files  # the run dir untouched

    value = invoke(["value", "--run-dir", run_dir, "--valid", demo.valid, "--permutations", "6", "--dry-run",
                    "--json"])
    assert value.exit_code == 0, value.output
    assert [s["stage"] for s in json.loads(value.stdout)["stages"]] == ["embed", "cluster", "value"]
    assert {p: (run_dir / p).stat().st_mtime_ns for p in tree(run_dir)} == run_files

    other = tmp_path / "run2"  # a new run directory: the shared cache makes the embed stage free
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", tmp_path / "o.jsonl",
                     "--run-dir", other, "--clusters", "8", "--dry-run", "--json"])
    stages = {s["stage"]: s for s in json.loads(result.stdout)["stages"]}
    assert stages["embed"]["cached"] and not stages["cluster"]["cached"] and stages["cluster"]["seconds"] > 0
    assert not other.exists()


def test_dry_run_rejects_bad_input_like_a_run(demo, tmp_path, real_embed_texts):
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--size", "5000", "-o", tmp_path / "o.jsonl",
                     "--run-dir", tmp_path / "run", "--dry-run"])
    assert result.exit_code == 2 and "budget 5000 is larger" in result.stderr
    assert tree(tmp_path) == []
    assert real_embed_texts == []


@pytest.mark.slow
def test_a_real_run_logs_the_estimate_when_it_starts(demo, tmp_path, real_embed_texts, monkeypatch):
    monkeypatch.setenv("SHED_ESTIMATE", "1")
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", tmp_path / "o.jsonl",
                     "--run-dir", tmp_path / "run", "--clusters", "8", "--permutations", "6"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    plan = [line for line in lines if line.startswith("plan: ")]
    assert [line.split(":")[1].strip() for line in plan] == ["embed", "cluster", "value", "select"]
    # K=8, auto M=16 (at most 128 players, removal step 4): the engine's count, an upper bound before clustering
    assert f"about {expected_evaluations(128, 4, 6)} utility evaluations" in plan[2], plan[2]
    assert "estimated when the stage starts" in plan[2]
    values = json.loads((tmp_path / "run" / "values.json").read_text())
    n_players = len(values["members"]["index"]) if values.get("members") else 8
    assert values["n_evaluations"] == expected_evaluations(n_players, 4, 6)  # the count the plan gives, exactly
    # the embedding proxy cannot estimate its cost: the run no longer times the engine before it starts
    assert not any(line.startswith("value: about ") for line in lines), lines
    # the plan precedes the work it describes
    assert lines.index(plan[0]) < next(i for i, line in enumerate(lines) if line.startswith("embed: done in"))
    monkeypatch.setenv("SHED_ESTIMATE", "0")
    quiet = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", tmp_path / "o2.jsonl",
                    "--run-dir", tmp_path / "run2", "--clusters", "8", "--permutations", "6"])
    assert quiet.exit_code == 0 and "plan: " not in quiet.stderr and "estimated" not in quiet.stderr
