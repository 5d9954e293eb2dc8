"""Helpers shared by several test files (fixtures live in conftest.py): the CLI run in-process, its one-line
errors and argument lists, scripts run on fake CPU devices, and the tiny random Llama checkpoint.

Import as ``from _helpers import ...`` (pytest puts this directory on ``sys.path``, as for ``conftest``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ the CLI
def invoke(args, monkeypatch=None, fault: str | None = None):
    """``shed ARGS`` in-process (click's CliRunner; ``args`` are stringified). With ``fault`` (needs
    ``monkeypatch``) ``SHED_FAULT`` is set for this call only (:mod:`shed_jax._faults`), its counts reset."""
    from click.testing import CliRunner

    from shed_jax import _faults, cli

    if monkeypatch is None:
        assert fault is None, "a fault needs monkeypatch"
        return CliRunner().invoke(cli.cli, [str(a) for a in args])
    _faults._COUNTS.clear()
    if fault:
        monkeypatch.setenv("SHED_FAULT", fault)
    else:
        monkeypatch.delenv("SHED_FAULT", raising=False)
    try:
        return CliRunner().invoke(cli.cli, [str(a) for a in args])
    finally:
        monkeypatch.delenv("SHED_FAULT", raising=False)


def one_line_error(result, pattern: str | None = None) -> str:
    """Assert exit 2 with a single ``Error: ...`` line last on stderr and no traceback (matching ``pattern``
    when given); return that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    if pattern is not None:
        assert re.search(pattern, lines[-1]), lines[-1]
    return lines[-1]


def hashing_encoder(monkeypatch) -> None:
    """Put the hashing stand-in (``conftest.hashing_embed``) below the real ``embed_texts``: no model is loaded
    and the embeddings still go through the embedding cache (``SHED_CACHE``), as in a real run."""
    from conftest import hashing_embed
    from shed_jax import embed as embed_module

    monkeypatch.setattr(embed_module, "_get_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(embed_module, "_encode", lambda encoder, texts, **kwargs: hashing_embed(list(texts)))


def _flags(options: dict) -> list[str]:
    """``{"proxies_per_cluster": 2}`` -> ``["--proxies-per-cluster", "2"]``; None values are left out."""
    out = []
    for name, value in options.items():
        if value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out


def cluster_argv(data, run_dir, clusters: int, *extra) -> list[str]:
    """``shed cluster DATA --run-dir RUN --clusters K -q EXTRA...``."""
    return ["cluster", str(data), "--run-dir", str(run_dir), "--clusters", str(clusters), "-q", *map(str, extra)]


def value_argv(run_dir, valid, permutations: int, *extra, **options) -> list[str]:
    """``shed value --run-dir RUN --valid VALID --permutations P [--OPTION VALUE...] -q EXTRA...``: ``options``
    by Python name (``proxies_per_cluster=1``, ``shapley_batch_size=5``; None leaves the option out)."""
    return ["value", "--run-dir", str(run_dir), "--valid", str(valid), "--permutations", str(permutations),
            *_flags(options), "-q", *map(str, extra)]


# ------------------------------------------------------------------------------------ fake CPU devices
def run_on_fake_devices(tmp_path, script_text: str, device_counts, *args, timeout: float = 300) -> dict:
    """Run ``script_text`` once per device count, in parallel subprocesses, each with that many fake CPU devices
    (``--xla_force_host_platform_device_count``, Eigen threads off) and ``argv = [n_devices, *args]``.

    The script prints one line ``RESULT<json>``; returns ``{n_devices: that JSON}``. A non-zero exit fails with
    the end of its stderr. The children are always reaped. (The script should assert ``jax.device_count()``
    first: a bad flag silently drops the count.)"""
    procs = {}
    try:
        for n in device_counts:
            script = tmp_path / f"script_{n}.py"
            script.write_text(script_text)
            env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={n}")
            procs[n] = subprocess.Popen([sys.executable, str(script), str(n), *map(str, args)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = {}
        for n, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stderr.decode()[-3000:]
            line = [ln for ln in stdout.decode().splitlines() if ln.startswith("RESULT")][-1]
            out[n] = json.loads(line[len("RESULT"):])
        return out
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------------- tiny LM checkpoint
def write_tiny_checkpoint(directory, *, seed: int = 0, num_layers: int = 2) -> Path:
    """A tiny random Llama checkpoint in Hugging Face format (safetensors, config, tokenizer) in ``directory``:
    the tokenizer of ``test_lm_finetune.tiny_tokenizer`` and weights ``tiny_weights(config, seed)``."""
    from test_lm_finetune import tiny_config, tiny_tokenizer, tiny_weights
    from test_lm_proxy import save_hf_checkpoint

    Path(directory).mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer), num_layers=num_layers)
    save_hf_checkpoint(directory, config, tiny_weights(config, seed=seed), tokenizer)
    return Path(directory)


def reap(procs) -> None:
    """Kill every subprocess in ``procs`` still running and wait for all (tests always clean up their processes)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def assert_dead_peer_line(stderr: str, heartbeat_s: int) -> None:
    """The surviving process of a 2-process run whose peer 1 was killed printed exactly the one dead-peer line
    (gloo's own connection notice, native and printed once at the first collective, aside)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[Gloo]")]
    assert lines == [f"shed: process 1 of 2 stopped responding (heartbeat timeout {heartbeat_s} s); rerun all "
                     "processes with --resume"], stderr[-3000:]
