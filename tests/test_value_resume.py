"""A valuation is never thrown away: without --resume a partial valuation is refused (exit 2, one line with its
progress), --resume with a larger --permutations extends a partial or finished checkpoint to exactly the values
of a fresh run with that count (computing only the new permutations), and any other change is refused unless
--restart. The real engine and the embedding proxy, with the hashing encoder of tests/conftest.py."""
from __future__ import annotations

import json
import shutil

import pytest

from _helpers import cluster_argv, invoke, one_line_error, value_argv
from shed_jax import synthetic


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=120, n_topics=6, n_validation=30, seed=1)


def value_args(run, demo, permutations, *extra):
    # 6 clusters x 2 players, removal step 1: 11 coalitions per permutation, batch 11 -> 1 permutation per batch;
    # 2 permutations per chunk, so a checkpoint every 2 permutations
    return value_argv(run, demo.valid, permutations, *extra, proxies_per_cluster=2, removal_step=1,
                      shapley_batch_size=11)


def clustered(tmp_path, demo, monkeypatch, name="run"):
    run = tmp_path / name
    result = invoke(cluster_argv(demo.train, run, 6), monkeypatch)
    assert result.exit_code == 0, result.output
    return run


def values_of(run):
    payload = json.loads((run / "values.json").read_text())
    return payload


@pytest.fixture
def counted(monkeypatch):
    """Count the permutations the engine computes (its progress reports), wrapping the real engine."""
    from shed_jax import shapley as shapley_module

    real = shapley_module.monte_carlo
    computed = []

    def wrapped(utility, n_players, **kwargs):
        reports = []
        inner = kwargs.get("progress")

        def progress(status):
            reports.append(status.n_permutations)
            if callable(inner):
                inner(status)

        kwargs["progress"] = progress
        kwargs["permutations_per_chunk"] = 2
        start = _checkpoint_count(kwargs.get("checkpoint_dir"))
        result = real(utility, n_players, **kwargs)
        computed.append(result.n_permutations - start)
        return result

    monkeypatch.setattr(shapley_module, "monte_carlo", wrapped)
    return computed


def _checkpoint_count(directory):
    from pathlib import Path

    from shed_jax.run.value import checkpointed_samples

    return 0 if directory is None else checkpointed_samples(Path(directory))


def test_a_partial_valuation_survives_a_run_without_resume(demo, tmp_path, monkeypatch, fake_embed, counted):
    run = clustered(tmp_path, demo, monkeypatch)
    result = invoke(value_args(run, demo, 8), monkeypatch, fault="value_chunk:2:int")
    assert result.exit_code == 130, result.output
    ckpt = run / "shapley_ckpt"
    before = sorted(p.name for p in ckpt.iterdir())
    assert "2" in before
    line = one_line_error(invoke(value_args(run, demo, 8), monkeypatch),
                          r"shapley_ckpt holds a partial valuation \(2 of 8 permutations\): --resume continues it, "
                          r"--restart discards it")
    assert str(ckpt) in line
    assert sorted(p.name for p in ckpt.iterdir()) == before  # nothing deleted
    # other options: refused, naming them, with or without --resume
    one_line_error(invoke(value_args(run, demo, 8, "--resume", "--seed", "3"), monkeypatch),
                   r"with other options: .*--seed \(0 there, 3 now\)")
    one_line_error(invoke(value_args(run, demo, 8, "--resume", "--proxy-option", "steps=7"), monkeypatch),
                   r"with other options: --proxy-option; --restart discards it")
    assert sorted(p.name for p in ckpt.iterdir()) == before
    # --resume continues it: only the permutations not in the checkpoint are computed
    result = invoke(value_args(run, demo, 8, "--resume"), monkeypatch)
    assert result.exit_code == 0, result.output
    assert counted[-1] == 6 and values_of(run)["n_permutations"] == 8


def test_resume_extends_a_finished_valuation_to_a_fresh_runs_values(demo, tmp_path, monkeypatch, fake_embed,
                                                                     counted):
    extended = clustered(tmp_path, demo, monkeypatch, "extended")
    fresh = tmp_path / "fresh"
    shutil.copytree(extended, fresh)
    assert invoke(value_args(extended, demo, 6), monkeypatch).exit_code == 0
    assert counted[-1] == 6
    # a finished valuation asked for more without --resume: refused, nothing deleted
    one_line_error(invoke(value_args(extended, demo, 12), monkeypatch),
                   r"holds a finished valuation of 6 permutations: --resume extends it to 12, --restart discards it")
    # fewer permutations than computed: refused even with --resume
    one_line_error(invoke(value_args(extended, demo, 4, "--resume"), monkeypatch),
                   r"holds a finished valuation of 6 permutations, more than --permutations 4")
    result = invoke(value_args(extended, demo, 12, "--resume"), monkeypatch)
    assert result.exit_code == 0, result.output
    assert counted[-1] == 6  # only the new permutations
    assert invoke(value_args(fresh, demo, 12), monkeypatch).exit_code == 0
    assert counted[-1] == 12
    got, want = values_of(extended), values_of(fresh)
    for key in ("cluster_values", "stderr", "n_permutations", "n_evaluations", "u_full", "u_empty"):
        assert got[key] == want[key], key  # bit for bit (JSON floats are exact round-trips of float64)
    assert got["members"] == want["members"]


def test_restart_discards_and_other_data_is_refused(demo, tmp_path, monkeypatch, fake_embed, counted):
    run = clustered(tmp_path, demo, monkeypatch)
    assert invoke(value_args(run, demo, 4), monkeypatch).exit_code == 0
    one_line_error(invoke(value_args(run, demo, 4, "--seed", "5"), monkeypatch),
                   r"finished valuation of 4 permutations with other options: .*--seed")
    one_line_error(invoke(value_args(run, demo, 4, "--resume", "--restart"), monkeypatch), r"not both")
    result = invoke(value_args(run, demo, 4, "--seed", "5", "--restart"), monkeypatch)
    assert result.exit_code == 0, result.output
    assert counted[-1] == 4
    # a run directory of other data: refused before anything is written, unless --restart
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(demo.train.read_text().splitlines()[:60]) + "\n")
    stages_before = (run / "stages.json").read_bytes()
    one_line_error(invoke(["cluster", other, "--clusters", "6", "--run-dir", run, "-q"], monkeypatch),
                   r"holds a run of other data \(.*120 records.*now .*other.jsonl: 60 records.*--restart")
    assert (run / "stages.json").read_bytes() == stages_before
    result = invoke(["cluster", other, "--clusters", "6", "--run-dir", run, "-q", "--restart"], monkeypatch)
    assert result.exit_code == 0, result.output
    assert not (run / "shapley_ckpt").exists()


def test_refine_of_other_data_on_a_run_directory_is_refused_unless_restart(demo, tmp_path, monkeypatch, fake_embed):
    """Issue 21's case: `shed refine OTHER_DATA --run-dir RUN` on a finished run of other data exited 0 and
    recomputed everything over it. Now: exit 2 with one line naming what differs, nothing written; --restart runs."""
    run = tmp_path / "run"
    refine = ["refine", demo.train, "--valid", demo.valid, "--clusters", "6", "--permutations", "2", "--ratio", "0.2",
              "-o", tmp_path / "out.jsonl", "--run-dir", run, "-q"]
    assert invoke(refine, monkeypatch).exit_code == 0
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(demo.train.read_text().splitlines()[:60]) + "\n")
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    argv = ["refine", other, "--valid", demo.valid, "--clusters", "6", "--permutations", "2", "--ratio", "0.2",
            "-o", tmp_path / "other-out.jsonl", "--run-dir", run, "-q"]
    one_line_error(invoke(argv, monkeypatch), r"holds a run of other data .*other.jsonl.*--restart")
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    assert not (tmp_path / "other-out.jsonl").exists()
    result = invoke(argv + ["--restart"], monkeypatch)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other-out.jsonl").exists()
