"""A proxy defined in this file, registered through the public API, runs `shed value --proxy toy` end to end
without touching any module of the package; typed --proxy-option parsing and its errors."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from shed_jax import cli, proxies
from shed_jax.demo import synthetic
from shed_jax.errors import UserError


@dataclass(frozen=True)
class ToyConfig:
    """U(S) = scale * sum of the members' weights, weight_i = (len(response_i) % 7) / 10: an additive game,
    whose Shapley value of player i is exactly scale * weight_i."""

    scale: float = field(default=1.0, metadata={"help": "multiplies every weight"})
    tag: str = field(default="plain", metadata={"help": "carried into describe()"})

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")


class ToyUtility:
    def __init__(self, weights: np.ndarray, config: ToyConfig):
        self.weights = jnp.asarray(weights, jnp.float32)
        self.config = config
        self.n_players = int(weights.shape[0])
        self.preferred_batch_size = 16

    def __call__(self, masks):
        return (jnp.asarray(masks, jnp.float32) @ self.weights) * self.config.scale

    def describe(self) -> dict:
        return {"type": "toy", "scale": self.config.scale, "tag": self.config.tag}


def toy_weights(responses) -> np.ndarray:
    return np.asarray([(len(r) % 7) / 10 for r in responses], np.float64)


def build_toy(inputs, config: ToyConfig) -> ToyUtility:
    assert len(inputs.prompts) == len(inputs.responses) == inputs.n_players == inputs.embeddings.shape[0]
    return ToyUtility(toy_weights(inputs.responses), config)


@pytest.fixture
def toy_proxy():
    proxies.register("toy", build_toy, config_class=ToyConfig, summary="additive test game", spec_field="tag")
    yield
    proxies.unregister("toy")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=120, n_topics=6, n_validation=30, seed=0)


def invoke(args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def test_toy_proxy_values_end_to_end(toy_proxy, fake_embed, demo_data, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke(["cluster", demo_data.train, "--clusters", "6", "--run-dir", run_dir, "-q"])
    assert result.exit_code == 0, result.output
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "toy",
                     "--proxy-option", "scale=2.5", "--permutations", "3", "--removal-step", "1", "--proxies-per-cluster", "1", "-q"])
    assert result.exit_code == 0, result.output
    values = json.loads((run_dir / "values.json").read_text())
    records = [json.loads(line) for line in open(demo_data.train, encoding="utf-8")]
    responses = [r["output"] for r in records]
    expected = 2.5 * toy_weights([responses[i] for i in values["proxy_index"]])
    np.testing.assert_allclose(values["cluster_values"], expected, rtol=1e-5, atol=1e-6)
    assert values["utility"] == {"proxy": "toy", "type": "toy", "scale": 2.5, "tag": "plain"}


def test_toy_proxy_short_form_sets_spec_field(toy_proxy, fake_embed, demo_data, tmp_path):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "toy:special",
                     "--permutations", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "values.json").read_text())["utility"]["tag"] == "special"


@pytest.mark.parametrize("option, message", [
    ("scal=2", r"--proxy-option: unknown option 'scal' for ToyConfig; known: scale, tag"),
    ("scale=big", r"--proxy-option scale: cannot read 'big' as float"),
    ("scale=-1", r"--proxy-option: scale must be > 0, got -1.0"),
])
def test_bad_proxy_options_are_one_line_user_errors(toy_proxy, fake_embed, demo_data, tmp_path, option, message):
    run_dir = tmp_path / "run"
    assert invoke(["cluster", demo_data.train, "--clusters", "4", "--run-dir", run_dir, "-q"]).exit_code == 0
    result = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "toy",
                     "--proxy-option", option, "-q"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), lines
    assert not (run_dir / "values.json").exists()


def test_unknown_proxy_lists_the_registered_ones(toy_proxy):
    result = invoke(["value", "--run-dir", "x", "--proxy", "nope"])
    assert result.exit_code == 2
    assert "unknown proxy 'nope'; choose one of embedding, lm, toy" in result.output


def test_registry_rejects_taken_names_and_non_dataclass_configs(toy_proxy):
    with pytest.raises(ValueError, match="already registered"):
        proxies.register("toy", build_toy, config_class=ToyConfig)
    with pytest.raises(ValueError, match="already registered"):
        proxies.register("embedding", build_toy, config_class=ToyConfig)
    with pytest.raises(TypeError, match="dataclass"):
        proxies.register("toy2", build_toy, config_class=dict)
    with pytest.raises(UserError, match="unknown proxy"):
        proxies.get("toy2")


def test_embedding_config_options_are_typed():
    config = proxies.make_config("embedding", {"steps": "7", "max_grad_norm": "none", "chunk_size": "null"})
    assert config.steps == 7 and config.max_grad_norm is None and config.chunk_size is None
    with pytest.raises(UserError, match=r"^--proxy-option metric: must be one of accuracy, logprob, prob, margin; "
                                        r"got 'f1'$"):
        proxies.make_config("embedding", {"metric": "f1"})
    for bad, message in (({"steps": -1}, "--proxy-option steps: must be >= 0, got -1"),
                         ({"bucket_ratio": 1.0}, "--proxy-option bucket_ratio: must be > 1, got 1.0"),
                         ({"max_grad_norm": 0.0}, "--proxy-option max_grad_norm: must be > 0, got 0.0"),
                         ({"objective": "mse"}, "--proxy-option objective: must be one of infonce, spectral")):
        with pytest.raises(UserError, match="^" + re.escape(message)):
            proxies.make_config("embedding", bad)


def test_every_builtin_config_is_declared_with_option():
    """Each built-in proxy's options are declared with `option()` (help, bounds and choices in one place)."""
    from shed_jax.options import OptionSpec

    for name in ("embedding", "lm"):
        for field in dataclasses.fields(proxies.registry.config_class(name)):
            spec = field.metadata.get("shed")
            assert isinstance(spec, OptionSpec) and spec.help, (name, field.name)


def test_registry_records_match_the_modules():
    """The registry's records of a built-in (config class location, spec_field) are what the module declares."""
    from shed_jax.proxies import registry

    for name in registry.names():
        spec = registry.get(name)
        assert registry.config_class(name) is spec.config_class
        assert registry.spec_field(name) == spec.spec_field
    assert registry.spec_field("lm") == "model" and registry.spec_field("embedding") is None


class SlowToyUtility(ToyUtility):
    def estimate_seconds(self, n_evaluations: int) -> float:
        return 2.0 * n_evaluations  # "2 s per fine-tune"


def test_estimated_time_is_printed_and_hours_suggest_the_embedding_proxy(fake_embed, demo_data, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("SHED_ESTIMATE", "1")  # the tests turn estimates off (SHED_ESTIMATE=0 turns off every one)
    proxies.register("slowtoy", lambda inputs, config: SlowToyUtility(toy_weights(inputs.responses), config),
                     config_class=ToyConfig)
    try:
        run_dir = tmp_path / "run"
        assert invoke(["cluster", demo_data.train, "--clusters", "6", "--run-dir", run_dir, "-q"]).exit_code == 0
        few = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "slowtoy",
                      "--permutations", "3", "--removal-step", "1", "--proxies-per-cluster", "1"])
        assert few.exit_code == 0, few.output
        assert "about 17 utility evaluations, estimated 34 s on this machine" in few.stderr  # 3 x 5 + 2
        assert "--proxy embedding" not in few.stderr
        many = invoke(["value", "--run-dir", run_dir, "--valid", demo_data.valid, "--proxy", "slowtoy",
                       "--permutations", "1000", "--removal-step", "1",
                       "--proxies-per-cluster", "1", "--resume"])  # extends the finished 3
        assert many.exit_code == 0, many.output
        assert "about 5,002 utility evaluations, estimated 2.8 h" in many.stderr
        # over --value-time-budget (1 h by default): the stage says so first, with settings that would fit
        assert "does not fit --value-time-budget" in many.stderr
        assert "value:   --proxy embedding" in many.stderr
    finally:
        proxies.unregister("slowtoy")
