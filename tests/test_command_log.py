"""``RUN_DIR/logs/commands.log`` (issue 21): every command run on a run directory leaves its argv, start and end
time, exit status and version; dry runs and non-run directories get nothing; a hard exit (second Ctrl-C) still
writes its end line; concurrent appends never interleave."""
from __future__ import annotations

import json
import multiprocessing
import os
from datetime import datetime

import pytest
from click.testing import CliRunner

from shed_jax import __version__, cli, command_log, synthetic


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=120, n_topics=6, n_validation=20, seed=0)


def invoke(args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def ends(run):
    return [r for r in command_log.read(run) if r["event"] == "end"]


def test_each_command_appends_argv_times_status_and_version(demo, tmp_path, fake_embed):
    run = tmp_path / "run"
    result = invoke(["cluster", demo.train, "--clusters", "6", "--run-dir", run, "-q"])
    assert result.exit_code == 0, result.output
    result = invoke(["value", "--run-dir", run, "--valid", demo.valid, "--permutations", "3", "--proxies-per-cluster",
                     "1", "-q"])
    assert result.exit_code == 0, result.output
    result = invoke(["value", "--run-dir", run, "--permutations", "2", "-q"])  # fewer: refused, exit 2
    assert result.exit_code == 2, result.output
    result = invoke(["show", run])
    assert result.exit_code == 0, result.output

    records = ends(run)
    assert [r["argv"][1] for r in records] == ["cluster", "value", "value", "show"]
    assert [r["exit_status"] for r in records] == [0, 0, 2, 0]
    assert records[1]["argv"] == ["shed", "value", "--run-dir", str(run), "--valid", str(demo.valid), "--permutations",
                                  "3", "--proxies-per-cluster", "1", "-q"]
    for record in records:
        assert record["version"] == __version__ and record["pid"] == os.getpid()
        started, ended = datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["ended"])
        assert started.tzinfo is not None and started <= ended
        assert record["seconds"] == pytest.approx((ended - started).total_seconds(), abs=2e-3)
    # the commands after the first found the run directory: each has a start line too, with the same start time
    starts = [r for r in command_log.read(run) if r["event"] == "start"]
    assert [s["started"] for s in starts] == [r["started"] for r in records[1:]]
    # the file is JSON Lines, one object per line
    lines = (run / "logs" / "commands.log").read_text().splitlines()
    assert len(lines) == len(records) + len(starts) and all(json.loads(line) for line in lines)


def test_dry_runs_and_non_run_directories_are_not_logged(demo, tmp_path, fake_embed):
    run = tmp_path / "run"
    result = invoke(["cluster", demo.train, "--clusters", "6", "--run-dir", run, "-q"])
    assert result.exit_code == 0, result.output
    before = command_log.read(run)
    result = invoke(["value", "--run-dir", run, "--valid", demo.valid, "--permutations", "3", "--proxies-per-cluster",
                     "1", "--dry-run", "-q"])
    assert result.exit_code == 0, result.output
    assert command_log.read(run) == before  # a dry run writes nothing

    other = tmp_path / "not-a-run"
    other.mkdir()
    result = invoke(["report", other])
    assert result.exit_code == 2
    assert not (other / "logs").exists()


def test_a_hard_exit_writes_the_end_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with command_log.recording(run, ["value", "--run-dir", str(run)]):
            command_log.write_pending(130)  # what interrupt does before os._exit(130)
            raise RuntimeError("unwinding after the hard exit never happens; the line is not written twice")
    records = ends(run)
    assert [r["exit_status"] for r in records] == [130]


def _append_many(path: str, worker: int, n: int) -> None:
    for i in range(n):
        command_log.append(path, {"event": "end", "worker": worker, "i": i, "pad": "x" * 3000})


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the children only append, no JAX
def test_concurrent_appends_do_not_interleave(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(run), w, 50)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    lines = (run / "logs" / "commands.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # a torn line would not parse
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(50)]


@pytest.mark.parametrize("exc, status", [(None, 0), (SystemExit(130), 130), (KeyboardInterrupt(), 130),
                                         (ValueError("bug"), 1)])
def test_exit_status_of_the_block(tmp_path, exc, status):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    try:
        with command_log.recording(run, ["x"]):
            if exc is not None:
                raise exc
    except BaseException:
        pass
    assert [r["exit_status"] for r in ends(run)] == [status]
