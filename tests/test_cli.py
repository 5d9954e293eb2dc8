"""Tests of the ``shed`` command line (click CliRunner): every command, bad inputs, resume, --json.

The sentence encoder is replaced by a hashing bag-of-words embedding and, where the test is about the
command line rather than the estimator, ``shapley.monte_carlo`` by a stub; tests/test_pipeline.py runs the
real engine and the real encoder.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from shed_jax import cli, pipeline, synthetic

FAST = ["--clusters", "8", "--permutations", "4", "--proxy-option", "steps=4", "--proxy-option", "rank=4",
        "--proxies-per-cluster", "1"]  # M pinned where it does not matter; the tests of M give it explicitly


@pytest.fixture
def fake_shapley(monkeypatch):
    """shapley.monte_carlo stub: value of cluster k = 0.01 * k (so QOCS takes the highest cluster ids)."""
    from shed_jax import shapley as shapley_module

    class Calls(list):
        interrupt_on = 0  # raise KeyboardInterrupt in that call (1-based); 0: never

    calls = Calls()

    def run(utility, n_players, **kwargs):
        calls.append(kwargs)
        if len(calls) == calls.interrupt_on:
            raise KeyboardInterrupt
        values = 0.01 * np.arange(n_players, dtype=np.float64)
        p = kwargs["n_permutations"]
        history = {"n_permutations": np.array([p]), "values": values[None], "stderr": np.full((1, n_players), 1e-3)}
        group_values = group_stderr = None
        if kwargs.get("groups") is not None:  # several players per cluster: the clusters' mean member values
            owner = np.asarray(kwargs["groups"])
            group_values = np.bincount(owner, values) / np.bincount(owner)
            group_stderr = np.full(group_values.shape, 1e-3)
            history.update(group_values=group_values[None], group_stderr=group_stderr[None])
        return shapley_module.ShapleyResult(
            values=values, stderr=np.full(n_players, 1e-3), n_evaluations=p * n_players, n_permutations=p,
            n_samples=p, removal_step=kwargs["removal_step"], u_full=0.5, u_empty=0.25, stop_reason="n_permutations",
            history=history, group_values=group_values, group_stderr=group_stderr)

    monkeypatch.setattr(shapley_module, "monte_carlo", run)
    return calls


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=200, n_topics=8, n_validation=40, seed=0)


def invoke(args, **kwargs):
    return CliRunner().invoke(cli.cli, [str(a) for a in args], **kwargs)


def assert_user_error(result, pattern):
    """Exit status 2, a single 'Error: ...' line on stderr matching ``pattern``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert result.stdout == ""


# ------------------------------------------------------------------------------------------------------
# help
# ------------------------------------------------------------------------------------------------------


def test_import_of_the_cli_is_light():
    code = ("import sys, shed_jax.cli; "
            "print(sorted(m for m in ('jax', 'torch', 'transformers', 'sentence_transformers', 'matplotlib', "
            "'shed_jax.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", ["embed", "cluster", "value", "select", "refine", "demo", "report"])
def test_every_command_has_help_with_examples(command):
    result = invoke([command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"shed {command}" in result.output
    for option in ("--json", "--quiet"):
        assert option in result.output


def test_top_level_help_lists_commands():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("embed", "cluster", "value", "select", "refine", "demo", "report"):
        assert command in result.output


# ------------------------------------------------------------------------------------------------------
# bad input: exit status 2, one line, nothing written
# ------------------------------------------------------------------------------------------------------

GOOD = '{"instruction": "Say hi", "input": "", "output": "hi"}\n'
BAD_FILES = {
    "invalid_json": (GOOD + '{"instruction": "x", "output": oops}\n').encode(),
    "missing_field": (GOOD + '{"instruction": "no output here"}\n').encode(),
    "empty": b"",
    "non_utf8": GOOD.encode() + b'{"instruction": "caf\xe9", "input": "", "output": "x"}\n',
}
BAD_PATTERNS = {"invalid_json": r":2\b.*(JSON|json)", "missing_field": r":2: output", "empty": r"empty",
                "non_utf8": r":2\b.*UTF-8"}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_refine_rejects_bad_data_files(case, demo, tmp_path, fake_embed):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(BAD_FILES[case])
    out = tmp_path / "out.jsonl"
    result = invoke(["refine", data, "--valid", demo.valid, "--ratio", "0.5", "-o", out, "--run-dir", tmp_path / "run"])
    assert_user_error(result, BAD_PATTERNS[case])
    assert not out.exists() and fake_embed == []


@pytest.mark.parametrize("args, pattern", [
    (["--size", "1000"], r"budget 1000 is larger than the data \(200"),
    (["--ratio", "0.2", "--clusters", "500"], r"K=500 clusters is more than the 200"),
    (["--ratio", "0.2", "--size", "10"], r"either --ratio or --size"),
    ([], r"give a budget"),
    (["--ratio", "1.5"], r"--ratio: must be in \(0, 1\], got 1.5"),
    (["--ratio", "0.2", "--removal-step", "50", "--clusters", "8", "--proxies-per-cluster", "1"],
     r"--removal-step: 50 is larger"),
    (["--ratio", "0.2", "--removal-step", "129", "--clusters", "8"], r"--removal-step: 129 is larger.*\(128\)"),
    (["--ratio", "0.2", "--proxy-option", "nope=1"], r"--proxy-option: unknown option 'nope'"),
    (["--ratio", "0.2", "--field-map", "instruction"], r"--field-map: expected NAME=KEY"),
])
def test_refine_rejects_impossible_options(args, pattern, demo, tmp_path, fake_embed):
    out = tmp_path / "out.jsonl"
    result = invoke(["refine", demo.train, "--valid", demo.valid, "-o", out, "--run-dir", tmp_path / "run", *args])
    assert_user_error(result, pattern)  # click's own BadParameter too: one line (cli_support.OneLineGroup)
    assert not out.exists() and fake_embed == []


def test_refine_rejects_unknown_sampler_and_missing_valid(demo, tmp_path, fake_embed):
    out = tmp_path / "out.jsonl"
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "--sampler", "best", "-o", out])
    assert result.exit_code == 2 and "best" in result.stderr and "Traceback" not in result.output
    result = invoke(["refine", demo.train, "--valid", tmp_path / "nope.jsonl", "--ratio", "0.2", "-o", out,
                     "--run-dir", tmp_path / "run"])
    assert_user_error(result, r"nope\.jsonl: validation file not found")
    result = invoke(["refine", demo.train, "--ratio", "0.2", "-o", out])
    assert_user_error(result, r"missing --valid")
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2"])
    assert_user_error(result, r"missing -o")
    result = invoke(["refine", "--resume"])
    assert_user_error(result, r"--resume needs --run-dir")
    result = invoke(["refine", "--resume", "--run-dir", tmp_path / "empty"])
    assert_user_error(result, r"no config\.json")
    assert not out.exists() and fake_embed == []


def make_run_dir(tmp_path, n_records, n_clusters):
    """A hand-made run directory: clusters.npz with labels i % K and values.json with K values."""
    run = tmp_path / "run"
    run.mkdir()
    labels = (np.arange(n_records) % n_clusters).astype(np.int32)
    np.savez(run / "clusters.npz", centroids=np.zeros((n_clusters, 4), np.float32), labels=labels,
             proxy_index=np.arange(n_clusters, dtype=np.int64))
    values = {"cluster_values": [float(k) for k in range(n_clusters)], "stderr": [0.1] * n_clusters}
    (run / "values.json").write_text(json.dumps(values))
    return run, labels


def test_select_from_values_file_writes_exact_records(demo, tmp_path):
    run, labels = make_run_dir(tmp_path, 200, 4)
    out = tmp_path / "sel.jsonl"
    result = invoke(["select", demo.train, "--run-dir", run, "--size", "50", "-o", out, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["budget"] == 50 and summary["sampler"] == "qocs"
    lines = demo.train.read_text(encoding="utf-8").splitlines()
    indices = json.loads((run / "selection.json").read_text())["indices"]
    assert out.read_text(encoding="utf-8").splitlines() == [lines[i] for i in indices]
    assert sorted(indices) == [i for i in range(200) if labels[i] == 3]  # the best cluster, whole
    sidecar = [json.loads(x) for x in (tmp_path / "sel.scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in sidecar] == indices and all(s["value"] == 3.0 for s in sidecar)
    assert len((run / "scores.jsonl").read_text().splitlines()) == 200

    # random and qwcs with an explicit values file
    result = invoke(["select", demo.train, "--values", run / "values.json", "--ratio", "0.1", "--sampler", "random",
                     "-o", out, "--seed", "3", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["budget"] == 20


def test_select_rejects_bad_values_files(demo, tmp_path):
    run, _ = make_run_dir(tmp_path, 200, 4)
    out = tmp_path / "sel.jsonl"
    (tmp_path / "short.json").write_text(json.dumps({"cluster_values": [1.0, 2.0, 3.0]}))
    result = invoke(["select", demo.train, "--values", tmp_path / "short.json", "--run-dir", run, "--size", "5",
                     "-o", out])
    assert_user_error(result, r"3 cluster values but clusters\.npz has 4 clusters")
    (tmp_path / "broken.json").write_text("{not json")
    result = invoke(["select", demo.train, "--values", tmp_path / "broken.json", "--run-dir", run, "--size", "5",
                     "-o", out])
    assert_user_error(result, r"broken\.json: not valid JSON")
    (tmp_path / "flat.json").write_text(json.dumps([1, 2, 3, 4]))
    result = invoke(["select", demo.train, "--values", tmp_path / "flat.json", "--run-dir", run, "--size", "5",
                     "-o", out])
    assert_user_error(result, r"cluster_values")
    result = invoke(["select", demo.train, "--run-dir", run, "--size", "500", "-o", out])
    assert_user_error(result, r"larger than the data")
    result = invoke(["select", demo.train, "--run-dir", run, "-o", out])
    assert_user_error(result, r"give a budget")
    lines = demo.train.read_text(encoding="utf-8").splitlines()
    (tmp_path / "fewer.jsonl").write_text("\n".join(lines[:150]) + "\n", encoding="utf-8")
    result = invoke(["select", tmp_path / "fewer.jsonl", "--run-dir", run, "--size", "5", "-o", out])
    assert_user_error(result, r"clustered 200 records but .* has 150")
    result = invoke(["select", demo.train, "--size", "5", "-o", out])
    assert_user_error(result, r"--values")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------
# the stages one by one, the whole pipeline, resume, demo, report
# ------------------------------------------------------------------------------------------------------


def test_stage_commands_chain_in_one_run_directory(demo, tmp_path, fake_embed, fake_shapley):
    run = tmp_path / "run"
    result = invoke(["embed", demo.train, "--run-dir", run, "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_examples"] == 200 and result.stderr == ""

    result = invoke(["cluster", demo.train, "--clusters", "8", "--run-dir", run, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_clusters"] == 8 and summary["n_candidates"] == 200
    assert "cluster: k-means K=8 on 200 candidate records" in result.stderr
    assert np.load(run / "clusters.npz")["labels"].shape == (200,)

    result = invoke(["value", "--run-dir", run, "--json"])
    assert_user_error(result, r"no validation set")
    result = invoke(["value", "--run-dir", run, "--valid", demo.valid, "--permutations", "5", "--removal-step", "2",
                     "--proxy-option", "steps=3", "--proxies-per-cluster", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_permutations"] == 5 and summary["removal_step"] == 2 and not summary["skipped"]
    assert "cluster: up to date" in result.stderr  # not re-clustered
    assert fake_shapley[-1]["checkpoint_dir"] == str(run / "shapley_ckpt")
    values = json.loads((run / "values.json").read_text())
    assert values["cluster_values"] == pytest.approx(0.01 * np.arange(8)) and values["utility"]["steps"] == 3
    config = pipeline.load_config(run)
    assert config.n_permutations == 5 and config.removal_step == 2 and config.n_clusters == 8

    result = invoke(["value", "--run-dir", run, "--json"])  # everything from config.json: up to date
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] and len(fake_shapley) == 1

    out = tmp_path / "sel.jsonl"
    result = invoke(["select", demo.train, "--run-dir", run, "--ratio", "0.25", "-o", out])
    assert result.exit_code == 0, result.output
    assert "selected 50 of 200" in result.stdout
    labels = np.load(run / "clusters.npz")["labels"]
    picked = json.loads((run / "selection.json").read_text())["indices"]
    sizes, used = np.bincount(labels[labels >= 0], minlength=8), np.bincount(labels[picked], minlength=8)
    taken = [k for k in range(7, -1, -1) if used[k] > 0]  # cluster k is worth 0.01 k (fake_shapley)
    assert taken == list(range(7, 7 - len(taken), -1))  # QOCS: the highest-valued clusters, in order ...
    assert all(used[k] == sizes[k] for k in taken[:-1]) and used.sum() == 50  # ... whole but the last

    result = invoke(["report", run, "--json"])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").exists() and json.loads(result.stdout)["report"] == str(run / "report.html")
    result = invoke(["report", tmp_path / "missing"])
    assert_user_error(result, r"not a directory")


def test_refine_json_and_resume_after_interruption(demo, tmp_path, fake_embed, fake_shapley, monkeypatch):
    run = tmp_path / "run"
    out = tmp_path / "refined.jsonl"
    args = ["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run, *FAST]
    fake_shapley.interrupt_on = 1  # Ctrl-C in the value stage
    result = invoke(args)
    assert result.exit_code == 130
    assert f"shed refine --resume --run-dir {run}" in result.stderr
    assert not out.exists() and (run / "clusters.npz").exists() and not (run / "values.json").exists()

    result = invoke(["refine", "--resume", "--run-dir", run, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stages"] == {"embed": "skipped", "cluster": "skipped", "value": "computed",
                                 "select": "computed"}
    assert summary["budget"] == 40 and summary["output"] == str(out)
    # the embed stage is loaded, not recomputed (the proxy's inputs hold the players' embeddings, read back)
    assert fake_shapley[-1]["n_permutations"] == 4
    lines = demo.train.read_text(encoding="utf-8").splitlines()
    indices = json.loads((run / "selection.json").read_text())["indices"]
    assert out.read_text(encoding="utf-8").splitlines() == [lines[i] for i in indices]
    assert (run / "summary.json").exists() and (run / "report.html").exists()
    scores = [json.loads(x) for x in (run / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 200 and sum(s["selected"] for s in scores) == 40

    # resume with an override: only the selection is redone
    result = invoke(["refine", "--resume", "--run-dir", run, "--size", "30", "--sampler", "qwcs", "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["budget"] == 30 and summary["sampler"] == "qwcs"
    assert summary["stages"]["value"] == "skipped" and summary["stages"]["select"] == "computed"
    assert len(out.read_text().splitlines()) == 30 and len(fake_shapley) == 2

    # a stand-alone `shed select` with other settings writes a named selection and keeps the run's (issue 21)
    result = invoke(["select", demo.train, "--run-dir", run, "--size", "7", "--sampler", "random",
                     "-o", tmp_path / "other.jsonl"])
    assert result.exit_code == 0, result.output
    assert (run / "selection-random-n7.json").is_file()
    assert len(json.loads((run / "selection.json").read_text())["indices"]) == 30
    # with --replace it overwrites selection.json: the next refine must redo its own selection
    result = invoke(["select", demo.train, "--run-dir", run, "--size", "7", "--sampler", "random", "--replace",
                     "-o", tmp_path / "other.jsonl"])
    assert result.exit_code == 0, result.output
    result = invoke(["refine", "--resume", "--run-dir", run, "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stages"]["select"] == "computed" and summary["budget"] == 30
    assert len(json.loads((run / "selection.json").read_text())["indices"]) == 30


def test_default_run_dir_under_shed_home(demo, tmp_path, fake_embed, monkeypatch):
    monkeypatch.setenv("SHED_HOME", str(tmp_path / "home"))
    result = invoke(["embed", demo.train, "--json", "-q"])
    assert result.exit_code == 0, result.output
    run_dir = json.loads(result.stdout)["run_dir"]
    assert run_dir.startswith(str(tmp_path / "home" / "runs" / "train-"))
    assert json.loads((tmp_path / "home" / "runs").joinpath(run_dir.split("/")[-1], "config.json").read_text())


def test_demo_reports_junk_rates(tmp_path, fake_embed, fake_shapley, monkeypatch):
    monkeypatch.setitem(pipeline.DEMO_SIZES, "small",
                        {"n_examples": 200, "n_topics": 8, "n_clusters": 8, "n_validation": 40})
    result = invoke(["demo", "--run-dir", tmp_path / "demo", "--permutations", "3", "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["junk_rate_input"] == pytest.approx(0.2) and summary["budget"] == 40
    assert set(summary["junk_rate_selected"]) == {"qocs", "qwcs", "random"}
    junk = np.zeros(200, bool)
    junk[json.loads((tmp_path / "demo" / "demo_data" / "meta.json").read_text())["junk_indices"]] = True
    picked = json.loads((tmp_path / "demo" / "selection.json").read_text())["indices"]
    assert summary["junk_rate_selected"]["qocs"] == pytest.approx(junk[picked].mean())
    result = invoke(["demo", "--run-dir", tmp_path / "demo", "--permutations", "3"])
    assert result.exit_code == 0 and "junk rate, QOCS selection" in result.stdout
    assert "up to date" in result.stderr  # the second run reuses every stage


def test_value_with_several_proxies_per_cluster(demo, tmp_path, fake_embed, fake_shapley):
    run = tmp_path / "run"
    out = tmp_path / "refined.jsonl"
    args = ["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run, *FAST,
            "--proxies-per-cluster", "3", "--json", "-q"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["proxies_per_cluster"] == 3
    payload = json.loads((run / "values.json").read_text())
    n_players = len(payload["members"]["index"])
    assert 8 < n_players <= 24 and len(payload["cluster_values"]) == 8
    # `shed value` overrides it for the run directory: back to one proxy per cluster, values recomputed
    result = invoke(["value", "--run-dir", run, "--proxies-per-cluster", "1", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert "members" not in json.loads((run / "values.json").read_text())
    assert json.loads((run / "config.json").read_text())["config"]["proxies_per_cluster"] == 1
    result = invoke(["value", "--run-dir", run, "--proxies-per-cluster", "0"])
    assert result.exit_code == 2


# ------------------------------------------------------------------------------------------------------
# consistency of the options (issue 11)
# ------------------------------------------------------------------------------------------------------


def test_choice_options_list_their_choices_and_paths_show_as_paths():
    import click

    for command in ("value", "refine"):
        text = invoke([command, "--help"]).output
        assert "[auto|multiple_choice|alpaca|" in text  # --valid-format
        assert "[embedding|lm" in text  # --proxy, from the registry
    assert "[qocs|qwcs|random]" in invoke(["select", "--help"]).output
    for command in ("embed", "cluster", "select", "refine"):
        params = {p.name: p for p in cli.cli.commands[command].params}
        assert isinstance(params["data"].type, click.Path), command
        assert isinstance(params["run_dir"].type, click.Path), command
    refine_params = {p.name: p for p in cli.cli.commands["refine"].params}
    for name in ("output", "valid"):
        assert isinstance(refine_params[name].type, click.Path), name


def test_seed_is_offered_only_where_it_means_something(demo, tmp_path, fake_embed):
    assert "--seed" not in invoke(["embed", "--help"]).output
    # still accepted (hidden, ignored) so that existing scripts keep working
    result = invoke(["embed", demo.train, "--run-dir", tmp_path / "run", "--seed", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert "k-means" in invoke(["cluster", "--help"]).output.split("--seed", 1)[1].split("--", 1)[0]
    assert "qwcs and random" in invoke(["select", "--help"]).output.split("--seed", 1)[1]
    assert "--seed" in invoke(["refine", "--help"]).output and "--seed" in invoke(["value", "--help"]).output


def test_keep_order_writes_the_selection_in_input_order(demo, tmp_path):
    run, labels = make_run_dir(tmp_path, 200, 4)
    default, kept = tmp_path / "default.jsonl", tmp_path / "kept.jsonl"
    args = ["select", demo.train, "--run-dir", run, "--size", "120"]
    assert invoke([*args, "-o", default]).exit_code == 0
    indices = json.loads((run / "selection.json").read_text())["indices"]
    assert indices != sorted(indices)  # qocs: best cluster first, so not input order
    assert invoke([*args, "-o", kept, "--keep-order"]).exit_code == 0
    lines = demo.train.read_text(encoding="utf-8").splitlines()
    assert kept.read_text(encoding="utf-8").splitlines() == [lines[i] for i in sorted(indices)]
    assert default.read_text(encoding="utf-8").splitlines() == [lines[i] for i in indices]
    sidecar = [json.loads(x) for x in (tmp_path / "kept.scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in sidecar] == sorted(indices)


def test_resume_with_another_embedding_dtype_reembeds(demo, tmp_path, fake_embed, fake_shapley, monkeypatch):
    """The embedding dtype changes the vectors, so it is in the embed stage's fingerprint: ``--resume`` with
    another ``--embed-dtype`` embeds again and redoes every stage after it; ``auto`` counts as the dtype it resolves
    to on this machine; a stand-alone ``shed embed`` in another dtype leaves the report marking the rest out of date."""
    from shed_jax import embed as embed_module

    run = tmp_path / "run"
    out = tmp_path / "refined.jsonl"
    result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.2", "-o", out, "--run-dir", run,
                     *FAST, "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "stages.json").read_text())["stages"]["embed"]["dtype"] == "float32"
    embedded = len(fake_embed)

    result = invoke(["refine", "--resume", "--run-dir", run, "--embed-dtype", "bfloat16", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"] == {stage: "computed" for stage in pipeline.STAGES}
    assert len(fake_embed) > embedded and len(fake_shapley) == 2
    assert json.loads((run / "stages.json").read_text())["stages"]["embed"]["dtype"] == "bfloat16"
    assert pipeline.load_config(run).embed_dtype == "bfloat16"

    # auto is fingerprinted resolved: on a CPU with bfloat16 units it is the run just made ...
    monkeypatch.setattr(embed_module, "_cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    embedded = len(fake_embed)
    result = invoke(["refine", "--resume", "--run-dir", run, "--embed-dtype", "auto", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"]["embed"] == "skipped"
    assert json.loads(result.stdout)["stages"]["value"] == "skipped" and len(fake_shapley) == 2
    # ... elsewhere it is float32: embedded again
    monkeypatch.setattr(embed_module, "_cpu_has_native_bf16", lambda: False)
    result = invoke(["refine", "--resume", "--run-dir", run, "--embed-dtype", "auto", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"] == {stage: "computed" for stage in pipeline.STAGES}
    assert json.loads((run / "stages.json").read_text())["stages"]["embed"]["dtype"] == "float32"

    # the embed stage alone in another dtype: the values and selection describe the old embeddings
    result = invoke(["embed", demo.train, "--run-dir", run, "--embed-dtype", "bfloat16", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert not json.loads(result.stdout).get("skipped", False)
    result = invoke(["report", run, "--json"])
    assert result.exit_code == 0, result.output
    assert "Out of date: values.json were computed before the embed stage was run again" in \
        (run / "report.html").read_text()
