"""Issue 21 in the terminal: `shed select` never silently replaces the run's selection, the report follows what it
shows, `shed report` refuses a directory without a run, `shed show`, `shed proxies`, and --help pointing there.

The Shapley engine is the stub of tests/test_cli.py (cluster k is worth 0.01 k; U(full) 0.5, U(empty) 0.25)."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from _helpers import invoke
from shed_jax import synthetic
from test_cli import fake_shapley  # noqa: F401  (a fixture)

FAST = ["--clusters", "8", "--permutations", "4", "--proxy-option", "steps=4", "--proxies-per-cluster", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=120, n_topics=8, n_validation=24, seed=0)


@pytest.fixture
def run(demo, tmp_path, fake_embed, fake_shapley):  # noqa: F811
    run_dir = tmp_path / "run"
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.25", "-o", tmp_path / "out.jsonl",
                     "--run-dir", run_dir, "-q", *FAST])
    assert result.exit_code == 0, result.output
    return run_dir


def _snapshot(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("selection.json", "scores.jsonl", "report.html",
                                                              "config.json")}


def test_select_with_other_settings_writes_a_named_selection_and_keeps_the_runs(run, demo, tmp_path):
    before = _snapshot(run)
    out = tmp_path / "random.jsonl"
    result = invoke(["select", demo.train, "--run-dir", run, "--sampler", "random", "--ratio", "0.1", "-o", out])
    assert result.exit_code == 0, result.output
    assert _snapshot(run) == before  # the run's selection, scores, report and config: untouched
    named = json.loads((run / "selection-random-0.1.json").read_text())
    assert named["sampler"] == "random" and named["ratio"] == 0.1 and len(named["indices"]) == named["budget"]
    assert (run / "scores-random-0.1.jsonl").is_file() and out.is_file()
    assert sum(1 for _ in out.open()) == named["budget"]
    assert "selection-random-0.1.json" in result.stderr and "--replace" in result.stderr


def test_select_with_the_runs_own_settings_is_the_runs_selection(run, demo, tmp_path):
    result = invoke(["select", demo.train, "--run-dir", run, "--ratio", "0.25", "-o", tmp_path / "same.jsonl"])
    assert result.exit_code == 0, result.output
    assert not list(run.glob("selection-*.json"))


def test_select_replace_makes_it_the_runs_selection_and_rewrites_the_report(run, demo, tmp_path):
    report_before = (run / "report.html").read_text()
    assert "random" not in report_before
    result = invoke(["select", demo.train, "--run-dir", run, "--sampler", "random", "--ratio", "0.1", "--replace",
                     "-o", tmp_path / "random.jsonl"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "selection.json").read_text())["sampler"] == "random"
    report = (run / "report.html").read_text()
    assert report != report_before and "<td>random</td>" in report
    assert not list(run.glob("selection-*.json"))


def test_revaluing_rewrites_the_report(run, demo):
    before = (run / "report.html").read_text()
    result = invoke(["value", "--run-dir", run, "--permutations", "6", "-q"])
    assert result.exit_code == 0, result.output
    after = (run / "report.html").read_text()
    assert after != before and ">6<" in after


def test_report_on_a_directory_without_a_run_is_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = invoke(["report", tmp_path])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "not a shed run directory" in lines[0]
    assert not (tmp_path / "report.html").exists()


def test_show_prints_top_and_bottom_clusters(run):
    result = invoke(["show", run, "--top", "3"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    values = json.loads((run / "values.json").read_text())["cluster_values"]
    order = sorted(range(len(values)), key=lambda k: -values[k])
    top = out.split("Highest value", 1)[1].split("Lowest value", 1)[0]
    bottom = out.split("Lowest value", 1)[1]
    first = [line for line in top.splitlines() if line.strip().startswith("1 ")][0]
    assert first.split()[1] == str(order[0]) and "→" in first  # rank 1 is the best cluster, with an example
    assert str(order[-1]) == [line for line in bottom.splitlines() if line.strip()[:1].isdigit()][-1].split()[1]
    assert "U(full) − U(empty) = 0.5 − 0.25 = 0.25" in out
    assert "With 4 permutations a standard error is itself too uncertain" in out
    data = json.loads(invoke(["show", run, "--top", "2", "--json"]).stdout)
    assert [r["cluster"] for r in data["top"]] == order[:2] and [r["cluster"] for r in data["bottom"]] == order[-2:]
    assert all(r["size"] >= 1 and r["example"]["prompt"] for r in data["top"] + data["bottom"])


def test_show_on_a_directory_without_values_is_exit_2(tmp_path, run):
    shutil.copytree(run, tmp_path / "copy")
    (tmp_path / "copy" / "values.json").unlink()
    result = invoke(["show", tmp_path / "copy"])
    assert result.exit_code == 2 and "no values.json" in result.stderr


def test_proxies_lists_every_proxy_and_its_options_with_defaults():
    result = invoke(["proxies"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("embedding: ") and "\nlm: " in out
    for line in ("  steps=20", "  max_length=256", "  max_validation=", "  learning_rate=0.001"):
        assert line in out.split("\nlm: ", 1)[1], line
    assert "Optimiser steps per fine-tune." in out
    data = json.loads(invoke(["proxies", "lm", "--json"]).stdout)
    assert [p["name"] for p in data["proxies"]] == ["lm"]
    assert any(o["name"] == "rank" and o["default"] == 8 and o["help"] for o in data["proxies"][0]["options"])
    assert invoke(["proxies", "nope"]).exit_code == 2


def test_help_points_to_shed_proxies():
    assert "shed proxies" in invoke(["--help"]).stdout
    assert "shed proxies" in " ".join(invoke(["value", "--help"]).stdout.split())


def test_reclustering_rewrites_the_report(run, demo):
    """The report follows what it shows: new clusters make the run's values and selection stale, so the report is
    rewritten by the cluster stage rather than left describing clusters that no longer exist."""
    before = (run / "report.html").read_text()
    result = invoke(["cluster", demo.train, "--clusters", "6", "--run-dir", run, "-q", "--restart"])
    assert result.exit_code == 0, result.output
    after = (run / "report.html").read_text()
    assert re.search(r"K \(clusters\)\D{0,80}8\b", before) and re.search(r"K \(clusters\)\D{0,80}6\b", after)
    # the old valuation (8 values, cluster 7 worth 0.07) and selection are no longer shown as the run's; the report
    # says first, in plain words, that they are out of date and what to rerun
    assert "0.0700 ± 0.0010" in before and "0.0700" not in after and "utility (all proxies)" not in after
    verdict = after.index('id="verdict"')
    assert verdict < after.index("Run configuration")
    assert "Out of date: values.json were computed before the cluster stage was run again" in after
    assert "rerun `shed value`, then `shed select`" in after.replace("&#x60;", "`")
    # valuing again brings it up to date
    result = invoke(["value", "--run-dir", run, "--valid", demo.valid, "--permutations", "4", "-q"])
    assert result.exit_code == 0, result.output
    revalued = (run / "report.html").read_text()
    assert "Out of date: values.json" not in revalued and "utility (all proxies)" in revalued
