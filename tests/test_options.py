"""Options declared once (issue 16): the option framework imports nothing of the package, building a run's
configuration imports no proxy (no JAX), every proxy configuration is declared with ``option()``, ``shed demo``
takes refine's declarations, each check that spans options is in one place, and the import cycles that the old
layout made are gone."""
from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from shed_jax import cli
from shed_jax import config as shed_config
from shed_jax.config import RefineConfig, option_spec
from shed_jax.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]


def invoke(args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def package_imports(path: Path) -> set[str]:
    """Every ``shed_jax`` module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shed_jax"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("shed_jax"))
    return found


def test_the_option_framework_imports_nothing_of_the_package_but_its_errors():
    assert package_imports(ROOT / "shed_jax" / "options.py") == {"shed_jax.errors"}
    assert package_imports(ROOT / "shed_jax" / "errors.py") == set()
    assert package_imports(ROOT / "shed_jax" / "proxies" / "registry.py") <= {"shed_jax.errors", "shed_jax.options"}
    assert package_imports(ROOT / "shed_jax" / "proxies" / "embedding_config.py") == {"shed_jax.options"}


BUILD_WITHOUT_JAX = """
import sys
from shed_jax.config import RefineConfig
from shed_jax.proxies import EmbeddingProxyConfig, registry
from shed_jax import terminal

config = RefineConfig(data="d.jsonl", valid="v.jsonl", ratio=0.1, proxy="lm:model.gguf",
                      proxy_options=(("steps", "3"), ("rank", "4")))
assert config.proxy == "lm" and dict(config.proxy_options) == {"model": "model.gguf", "steps": "3", "rank": "4"}
assert RefineConfig.from_dict(config.to_dict()) == config
embedding = registry.make_config("embedding", {"steps": "7", "metric": "accuracy"})
assert embedding.steps == 7 and isinstance(embedding, EmbeddingProxyConfig)
assert [o["name"] for o in terminal.proxy_options("embedding")][:2] == ["objective", "rank"]
loaded = sorted(m for m in ("jax", "flax", "optax", "torch", "shed_jax.proxies.lm", "shed_jax.proxies.embedding")
                if m in sys.modules)
print(loaded)
"""


def test_building_a_config_for_the_lm_proxy_imports_no_proxy_and_no_jax():
    result = subprocess.run([sys.executable, "-c", BUILD_WITHOUT_JAX], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("flag", ["", "--lazy"])
def test_the_cycles_of_the_old_option_layout_are_gone(flag):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_cycles.py"), *filter(None, [flag])],
                            capture_output=True, text=True, timeout=120)
    assert "import cycle(s) among" in result.stdout, result.stdout + result.stderr
    for module in ("shed_jax.config", "shed_jax.proxies.registry", "shed_jax.proxies._bilinear",
                   "shed_jax.proxies.embedding", "shed_jax.options"):
        assert module not in result.stdout, result.stdout
    if not flag:
        assert result.returncode == 0 and result.stdout.startswith("0 import cycle(s)"), result.stdout


# ------------------------------------------------------------------------------------------- declarations
def test_every_proxy_option_is_declared_and_listed_with_its_default_and_help():
    from shed_jax.proxies import registry
    from shed_jax.proxies.lm import LMProxyConfig
    from shed_jax.terminal import proxies_data

    for proxy in proxies_data():
        config_class = registry.config_class(proxy["name"])
        defaults = config_class()
        assert [o["name"] for o in proxy["options"]] == [f.name for f in dataclasses.fields(config_class)]
        for listed in proxy["options"]:
            spec = option_spec(config_class, listed["name"])
            assert listed["help"] == spec.help and spec.help, (proxy["name"], listed["name"])
            default = getattr(defaults, listed["name"])
            assert listed["default"] == (",".join(default) if isinstance(default, tuple) else default)
    assert registry.config_class("lm") is LMProxyConfig
    text = invoke(["proxies", "lm"]).output
    assert "  rank=8\n      LoRA rank." in text and "  targets=q_proj,k_proj" in text
    assert "--proxy lm:SPEC sets model" in text


def test_lm_config_checks_go_through_the_shared_validation():
    from shed_jax.proxies import registry
    from shed_jax.proxies.lm import LMProxyConfig

    for bad, message in (({"steps": 0}, "--proxy-option steps: must be >= 1, got 0"),
                         ({"alpha": 0.0}, "--proxy-option alpha: must be > 0, got 0.0"),
                         ({"max_length": 8}, "--proxy-option max_length: must be >= 16, got 8"),
                         ({"slots": 0}, "--proxy-option slots: must be >= 1, got 0"),
                         ({"remat": "yes"}, "--proxy-option remat: must be true or false, got 'yes'"),
                         ({"lr_schedule": "step"}, "--proxy-option lr_schedule: must be one of constant, linear, "
                                                   "cosine; got 'step'"),
                         ({"model": "  "}, "--proxy-option model: must be a path"),
                         ({"targets": ()}, "--proxy-option targets: must be distinct names")):
        with pytest.raises(PipelineError) as info:
            LMProxyConfig(**bad)
        assert str(info.value).startswith(message), str(info.value)
    config = registry.make_config("lm", {"targets": "q_proj,v_proj", "slots": "none", "max_grad_norm": "none"})
    assert config.targets == ("q_proj", "v_proj") and config.slots is None and config.max_grad_norm is None
    assert LMProxyConfig(targets=["v_proj"]).targets == ("v_proj",)  # as read back from JSON


def test_demo_takes_refines_declarations():
    DemoConfig = shed_config.DemoConfig
    shared = ("run_dir", "ratio", "n_permutations", "proxies_per_cluster", "model", "seed")
    for name in shared:
        demo_spec, refine_spec = option_spec(DemoConfig, name), option_spec(RefineConfig, name)
        assert dataclasses.replace(demo_spec, default_text=None) == dataclasses.replace(refine_spec, default_text=None)
    assert DemoConfig().ratio == 0.2 and DemoConfig().size == "small"
    help_text = " ".join(invoke(["demo", "--help"]).output.split())
    assert " ".join(option_spec(RefineConfig, "ratio").help.split()) in help_text
    assert "[default: $SHED_HOME/runs/demo-<size>-<time>]" in help_text


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0].split(" (see `")[0]


@pytest.mark.parametrize("flag, value, message", [
    ("--ratio", "1.5", "Error: --ratio: must be in (0, 1], got 1.5"),
    ("--ratio", "0", "Error: --ratio: must be in (0, 1], got 0.0"),
    ("--ratio", "nan", "Error: --ratio: must be a finite number, got nan"),
    ("--proxies-per-cluster", "banana", "must be auto or a positive integer, got 'banana'"),
    ("--proxies-per-cluster", "0", "must be auto or >= 1, got '0'"),
])
def test_demo_rejects_a_bad_option_as_refine_does_and_writes_nothing(tmp_path, flag, value, message):
    demo_dir, refine_dir = tmp_path / "demo", tmp_path / "refine"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    demo = invoke(["demo", "--run-dir", demo_dir, flag, value])
    refine = invoke(["refine", data, "--valid", data, "-o", tmp_path / "out.jsonl", "--run-dir", refine_dir,
                     *(["--size", "1"] if flag != "--ratio" else []), flag, value])
    assert one_line(demo) == one_line(refine) and message in one_line(demo), (demo.output, refine.output)
    assert not demo_dir.exists() and not refine_dir.exists()


def test_the_demo_library_checks_its_options_before_writing(tmp_path):
    from shed_jax.demo import demo

    for kwargs, message in (({"ratio": 2.0}, "--ratio: must be in (0, 1], got 2.0"),
                            ({"size": "huge"}, "--size: must be one of small, default; got 'huge'"),
                            ({"n_permutations": 0}, "--permutations: must be >= 1, got 0"),
                            ({"proxies_per_cluster": "x"}, "--proxies-per-cluster: must be auto or a positive integer")):
        with pytest.raises(PipelineError) as info:
            demo(tmp_path / "run", progress=False, **kwargs)
        assert str(info.value).startswith(message)
        assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- one check each
def test_one_budget_check_for_every_command_and_the_library(tmp_path):
    both = "give either --ratio or --size for the budget, not both"
    with pytest.raises(PipelineError, match=f"^--ratio/--size: {both}$"):
        RefineConfig(data="d.jsonl", ratio=0.1, size=5)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    for args in (["select", data, "--run-dir", tmp_path, "--ratio", "0.1", "--size", "5", "-o", tmp_path / "o.jsonl"],
                 ["refine", data, "--valid", data, "--ratio", "0.1", "--size", "5", "-o", tmp_path / "o.jsonl"],
                 ["refine", "--resume", "--run-dir", tmp_path, "--ratio", "0.1", "--size", "5"]):
        assert one_line(invoke(args)) == f"Error: --ratio/--size: {both}"
    none = "give a budget: --ratio R (fraction of the examples) or --size N"
    assert one_line(invoke(["select", data, "--run-dir", tmp_path, "-o", tmp_path / "o.jsonl"])) == \
        f"Error: --ratio/--size: {none}"


def test_one_parser_of_auto_or_a_count():
    from shed_jax.options import parse_auto_int

    DemoConfig = shed_config.DemoConfig
    assert [parse_auto_int(v) for v in ("auto", " AUTO ", "8", 8)] == ["auto", "auto", 8, 8]
    for bad in ("banana", 2.5, True, None, "", "0", 0, -3):
        with pytest.raises(PipelineError) as direct:
            parse_auto_int(bad, field="--proxies-per-cluster")
        with pytest.raises(PipelineError) as via_config:
            RefineConfig(data="d.jsonl", proxies_per_cluster=bad)
        with pytest.raises(PipelineError) as via_demo:
            DemoConfig(proxies_per_cluster=bad)
        assert str(direct.value) == str(via_config.value) == str(via_demo.value)
