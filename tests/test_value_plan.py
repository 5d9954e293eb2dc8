"""One value plan: `--dry-run --json` and the real value stage agree on M, the players and the utility evaluations
(both call shed_jax.run.value.plan_value; the count is the engine's own, shapley.expected_evaluations), for the
embedding proxy and for the LM proxy on a tiny random Llama checkpoint under a time budget; and a registered proxy
gets the same ProxyInputs.embeddings under `refine` and under `value`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import hashing_encoder, invoke, write_tiny_checkpoint
from shed_jax import proxies, shapley
from shed_jax.demo import synthetic


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=60, n_topics=4, n_validation=16, seed=0)


@pytest.fixture
def cached_embed(monkeypatch, tmp_path):
    """The hashing encoder below the real embed_texts, so that embeddings go through the embedding cache as in a
    real run (the dry run reads the players' embeddings from there; it never embeds)."""
    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    hashing_encoder(monkeypatch)


def plan_and_run(run_dir, value_args):
    dry = invoke(["value", "--run-dir", run_dir, *value_args, "--dry-run", "--json", "-q"])
    assert dry.exit_code == 0, dry.output
    plan = next(stage for stage in json.loads(dry.stdout)["stages"] if stage["stage"] == "value")["details"]
    assert not (run_dir / "values.json").exists() and not (run_dir / "shapley_ckpt").exists()
    result = invoke(["value", "--run-dir", run_dir, *value_args, "-q"])
    assert result.exit_code == 0, result.output
    values = json.loads((run_dir / "values.json").read_text())
    n_players = len(values["members"]["index"]) if values.get("members") else len(values["cluster_values"])
    return plan, values, n_players


def test_dry_run_and_run_agree_for_the_embedding_proxy(demo, tmp_path, cached_embed):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    plan, values, n_players = plan_and_run(run_dir, ["--valid", demo.valid, "--permutations", "3",
                                                     "--proxy-option", "steps=2"])
    # auto: K=4, 60 candidates -> M=8 (4 x 16 > 60); clusters smaller than 8 are valued whole
    assert plan["players_known"] and plan["proxies_per_cluster"] == values["proxies_per_cluster"] == 8
    assert plan["n_players"] == n_players
    assert plan["removal_step"] == values["removal_step"]
    assert plan["n_evaluations"] == values["n_evaluations"] == shapley.expected_evaluations(
        n_players, values["removal_step"], 3)
    config = json.loads((run_dir / "config.json").read_text())["resolved"]
    assert config["proxies_per_cluster"] == 8 and config["n_players"] == n_players  # the M used


@pytest.mark.slow
def test_dry_run_and_run_agree_for_a_tiny_lm_under_a_time_budget(demo, tmp_path, cached_embed, monkeypatch):
    from test_lm_cli import LM_OPTIONS

    monkeypatch.setenv("SHED_ESTIMATE", "1")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny-llama", seed=2)
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    # the player budget alone gives M=8; a budget of 1 ms fits no M, so auto lowers it to 1 in both
    plan, values, n_players = plan_and_run(run_dir, ["--valid", demo.valid, "--proxy", f"lm:{checkpoint}",
                                                     *LM_OPTIONS, "--permutations", "2", "--removal-step", "1",
                                                     "--value-time-budget", "0.001"])
    assert plan["proxies_per_cluster"] == values["proxies_per_cluster"] == 1
    assert plan["n_players"] == n_players == 4
    assert plan["n_evaluations"] == values["n_evaluations"] == shapley.expected_evaluations(4, 1, 2) == 8


def test_a_proxy_gets_the_same_embeddings_under_refine_and_value(demo, tmp_path, fake_embed):
    from test_proxy_registry import ToyConfig, build_toy

    seen = []

    def recording(inputs, config):
        seen.append(np.asarray(inputs.embeddings))
        return build_toy(inputs, config)

    proxies.register("recordtoy", recording, config_class=ToyConfig)
    try:
        common = ["--valid", demo.valid, "--proxy", "recordtoy", "--permutations", "2", "--proxies-per-cluster", "2"]
        assert invoke(["refine", demo.train, "--ratio", "0.2", "-o", tmp_path / "o.jsonl", "--clusters", "4",
                       "--run-dir", tmp_path / "a", *common, "-q"]).exit_code == 0
        assert invoke(["cluster", demo.train, "--clusters", "4", "--run-dir", tmp_path / "b", "-q"]).exit_code == 0
        assert invoke(["value", "--run-dir", tmp_path / "b", *common, "-q"]).exit_code == 0
        assert len(seen) == 2 and seen[0].ndim == 2 and seen[0].shape[1] > 0
        np.testing.assert_array_equal(seen[0], seen[1])
    finally:
        proxies.unregister("recordtoy")
