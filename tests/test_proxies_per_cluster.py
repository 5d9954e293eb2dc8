"""``--proxies-per-cluster auto`` (the default): the rule, the option's parsing, what a run records, the time
budget of a cost-estimating proxy; and the report's mixed-cluster section."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from shed_jax import cli, pipeline, proxies, synthetic
from shed_jax.config import AUTO_PROXIES_PER_CLUSTER, RefineConfig, auto_proxies_per_cluster
from shed_jax.errors import PipelineError

FAST_PROXY = (("steps", 8), ("rank", 4), ("n_distractors", 3))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """200 records over 8 topics + 40 multiple-choice validation items."""
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=200, n_topics=8, n_validation=40, seed=0)


def invoke(args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def brute_force_rule(k, n, budget, fits=lambda m: True):
    """The documented rule, written out: every candidate checked, the largest that passes."""
    ok = [m for m in (1, 2, 4, 8, 16) if m == 1 or (k * m <= budget and k * m <= n and fits(m))]
    return max(ok)


@pytest.mark.parametrize("k,n,budget", [(150, 3000, 1000), (150, 3000, 4000), (1000, 15011, 4000), (64, 600, 4000), (16, 600, 4000),
                                        (8, 200, 20), (300, 299, 4000), (1, 1, 1), (250, 100000, 3999)])
def test_auto_rule_against_brute_force(k, n, budget):
    assert auto_proxies_per_cluster(k, n, max_players=budget) == brute_force_rule(k, n, budget)
    no_eights = lambda m: m != 8  # noqa: E731  (a time budget that rejects only M=8 is honoured as given)
    assert auto_proxies_per_cluster(k, n, max_players=budget, fits=no_eights) == brute_force_rule(k, n, budget,
                                                                                                   no_eights)
    assert AUTO_PROXIES_PER_CLUSTER == (1, 2, 4, 8, 16)


def test_option_parsing_and_errors_name_the_option(tmp_path):
    base = dict(data="d.jsonl")
    assert RefineConfig(**base).proxies_per_cluster == "auto"
    assert RefineConfig(**base, proxies_per_cluster="AUTO").proxies_per_cluster == "auto"
    assert RefineConfig(**base, proxies_per_cluster="8").proxies_per_cluster == 8
    assert RefineConfig.from_dict(RefineConfig(**base, proxies_per_cluster=4).to_dict()).proxies_per_cluster == 4
    for bad, message in (("banana", "must be auto or a positive integer"), (0, "must be auto or >= 1"),
                         ("-3", "must be auto or >= 1"), (2.5, "must be auto or a positive integer"),
                         (True, "must be auto or a positive integer")):
        with pytest.raises(PipelineError, match="--proxies-per-cluster") as info:
            RefineConfig(**base, proxies_per_cluster=bad)
        assert message in str(info.value)
    with pytest.raises(PipelineError, match="--max-players"):
        RefineConfig(**base, value_player_budget=0)
    with pytest.raises(PipelineError, match="--value-time-budget"):
        RefineConfig(**base, value_time_budget=0)
    for bad in ("banana", "0", "-3"):
        result = invoke(["refine", "d.jsonl", "--proxies-per-cluster", bad])
        assert result.exit_code == 2 and "--proxies-per-cluster" in result.output, result.output
    help_text = invoke(["refine", "--help"]).output
    assert "--proxies-per-cluster" in help_text and "auto" in help_text and "--max-players" in help_text


def fake_monte_carlo(calls):
    from shed_jax import shapley as shapley_module

    def run(utility, n_players, **kwargs):
        calls.append(dict(kwargs, n_players=n_players))
        values = 0.01 * np.arange(n_players, dtype=np.float64)
        p = kwargs["n_permutations"]
        owner = kwargs.get("groups")
        group_values = None if owner is None else np.bincount(owner, values) / np.bincount(owner)
        group_stderr = None if owner is None else np.full(group_values.shape, 0.002)
        history = {"n_permutations": np.array([p]), "values": values[None], "stderr": np.full((1, n_players), .001)}
        if owner is not None:
            history.update(group_values=group_values[None], group_stderr=group_stderr[None])
        return shapley_module.ShapleyResult(
            values=values, stderr=np.full(n_players, 0.001), n_evaluations=p * n_players + 2, n_permutations=p,
            n_samples=p, removal_step=kwargs["removal_step"], u_full=0.5, u_empty=0.25,
            stop_reason="n_permutations", history=history, group_values=group_values, group_stderr=group_stderr)
    return run


def test_auto_is_resolved_printed_and_recorded(demo_data, tmp_path, fake_embed, monkeypatch):
    from shed_jax import shapley as shapley_module

    calls = []
    monkeypatch.setattr(shapley_module, "monte_carlo", fake_monte_carlo(calls))
    run = tmp_path / "run"
    args = ["refine", demo_data.train, "--valid", demo_data.valid, "--ratio", "0.2", "-o", tmp_path / "o.jsonl",
            "--run-dir", run, "--clusters", "8", "--permutations", "4", "--proxy-option", "steps=4"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    # 200 candidates, K=8: 16 x 8 = 128 <= the default budget (1,000) and <= 200 records; the players are the
    # 16 members nearest each centroid, all members of a smaller cluster
    labels = np.load(run / "clusters.npz")["labels"]
    players = {m: int(np.minimum(np.bincount(labels[labels >= 0], minlength=8), m).sum()) for m in (2, 16)}
    assert f"value: proxies per cluster: auto -> 16 (K=8, {players[16]} players within the budget of 1,000 players" \
        in result.stderr, result.stderr
    values = json.loads((run / "values.json").read_text())
    assert values["proxies_per_cluster"] == 16 and len(values["members"]["index"]) == players[16]
    assert json.loads((run / "config.json").read_text())["resolved"]["proxies_per_cluster"] == 16
    assert json.loads((run / "stages.json").read_text())["stages"]["value"]["proxies_per_cluster"] == 16
    assert calls[-1]["removal_step"] == 4 and calls[-1]["n_groups"] == 8  # default step for 128 players
    # the cluster values are the engine's group estimates (exact), not a recombination of member errors
    np.testing.assert_array_equal(values["stderr"], np.full(8, 0.002))
    # a smaller player budget resolves a smaller M: the value stage (only) is recomputed
    result = invoke(args + ["--max-players", "20"])
    assert result.exit_code == 0, result.output
    assert f"auto -> 2 (K=8, {players[2]} players within the budget of 20 players" in result.stderr
    assert json.loads((run / "values.json").read_text())["proxies_per_cluster"] == 2
    # a budget that resolves the same M changes nothing: the value fingerprint holds the resolved M
    result = invoke(args + ["--max-players", "31"])
    assert result.exit_code == 0 and "value: up to date" in result.stderr, result.stderr
    # an explicit integer wins over auto
    result = invoke(args + ["--proxies-per-cluster", "1"])
    assert result.exit_code == 0, result.output
    assert "auto ->" not in result.stderr
    assert "members" not in json.loads((run / "values.json").read_text())


def test_auto_and_removal_step_checks_in_preflight(demo_data, tmp_path):
    config = RefineConfig(data=str(demo_data.train), valid=str(demo_data.valid), ratio=0.2, n_clusters=8,
                          run_dir=str(tmp_path / "run"), output=str(tmp_path / "o.jsonl"), removal_step=100)
    with pytest.raises(PipelineError, match=r"--removal-step.*\(128\)"):  # auto: 16 x 8 players
        pipeline.refine(config.replace(removal_step=129), progress=False, report=False)
    assert config.resolved_removal_step(8, 16) == 100 and config.replace(removal_step=None).resolved_removal_step(8, 16) == 4
    with pytest.raises(ValueError, match="resolved"):
        config.replace(removal_step=None).resolved_removal_step(8)


def test_time_budget_lowers_auto_for_a_proxy_that_estimates_its_cost(fake_embed, demo_data, tmp_path, monkeypatch):
    from test_proxy_registry import ToyConfig, ToyUtility, toy_weights

    class SlowToyUtility(ToyUtility):
        def estimate_seconds(self, n_evaluations: int) -> float:
            return 2.0 * n_evaluations

    proxies.register("slowtoy2", lambda inputs, config: SlowToyUtility(toy_weights(inputs.responses), config),
                     config_class=ToyConfig)
    monkeypatch.setenv("SHED_ESTIMATE", "1")  # the tests turn estimates off; this one needs the proxy's own
    try:
        run_dir = tmp_path / "run"
        assert invoke(["cluster", demo_data.train, "--clusters", "8", "--run-dir", run_dir, "-q"]).exit_code == 0
        labels = np.load(run_dir / "clusters.npz")["labels"]
        sizes = np.bincount(labels[labels >= 0], minlength=8)
        # 100 permutations, removal step 1: 2 s x (100 x (players - 1) + 2); a budget of 10,000 s fits 50 players
        players = {m: int(np.minimum(sizes, m).sum()) for m in (1, 2, 4, 8, 16)}
        expected = max(m for m in (1, 2, 4, 8, 16) if m == 1 or 2.0 * (100 * (players[m] - 1) + 2) <= 10_000)
        result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "slowtoy2",
                         "--permutations", "100", "--removal-step", "1", "--value-time-budget", "10000"])
        assert result.exit_code == 0, result.output
        assert expected == 4  # 32 players: 6,204 s; 8 per cluster would be 64 players: 12,604 s
        assert f"auto -> {expected} (K=8, {players[expected]} players within the budget of 1,000 players " \
               "(--max-players) and 2.8 h (--value-time-budget; estimated 1.7 h)" in result.stderr, result.stderr
        assert json.loads((run_dir / "values.json").read_text())["proxies_per_cluster"] == expected
    finally:
        proxies.unregister("slowtoy2")


def test_report_flags_mixed_clusters(tmp_path):
    from shed_jax import report
    from shed_jax.report._mixed import member_spread
    from shed_jax.run.artifacts import MemberValues, Values

    cluster = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    value = np.array([0.30, -0.25, 0.05, 0.10, 0.12, 0.08, 0.5, -0.5])
    stderr = np.array([0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.4, 0.4])  # cluster 2: wide but within noise
    spread = member_spread(cluster, value, stderr, 3)
    # reference by hand
    assert spread.mixed.tolist() == [True, False, False]
    np.testing.assert_allclose(spread.low, [-0.25, 0.08, -0.5])
    np.testing.assert_allclose(spread.high, [0.30, 0.12, 0.5])
    np.testing.assert_allclose(spread.sd, [np.std(value[cluster == k]) for k in range(3)])
    assert spread.n_positive.tolist() == [1, 1, 0] and spread.n_negative.tolist() == [1, 0, 0]  # 0.12 > 2 x 0.05 only
    run = tmp_path / "run"
    run.mkdir()
    Values(np.array([0.0333, 0.1, 0.0]), np.array([0.02, 0.01, 0.3]), 10, 100, 1, 0, {"proxy": "toy"}, None, None,
           np.array([0, 3, 6]), 3, MemberValues(np.arange(8), cluster, value, stderr)).save(run)
    text = report.write_report(run).read_text()
    assert "1 of 3 clusters look mixed" in text and "Do the members of a cluster agree?" in text
    Values(np.array([0.1, 0.2]), np.array([0.01, 0.01]), 10, 100, 1, 0, {"proxy": "toy"}).save(run)
    assert "Do the members of a cluster agree?" not in report.write_report(run).read_text()  # one proxy each


def test_resume_reuses_the_recorded_m_and_an_old_checkpoint_restarts(demo_data, tmp_path, fake_embed, monkeypatch):
    from shed_jax import shapley as shapley_module

    calls = []
    fake = fake_monte_carlo(calls)
    monkeypatch.setattr(shapley_module, "monte_carlo", fake)
    run = tmp_path / "run"
    args = ["refine", demo_data.train, "--valid", demo_data.valid, "--ratio", "0.2", "-o", tmp_path / "o.jsonl",
            "--run-dir", run, "--clusters", "8", "--permutations", "4", "--proxy-option", "steps=4"]
    assert invoke(args).exit_code == 0
    labels = np.load(run / "clusters.npz")["labels"]
    players_2 = int(np.minimum(np.bincount(labels[labels >= 0], minlength=8), 2).sum())
    # an interrupted valuation that had chosen M=2 (e.g. under a time budget), with a checkpoint written by an
    # older shed_jax (no per-cluster state): --resume keeps M=2 and restarts the valuation from permutation 0
    stages = json.loads((run / "stages.json").read_text())
    stages["stages"]["value"].update(status="running", proxies_per_cluster=2)
    (run / "stages.json").write_text(json.dumps(stages))
    (run / "shapley_ckpt").mkdir()

    def old_checkpoint_once(utility, n_players, **kwargs):
        if not any(c.get("refused") for c in calls):
            calls.append({"refused": True})
            raise shapley_module.MissingGroupStateError("checkpoint holds no per-group state")
        return fake(utility, n_players, **kwargs)

    monkeypatch.setattr(shapley_module, "monte_carlo", old_checkpoint_once)
    result = invoke(["refine", "--resume", "--run-dir", run])
    assert result.exit_code == 0, result.output
    assert "discarding it and starting from permutation 0" in result.stderr
    assert "auto ->" not in result.stderr and not (run / "shapley_ckpt").exists()
    assert calls[-1]["n_players"] == players_2
    assert json.loads((run / "values.json").read_text())["proxies_per_cluster"] == 2
