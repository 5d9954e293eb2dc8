"""`python -m bench`: every benchmark still runs in --quick mode and its JSON is valid; RESULTS.md handling."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_quick_runs_every_benchmark_and_writes_valid_json(tmp_path):
    from bench.runner import BENCHMARKS

    out = tmp_path / "quick.json"
    proc = _run("--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["schema"] == "shed_jax.bench/1" and report["mode"] == "quick"
    assert report["machine"]["device_kind"] and report["machine"]["versions"]["jax"]
    assert [b["name"] for b in report["benchmarks"]] == list(BENCHMARKS)
    for entry in report["benchmarks"]:
        assert len(entry["load_average_before"]) == 3 and len(entry["load_average_after"]) == 3
        if entry["status"] == "skipped":  # only for a missing optional dependency (the embedding model)
            assert entry["name"] == "embed", entry
            continue
        assert entry["status"] == "ok", entry
        assert len(entry["repeats"]) == 1
        declared = {m.name for m in BENCHMARKS[entry["name"]].metrics}
        for name in declared & set(entry["summary"]):
            stats = entry["summary"][name]
            assert stats["min"] <= stats["median"] <= stats["max"]
            assert stats["median"] == stats["median"]  # not NaN
        ratios = [m for m in declared if m.endswith("over_raw") or m.endswith("over_torch")
                  or m.endswith("_over_loop") or m.endswith("over_sklearn_time") or m.endswith("rmse_at_max")
                  or m.endswith("_s_to_0.002")]
        assert any(r in entry["summary"] for r in ratios), entry["summary"]
    assert entry["name"] in proc.stdout  # the printed table


def test_unknown_benchmark_is_a_one_line_error():
    proc = _run("--only", "nope", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown benchmark nope" in proc.stderr
    assert proc.stdout == ""


def test_results_md_keeps_hand_written_sections(tmp_path):
    from bench.runner import END_MARK, START_MARK, update_results_md

    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nintro\n\n## Hand written\n\nmeasured 1.23\n")
    update_results_md(f"{START_MARK}\nfirst\n{END_MARK}\n", path)
    text = path.read_text()
    assert text.index(START_MARK) < text.index("## Hand written") and "measured 1.23" in text
    update_results_md(f"{START_MARK}\nsecond\n{END_MARK}\n", path)
    text = path.read_text()
    assert "second" in text and "first" not in text and text.count(START_MARK) == 1
    assert text.startswith("# Benchmark results\n") and "measured 1.23" in text and "intro" in text


def test_a_partial_full_run_leaves_the_committed_plots_alone(tmp_path, monkeypatch):
    # bench/plots/ holds what bench/RESULTS.md shows: a full-mode run with --only puts its figures by its JSON
    import types

    from bench import runner

    fake = types.ModuleType("bench._fake_for_test")
    fake.run = lambda quick, repeats: runner.Result(config={}, repeats=[{"a_over_raw": 1.0 + r} for r in range(repeats)])
    monkeypatch.setitem(sys.modules, "bench._fake_for_test", fake)
    bench = runner.Benchmark("fake", "fake", "_fake_for_test", (runner.Metric("a_over_raw", "x", "a"),),
                             plot=("a_over_raw",))
    monkeypatch.setattr(runner, "BENCHMARKS", {"fake": bench})
    before = {p.name: p.stat().st_mtime_ns for p in runner.PLOTS_DIR.glob("*.png")}
    results_md = runner.RESULTS_MD.read_text()
    out = tmp_path / "full.json"
    assert runner.main(["--only", "fake", "--repeats", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmarks"][0]["plot"] == str(tmp_path / "full-plots" / "fake.png")
    assert (tmp_path / "full-plots" / "fake.png").stat().st_size > 0
    assert not (runner.PLOTS_DIR / "fake.png").exists()
    assert {p.name: p.stat().st_mtime_ns for p in runner.PLOTS_DIR.glob("*.png")} == before
    assert runner.RESULTS_MD.read_text() == results_md
