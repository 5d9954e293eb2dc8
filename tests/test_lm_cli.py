"""`shed value --proxy lm:CHECKPOINT` end to end on a tiny random Llama checkpoint written by the test (the LM
proxy reached only through the registry and the command line)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import invoke, write_tiny_checkpoint
from shed_jax.demo import synthetic

LM_OPTIONS = ["--proxy-option", "steps=2", "--proxy-option", "warmup_steps=0", "--proxy-option", "batch_size=2",
              "--proxy-option", "max_length=48", "--proxy-option", "slots=4", "--proxy-option", "dtype=float32",
              "--proxy-option", "max_validation=8", "--proxy-option", "prompt_format=alpaca"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), seed=2)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=60, n_topics=4, n_validation=16, seed=0)


@pytest.mark.slow  # a third LM valuation (~70 s under load). In the default run,
# test_shed_estimate_0_turns_the_lm_proxys_estimate_off runs the same command (the tests run with SHED_ESTIMATE=0)
# and checks the same values.json and config.json
def test_value_with_the_lm_proxy_short_form(checkpoint, demo_data, tmp_path, fake_embed):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", f"lm:{checkpoint}",
                     *LM_OPTIONS, "--permutations", "2", "--removal-step", "1", "--proxies-per-cluster", "1", "-q", "--json"])
    assert result.exit_code == 0, result.output
    _check_lm_values(run_dir, checkpoint)


def test_the_lm_proxy_prints_its_estimated_time_first(checkpoint, demo_data, tmp_path, fake_embed, monkeypatch):
    monkeypatch.setenv("SHED_ESTIMATE", "1")  # the tests turn estimates off (SHED_ESTIMATE=0 turns off every one)
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", f"lm:{checkpoint}",
                     *LM_OPTIONS, "--permutations", "2", "--removal-step", "1", "--proxies-per-cluster", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    estimate = [i for i, line in enumerate(lines) if "about 8 utility evaluations, estimated" in line]  # the engine's count
    # before the valuation runs: its progress lines (stderr is not a terminal) and its elapsed-time line
    assert estimate and estimate[0] < next(i for i, line in enumerate(lines) if line.startswith("value: done in"))
    assert not any(line.startswith("Shapley: ") for line in lines[:estimate[0]])


@pytest.mark.parametrize("option, message", [
    ("rank=0", "Error: --proxy-option rank: must be >= 1, got 0"),
    ("prompt_format=markdown", "Error: --proxy-option prompt_format: must be one of chat, alpaca, vicuna; got 'markdown'"),
    ("targets=q_proj,qq_proj", "Error: --proxy-option targets: must be distinct names, allowed q_proj,"),
    ("targets=q_proj,q_proj", "Error: --proxy-option targets: must be distinct names"),
    ("warmup_steps=30", "Error: --proxy-option warmup_steps: must be at most steps=20, got 30"),
])
def test_bad_lm_options_fail_before_any_work(checkpoint, demo_data, tmp_path, fake_embed, option, message):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "lm",
                     "--proxy-option", f"model={checkpoint}", "--proxy-option", option, "-q"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(message), result.stderr


def test_a_model_that_does_not_exist_is_a_user_error(demo_data, tmp_path, fake_embed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "lm:no-such-org/no-model",
                     "--permutations", "1", "-q"])
    assert result.exit_code == 2, result.output
    assert "--proxy-option model" in result.stderr and "no-such-org/no-model" in result.stderr


def test_shed_estimate_0_turns_the_lm_proxys_estimate_off(checkpoint, demo_data, tmp_path, fake_embed, monkeypatch):
    """Issue 21: `SHED_ESTIMATE=0` did not stop the LM proxy's estimate (then a whole round of fine-tunes). With
    it set, the value stage neither times steps nor prints an estimated time; the valuation itself still runs."""
    from shed_jax.proxies.lm import LMProxyUtility

    def no_estimate(*args, **kwargs):
        raise AssertionError("the LM proxy estimated its cost under SHED_ESTIMATE=0")

    for name in ("estimate_cost", "estimate_seconds", "estimate_run_seconds"):
        monkeypatch.setattr(LMProxyUtility, name, no_estimate)
    monkeypatch.setenv("SHED_ESTIMATE", "0")
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", f"lm:{checkpoint}",
                     *LM_OPTIONS, "--permutations", "2", "--removal-step", "1", "--proxies-per-cluster", "1"])
    assert result.exit_code == 0, result.output
    assert "estimat" not in result.stderr, result.stderr
    _check_lm_values(run_dir, checkpoint)


def _check_lm_values(run_dir, checkpoint):
    """values.json and config.json of a `shed value --proxy lm:CHECKPOINT` run (4 clusters, 2 permutations)."""
    values = json.loads((run_dir / "values.json").read_text())
    assert values["utility"]["proxy"] == "lm" and str(checkpoint) in json.dumps(values["utility"])
    assert len(values["cluster_values"]) == 4 and np.all(np.isfinite(values["cluster_values"]))
    assert values["n_evaluations"] == 2 * 4  # per permutation one per removal step (U(full), U(empty) apart)
    # efficiency: the values of one permutation sum to U(full) - U(empty); averaged over permutations too
    assert sum(values["cluster_values"]) == pytest.approx(values["u_full"] - values["u_empty"], abs=1e-5)
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["proxy"] == "lm" and config["proxy_options"]["model"] == str(checkpoint)
