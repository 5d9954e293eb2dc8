"""The LM proxy's cost estimate (issue 21): it times one optimiser step per training width and one scoring chunk per
validation width and scales, instead of fine-tuning a round of coalitions; compilation is reported apart.

Timing ratios (estimate against the real value stage) are measured in bench/lm_estimate.py, not here."""
from __future__ import annotations

import types

import numpy as np
import pytest

from test_lm_finetune import tiny_config, tiny_tokenizer, tiny_weights
from test_lm_proxy import MC_ITEMS, PLAYER_PROMPTS, PLAYER_RESPONSES, _write_jsonl, save_hf_checkpoint


@pytest.fixture(scope="module")
def utility(tmp_path_factory):
    from shed_jax.data import read_validation
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy

    root = tmp_path_factory.mktemp("lm_estimate")
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    save_hf_checkpoint(root, config, tiny_weights(config, seed=1), tokenizer)
    validation = read_validation(_write_jsonl(root / "mc.jsonl", MC_ITEMS * 3))
    inputs = types.SimpleNamespace(prompts=tuple(PLAYER_PROMPTS), responses=tuple(PLAYER_RESPONSES), records=(),
                                   embeddings=None, validation=validation, seed=0, progress=False)
    return build_lm_proxy(inputs, LMProxyConfig(model=str(root), steps=50, warmup_steps=0, batch_size=2,
                                                max_length=64, slots=2, dtype="float32", eval_batch_size=4))


def test_the_estimate_times_steps_not_a_round_of_fine_tunes(utility, monkeypatch):
    calls = {"step": 0, "score": 0}
    trainer, scorer = utility.trainer, utility.scorer
    # packed across slots is the default on one device; packed per slot and padded steps otherwise (issue 18)
    step_name = "_shared_step" if trainer.across_slots else "_packed_step" if trainer.packing else "_step"
    step, score = getattr(trainer, step_name), scorer._score_group

    def counting_step(*args, **kwargs):
        calls["step"] += 1
        return step(*args, **kwargs)

    def counting_score(*args, **kwargs):
        calls["score"] += 1
        return score(*args, **kwargs)

    def no_fine_tunes(*args, **kwargs):
        raise AssertionError("the estimate fine-tuned a round of coalitions")

    monkeypatch.setattr(trainer, step_name, counting_step)
    monkeypatch.setattr(scorer, "_score_group", counting_score)
    monkeypatch.setattr(trainer, "train", no_fine_tunes)
    seconds = utility.estimate_seconds(40)
    cost = utility.estimate_cost()
    timed = cost["timed"]
    # one call per timed width (its compilation measured apart), a second one when the first was short (under
    # _RETIME_BELOW_S): 1-2 optimiser steps each, not 50 steps x 2 slots
    assert calls["step"] == len(timed["train_widths"]) + timed["retimed"]["train"]
    assert 1 <= len(timed["train_widths"]) <= 2 and timed["retimed"]["train"] <= len(timed["train_widths"])
    assert calls["score"] == 1 + timed["retimed"]["score"] and len(timed["score_widths"]) == 1  # the widest
    assert utility.n_fine_tunes == 0
    # widths: rows per step (packed across slots: the rows of all slots), packed rows, or padded sequence widths
    buckets = (trainer.shared_row_buckets if trainer.across_slots else trainer.row_buckets if trainer.packing
               else trainer.buckets)
    assert set(cost["step_width_share"]) <= set(buckets)
    assert sum(cost["step_width_share"].values()) == pytest.approx(1.0)
    assert cost["seconds_compile"] > 0 and cost["seconds_per_round"] > 0
    # scaled: 40 evaluations are 20 rounds of 2 slots, plus the compilation of every width, once
    assert seconds == pytest.approx(20 * cost["seconds_per_round"] + cost["seconds_compile"], rel=1e-9)
    assert utility.estimate_seconds(80) - cost["seconds_compile"] == pytest.approx(
        2 * (seconds - cost["seconds_compile"]), rel=1e-9)
    assert calls["step"] == len(timed["train_widths"]) + timed["retimed"]["train"]  # measured once per utility


def test_after_the_estimate_the_utility_gives_the_same_values(utility):
    masks = np.zeros((3, len(PLAYER_PROMPTS)), bool)
    masks[0, :2] = masks[1, 2:5] = masks[2, :] = True
    values = utility.evaluate(masks)
    assert np.all(np.isfinite(values))
    again = utility.evaluate(masks)
    np.testing.assert_allclose(values, again, rtol=0, atol=1e-6)


def test_a_round_of_fine_tunes_shows_its_steps_and_scoring(utility, monkeypatch, capsys):
    monkeypatch.setenv("SHED_PROGRESS", "plain")
    monkeypatch.setenv("SHED_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(utility, "progress", True)
    masks = np.zeros((2, len(PLAYER_PROMPTS)), bool)
    masks[0, 1:4] = masks[1, 3:] = True
    utility.evaluate(masks)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("LM round: ")]
    # 50 steps + scoring = 51 units: a line at each new tenth that is reached before the end
    assert lines and lines[0].startswith("LM round: 2 fine-tunes of 50 steps, then scoring 12 validation items: ")
    assert len(lines) >= 5


def test_over_the_time_budget_the_run_says_so_with_settings_that_fit(utility):
    from shed_jax.budget_advice import over_budget_lines
    from shed_jax.config import RefineConfig

    n_evaluations, n_permutations = 42, 8                      # 8 permutations of 5 players, U(full), U(empty)
    seconds = utility.estimate_seconds(n_evaluations)
    compile_seconds = utility.estimate_cost()["seconds_compile"]
    assert utility.cheaper_options(n_evaluations, n_permutations, seconds * 1.01) == []
    budget = compile_seconds + 0.5 * (seconds - compile_seconds)  # half the work fits
    options = utility.cheaper_options(n_evaluations, n_permutations, budget)
    assert options and all(estimate <= budget for _, estimate in options)
    flags = [flag for flag, _ in options]
    assert any(flag.startswith("--permutations ") and int(flag.split()[1]) < n_permutations for flag in flags)
    assert any(flag.startswith("--proxy-option steps=") for flag in flags)
    config = RefineConfig(data="d.jsonl", proxy="lm", value_time_budget=budget, proxies_per_cluster=1)
    lines = over_budget_lines(utility, seconds, n_evaluations, n_permutations, config)
    assert "does not fit --value-time-budget" in lines[0] and "even with one proxy per cluster" in lines[0]
    assert any("--proxy embedding" in line for line in lines)
    assert all(any(flag in line for line in lines) for flag in flags)
    assert over_budget_lines(utility, seconds, n_evaluations, n_permutations,
                             RefineConfig(data="d.jsonl", proxy="lm", value_time_budget=2 * seconds)) == []


def test_scoring_is_capped_by_default():
    from shed_jax.proxies.lm import LMProxyConfig

    assert LMProxyConfig().max_validation == 200
    assert LMProxyConfig(max_validation=None).max_validation is None


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from shed_jax.data import read_validation

    root = tmp_path_factory.mktemp("lm_rounds")
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    save_hf_checkpoint(root, config, tiny_weights(config, seed=1), tokenizer)
    return root, read_validation(_write_jsonl(root / "mc.jsonl", MC_ITEMS))


@pytest.mark.parametrize("n_permutations, removal_step, slots, cache", [
    (3, 1, 2, True), pytest.param(2, 2, 3, True, marks=pytest.mark.slow),
    pytest.param(2, 1, 4, False, marks=pytest.mark.slow)])
def test_the_estimated_rounds_are_the_rounds_the_run_makes(small_model, n_permutations, removal_step, slots, cache):
    """The estimate counts the rounds the engine makes the utility run (U(full) alone in the first round, batches
    that do not fill the slots, duplicates, the cache), not ``evaluations / slots``."""
    from shed_jax import shapley
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy

    root, validation = small_model
    inputs = types.SimpleNamespace(prompts=tuple(PLAYER_PROMPTS), responses=tuple(PLAYER_RESPONSES), records=(),
                                   embeddings=None, validation=validation, seed=0, progress=False)
    utility = build_lm_proxy(inputs, LMProxyConfig(model=str(root), steps=1, warmup_steps=0, batch_size=2,
                                                   max_length=64, slots=slots, dtype="float32", eval_batch_size=4,
                                                   cache=cache))
    n = len(PLAYER_PROMPTS)
    expected = utility.expected_rounds(n_permutations, removal_step=removal_step, seed=3)
    result = shapley.monte_carlo(utility, n, n_permutations=n_permutations, removal_step=removal_step, seed=3)
    assert utility.n_rounds == expected
    assert result.n_evaluations == shapley.expected_evaluations(n, removal_step, n_permutations)


def test_the_run_estimate_and_the_advice_use_the_counted_rounds(utility):
    from shed_jax import shapley

    n_permutations = 4
    seconds = utility.estimate_run_seconds(n_permutations, removal_step=1, seed=0)
    cost = utility.estimate_cost()
    rounds = cost["rounds"]
    assert rounds == utility.expected_rounds(n_permutations, removal_step=1, seed=0)
    # the counted rounds as full rounds: on a CPU a round costs the slots it uses (U(full) alone: 1 of n_slots)
    training, scoring = cost["full_rounds_training"], cost["full_rounds_scoring"]
    assert training < rounds and scoring <= rounds   # the first round fine-tunes U(full) alone
    # plus the compilation, with the scorer's programs for the other counts of scored slots on a CPU
    assert cost["seconds_compile_run"] >= cost["seconds_compile"]
    assert seconds == pytest.approx(training * cost["seconds_training_round"] + scoring * cost["seconds_scoring_round"]
                                    + cost["seconds_compile_run"], rel=1e-9)
    n_evaluations = shapley.expected_evaluations(len(PLAYER_PROMPTS), 1, n_permutations)
    assert utility.cheaper_options(n_evaluations, n_permutations, seconds * 1.001) == []
    options = dict(utility.cheaper_options(n_evaluations, n_permutations, seconds - 0.5 * cost["seconds_per_round"]))
    fewer = [flag for flag in options if flag.startswith("--permutations ")]
    assert fewer
    p = int(fewer[0].split()[1])
    expected_rounds = 1 + -(-(rounds - 1) * p // n_permutations)  # U(full)'s round, the rest in proportion
    full_rounds = (training * cost["seconds_training_round"] + scoring * cost["seconds_scoring_round"]) / rounds
    assert options[fewer[0]] == pytest.approx(expected_rounds * full_rounds + cost["seconds_compile_run"], rel=1e-9)


def test_the_round_counter_counts_the_slots_each_round_uses():
    """Per round, the fine-tunes and the coalitions scored (U(empty) included), as LMProxyUtility.evaluate runs them:
    what the estimate charges a round on a CPU, where idle slots skip their step and are not scored."""
    from shed_jax.proxies._lm_rounds import RoundCounter
    from shed_jax.proxies.lm import _scored_count

    counter = RoundCounter(n_players=4, n_slots=4, preferred_batch_size=4, cache=True)
    counter(np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool))          # U(full) alone, U(empty) in a free slot
    assert counter.round_sizes == [(1, 2)]
    masks = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    counter(masks)                                                  # 5 new (U(full) cached): a full round and 1
    assert counter.round_sizes == [(1, 2), (4, 4), (1, 1)] and counter.rounds == 3
    counter = RoundCounter(n_players=4, n_slots=4, preferred_batch_size=4, cache=True)
    counter(np.zeros((2, 4), bool))                                # U(empty) alone: a round of its own
    assert counter.round_sizes == [(0, 1)] and counter.rounds == 1
    assert [_scored_count(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert _scored_count(3, 3) == 3


def test_the_estimate_shows_its_progress(small_model, monkeypatch, capsys):
    """Issue 21: progress wherever a person waits, the estimate itself included (on a CPU it compiles and runs one
    optimiser step per training width and one scoring chunk: minutes for SmolLM2 under load)."""
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy

    monkeypatch.setenv("SHED_PROGRESS", "plain")
    monkeypatch.setenv("SHED_PROGRESS_SECONDS", "0")
    root, validation = small_model
    inputs = types.SimpleNamespace(prompts=tuple(PLAYER_PROMPTS), responses=tuple(PLAYER_RESPONSES), records=(),
                                   embeddings=None, validation=validation, seed=0, progress=True)
    utility = build_lm_proxy(inputs, LMProxyConfig(model=str(root), steps=1, warmup_steps=0, batch_size=2,
                                                   max_length=64, slots=2, dtype="float32", eval_batch_size=4))
    capsys.readouterr()
    cost = utility.estimate_cost()
    n_widths = len(cost["timed"]["train_widths"]) + len(cost["timed"]["score_widths"])
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("estimating the LM proxy's cost: ")]
    assert lines, "the estimate printed no progress"
    assert any(f"{n_widths}/{n_widths}" in line for line in lines) or any(
        f"/{n_widths} " in line for line in lines), lines
