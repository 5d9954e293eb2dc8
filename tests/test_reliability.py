"""Reliability (issue 10, the parts the run directory owns): every output path checked before work starts,
a failed command leaves the file system as it found it, one run per run directory (lock), schema versions."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from shed_jax import cli
from shed_jax.demo import synthetic
from shed_jax.run.rundir import SCHEMA_VERSION


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=120, n_topics=6, n_validation=30, seed=0)


def invoke(args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def one_line_error(result, pattern: str):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and pattern in lines[0], lines
    assert "Traceback" not in result.output


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def refine_args(demo, out, run_dir):
    return ["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run_dir,
            "--clusters", "4", "--permutations", "2", "--proxies-per-cluster", "1", "-q"]


def test_output_that_is_a_directory_fails_before_any_work(demo, tmp_path, fake_embed):
    (tmp_path / "adir").mkdir()
    result = invoke(refine_args(demo, tmp_path / "adir", tmp_path / "run"))
    one_line_error(result, "adir: is a directory; give a file path for the output")
    assert fake_embed == [] and listing(tmp_path) == ["adir"]  # no run directory, no cache


def test_output_in_a_missing_directory_fails_before_any_work(demo, tmp_path, fake_embed):
    result = invoke(refine_args(demo, tmp_path / "no" / "out.jsonl", tmp_path / "run"))
    one_line_error(result, "output directory does not exist")
    assert fake_embed == [] and listing(tmp_path) == []


def test_run_directory_that_is_a_file(demo, tmp_path, fake_embed):
    (tmp_path / "runfile").write_text("x")
    result = invoke(refine_args(demo, tmp_path / "o.jsonl", tmp_path / "runfile"))
    one_line_error(result, "the run directory is not a directory")
    assert fake_embed == [] and listing(tmp_path) == ["runfile"]


def test_validation_path_that_is_a_directory(demo, tmp_path, fake_embed):
    (tmp_path / "vdir").mkdir()
    args = refine_args(demo, tmp_path / "o.jsonl", tmp_path / "run")
    args[args.index("--valid") + 1] = tmp_path / "vdir"
    one_line_error(invoke(args), "vdir: is a directory, not a validation file")
    assert listing(tmp_path) == ["vdir"]


def test_missing_data_file_leaves_nothing_behind(demo, tmp_path, monkeypatch, fake_embed):
    monkeypatch.setenv("SHED_HOME", str(tmp_path))
    result = invoke(["refine", tmp_path / "nope.jsonl", "--valid", demo.valid, "--ratio", "0.2", "-o",
                     tmp_path / "o.jsonl"])
    one_line_error(result, "nope.jsonl: file not found")
    assert listing(tmp_path) == []  # no runs/<name>-<time>/, no cache/


def test_select_on_a_directory_without_clusters_creates_nothing(demo, tmp_path):
    (tmp_path / "run").mkdir()
    result = invoke(["select", demo.train, "--run-dir", tmp_path / "run", "--ratio", "0.2", "-o", tmp_path / "o.jsonl"])
    assert result.exit_code == 2 and "clusters.npz: not found" in result.output
    assert listing(tmp_path) == ["run"]


def test_a_second_command_on_a_locked_run_directory_refuses(demo, tmp_path, fake_embed):
    import fcntl

    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    assert not (run_dir / ".lock").exists()  # released after the command
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00+00:00"}
    (run_dir / ".lock").write_text(json.dumps(holder))
    with open(run_dir / ".lock", "rb") as held:  # another open file: as another process's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = invoke(["value", "--run-dir", run_dir, "--valid", demo.valid, "--permutations", "2", "-q"])
    one_line_error(result, f"another shed command (pid {os.getppid()} on {socket.gethostname()}")
    assert not (run_dir / "values.json").exists()
    assert json.loads((run_dir / ".lock").read_text()) == holder  # someone else's lock is left alone


def test_a_lock_file_left_by_a_dead_process_is_no_lock(demo, tmp_path, fake_embed):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    (run_dir / ".lock").write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "since": "x"}))
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo.valid, "--permutations", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "values.json").is_file() and not (run_dir / ".lock").exists()


@pytest.mark.parametrize("version, pattern", [(SCHEMA_VERSION + 1, "newer"), (1, "not the schema")])
def test_run_directory_of_another_schema_is_refused(demo, tmp_path, fake_embed, version, pattern):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    (run_dir / "run.json").write_text(json.dumps({"schema_version": version}))
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo.valid, "-q"])
    one_line_error(result, f"run directory schema {version} is {pattern}")


def test_run_directory_of_shed_jax_0_1_is_refused(demo, tmp_path, fake_embed):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    (run_dir / "run.json").unlink()
    result = invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"])
    one_line_error(result, "written by an older shed_jax (schema 1")


def test_an_internal_error_is_exit_1_with_the_traceback_in_the_run_log(demo, tmp_path, fake_embed, monkeypatch):
    from shed_jax import cluster as cluster_module

    def broken(*args, **kwargs):
        raise ValueError("shapes (3,) and (4,) not aligned")  # a bug, even though it is a ValueError

    monkeypatch.setattr(cluster_module, "kmeans", broken)
    run_dir = tmp_path / "run"
    result = invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error (ValueError: shapes (3,) and (4,) not aligned)" in lines[0]
    log = run_dir / "logs" / "errors.log"
    assert str(log) in lines[0] and "Traceback" in log.read_text() and "broken" in log.read_text()
    assert not (run_dir / ".lock").exists()


def test_undetectable_format_points_to_the_cli_flags(demo, tmp_path):
    data = tmp_path / "odd.jsonl"
    data.write_text(json.dumps({"question": "q", "reply": "r"}) + "\n")
    result = invoke(refine_args(demo, tmp_path / "o.jsonl", tmp_path / "run")[:1] + [data]
                    + refine_args(demo, tmp_path / "o.jsonl", tmp_path / "run")[2:])
    one_line_error(result, "odd.jsonl:1: cannot detect the record format")
    assert "--format" in result.stderr and "--field-map NAME=KEY" in result.stderr


def test_ctrl_c_while_a_checkpoint_is_written_keeps_it_and_resume_is_exact(tmp_path, monkeypatch):
    """Issue 10, failure 1: Ctrl-C as a checkpoint is due. The SIGINT lands in the middle of writing step 2;
    the write completes first, then KeyboardInterrupt; resuming continues from that step and ends with
    exactly the values of an uninterrupted run."""
    import signal

    from shed_jax import shapley
    from shed_jax.run.value import checkpointed_samples
    from shed_jax.shapley import _checkpoint, games

    game = games.UnanimitySum(9, [[0, 1], [2, 3, 4], [5], [6, 7, 8]], [1.5, -2.0, 0.75, 3.0])
    args = dict(n_permutations=48, removal_step=1, seed=3, permutations_per_chunk=8)
    reference = shapley.monte_carlo(game, 9, **args)

    real_save, calls = _checkpoint._save, []

    def save_with_ctrl_c(manager, state, history, run_args):
        calls.append(int(state.count))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step is being written
        real_save(manager, state, history, run_args)

    monkeypatch.setattr(_checkpoint, "_save", save_with_ctrl_c)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        shapley.monte_carlo(game, 9, checkpoint_dir=str(ckpt), **args)
    assert calls == [8, 16] and checkpointed_samples(ckpt) == 16  # the interrupted write completed
    monkeypatch.setattr(_checkpoint, "_save", real_save)
    resumed = shapley.monte_carlo(game, 9, checkpoint_dir=str(ckpt), **args)
    np.testing.assert_array_equal(resumed.values, reference.values)
    np.testing.assert_array_equal(resumed.stderr, reference.stderr)


def test_a_second_run_in_a_new_run_directory_embeds_nothing(demo, tmp_path, monkeypatch):
    """Issue 11: the embedding cache is shared by run directories ($SHED_CACHE), and `shed cache` manages it.
    The real embed_texts (with its cache) runs; only the model is replaced by the hashing stand-in."""
    from conftest import hashing_embed
    from shed_jax import embed as embed_module

    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    calls = []

    def encode(encoder, texts, **kwargs):
        calls.append(len(texts))
        return hashing_embed(list(texts))

    monkeypatch.setattr(embed_module, "_get_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(embed_module, "_encode", encode)
    for name in ("run1", "run2"):
        assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", tmp_path / name, "-q"]).exit_code == 0
    assert len(calls) == 1  # the second run directory found the embeddings in the shared cache
    assert not (tmp_path / "run1" / "cache").exists()
    info = invoke(["cache", "info", "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["entries"] == 1
    assert json.loads(info.stdout)["path"] == str(tmp_path / "cache" / "embeddings")
    cleared = invoke(["cache", "clear", "--yes", "--json"])
    assert cleared.exit_code == 0 and json.loads(cleared.stdout)["deleted_entries"] == 1
    assert json.loads(invoke(["cache", "info", "--json"]).stdout)["entries"] == 0


def test_qwcs_with_beta_zero_is_uniform_over_clusters_as_documented(demo, tmp_path, fake_embed):
    run_dir = tmp_path / "run"
    args = refine_args(demo, tmp_path / "o.jsonl", run_dir) + ["--sampler", "qwcs", "--beta", "0"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["beta"] == 0.0 and selection["sampler"] == "qwcs" and len(selection["indices"]) == 24
