"""Ctrl-C and SIGTERM (issue 21): stop after the step in flight, a second signal at once, exit 130.

Fast tests: the handler module on its own in a subprocess (a main thread stuck in a long call), and the LM
proxy's fine-tune loop in-process (a Ctrl-C sent by the testing hook ``SHED_FAULT=lm_step:N:int`` stops it after
that step, not after the whole fine-tune). Slow tests: `shed value --proxy lm` on a tiny random Llama interrupted
by a real SIGINT from outside during a fine-tune round and during the cost estimate: exit 130 within 10 s, no
crash, and ``--resume`` ends with the values of the uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from shed_jax import interrupt

ROOT = Path(__file__).resolve().parents[1]

STUCK = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from shed_jax import interrupt
    with interrupt.handling("shed value --run-dir X --resume"):
        with interrupt.cooperative():
            print("ready", flush=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:   # a long step: never reaches interrupt.check()
                time.sleep(0.05)
    print("left the block", flush=True)
""")


def _start_stuck(env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    process = subprocess.Popen([sys.executable, "-c", STUCK, str(ROOT)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_second_ctrl_c_exits_at_once_while_the_step_is_still_running():
    process = _start_stuck({"SHED_INTERRUPT_GRACE": "60"})
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # the first one waits for the step in flight
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert time.monotonic() - sent < 5
    assert "stopping after the step in flight" in err
    assert "resume with: shed value --run-dir X --resume" in err
    assert "left the block" not in out


def test_sigterm_is_handled_like_ctrl_c():
    process = _start_stuck({"SHED_INTERRUPT_GRACE": "60"})
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err


def test_a_step_that_does_not_end_within_the_grace_period_is_stopped():
    process = _start_stuck({"SHED_INTERRUPT_GRACE": "1"})
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert 0.8 < time.monotonic() - sent < 5
    assert "still running after 1 s" in err


def test_outside_a_cooperative_block_ctrl_c_raises_at_once():
    with interrupt.handling():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                time.sleep(0.01)
    assert not interrupt.requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------------------- the LM fine-tune loop
@pytest.fixture(scope="module")
def lm_utility(tmp_path_factory):
    from test_lm_finetune import tiny_config, tiny_tokenizer, tiny_weights
    from test_lm_proxy import MC_ITEMS, PLAYER_PROMPTS, PLAYER_RESPONSES, _write_jsonl, save_hf_checkpoint

    from shed_jax.data import read_validation
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy

    root = tmp_path_factory.mktemp("lm_interrupt")
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    save_hf_checkpoint(root, config, tiny_weights(config, seed=1), tokenizer)
    validation = read_validation(_write_jsonl(root / "mc.jsonl", MC_ITEMS))
    inputs = types.SimpleNamespace(prompts=tuple(PLAYER_PROMPTS), responses=tuple(PLAYER_RESPONSES), records=(),
                                   embeddings=None, validation=validation, seed=0, progress=False)
    return build_lm_proxy(inputs, LMProxyConfig(model=str(root), steps=40, warmup_steps=0, batch_size=2,
                                                max_length=64, slots=2, dtype="float32", eval_batch_size=4,
                                                cache=False))


def test_ctrl_c_stops_a_fine_tune_after_the_step_in_flight(lm_utility, monkeypatch):
    steps = []
    trainer = lm_utility.trainer
    # packed across slots is the default on one device; packed per slot and padded steps otherwise (issue 18)
    step_name = "_shared_step" if trainer.across_slots else "_packed_step" if trainer.packing else "_step"
    original = getattr(trainer, step_name)

    def counting(*args, **kwargs):
        steps.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, step_name, counting)
    monkeypatch.setenv("SHED_INTERRUPT_GRACE", "120")
    masks = np.zeros((4, 6), bool)
    masks[:, :3] = True
    masks[np.arange(4), 3 + np.arange(4) % 3] = True
    monkeypatch.setenv("SHED_FAULT", "lm_step:3:int")
    from shed_jax import _faults

    monkeypatch.setattr(_faults, "_COUNTS", {})
    with interrupt.handling():
        with pytest.raises(KeyboardInterrupt):
            lm_utility.evaluate(masks)
    assert len(steps) == 3  # of 2 rounds x 40 steps: the one in flight finished, no further step was dispatched
    monkeypatch.delenv("SHED_FAULT")
    values = lm_utility.evaluate(masks)  # the utility still works afterwards (the trainer's state is refilled)
    assert np.all(np.isfinite(values))


# ------------------------------------------------------------------------------- end to end (slow)
DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from conftest import hashing_embed
    from shed_jax import embed
    embed._get_model = lambda *args, **kwargs: None
    embed._encode = lambda encoder, texts, **kwargs: hashing_embed(list(texts))
    from shed_jax.cli import main
    main(sys.argv[2:])
""")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from test_lm_finetune import tiny_config, tiny_tokenizer, tiny_weights
    from test_lm_proxy import save_hf_checkpoint

    from shed_jax.demo import synthetic

    root = tmp_path_factory.mktemp("lm_run")
    checkpoint = root / "ckpt"
    checkpoint.mkdir()
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    save_hf_checkpoint(checkpoint, config, tiny_weights(config, seed=2), tokenizer)
    data = synthetic.make_demo(root / "demo", n_examples=60, n_topics=4, n_validation=16, seed=0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", SHED_CACHE=str(root / "cache"),
               SHED_ESTIMATE="1", SHED_PROGRESS="plain", JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("SHED_FAULT", None)
    return types.SimpleNamespace(root=root, checkpoint=checkpoint, data=data, env=env)


def _shed(lm_run, *args):
    return [sys.executable, "-c", DRIVER, str(ROOT / "tests"), *map(str, args)]


def _value_argv(lm_run, run_dir):
    return _shed(lm_run, "value", "--run-dir", run_dir, "--valid", lm_run.data.valid,
                 "--proxy", f"lm:{lm_run.checkpoint}", "--proxy-option", "steps=600", "--proxy-option",
                 "warmup_steps=0", "--proxy-option", "batch_size=2", "--proxy-option", "max_length=48",
                 "--proxy-option", "slots=4", "--proxy-option", "dtype=float32", "--proxy-option", "max_validation=8",
                 "--proxy-option", "prompt_format=alpaca", "--permutations", "2", "--removal-step", "1",
                 "--proxies-per-cluster", "1", "--shapley-batch-size", "4")


def _clustered(lm_run, name):
    run_dir = lm_run.root / name
    subprocess.run(_shed(lm_run, "cluster", lm_run.data.train, "--clusters", "4", "--run-dir", run_dir, "-q"),
                   env=lm_run.env, check=True, capture_output=True, timeout=600)
    return run_dir


def _interrupt_when(argv, env, trigger: str, delay: float):
    """Run ``argv``; ``delay`` s after a stderr line contains ``trigger``, send SIGINT. Returns (returncode,
    seconds from the signal to the exit, stderr)."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, lines = threading.Event(), []

    def read():
        for line in process.stderr:
            lines.append(line)
            if trigger in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(timeout=900), "".join(lines)[-3000:]
    time.sleep(delay)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=900)
    took = time.monotonic() - sent
    reader.join(timeout=10)
    return process.returncode, took, "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(lm_run):
    run_dir = _clustered(lm_run, "reference")
    done = subprocess.run(_value_argv(lm_run, run_dir), env=lm_run.env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "values.json").read_text())


# 600 steps make a round of fine-tunes (and the estimate the code before issue 21 made: a whole round) last far
# longer than 10 s even for this tiny model; the interrupt must not wait for the round.
@pytest.mark.slow
@pytest.mark.parametrize("trigger, delay", [
    pytest.param("value: Monte Carlo Shapley over", 3.0, id="during-a-fine-tune-round"),
    pytest.param("LM proxy: estimating the cost", 0.5, id="during-the-estimate"),
])
def test_ctrl_c_during_an_lm_valuation_exits_130_in_seconds_and_resume_matches(lm_run, uninterrupted, trigger, delay):
    run_dir = _clustered(lm_run, f"interrupted-{delay}")
    code, took, err = _interrupt_when(_value_argv(lm_run, run_dir), lm_run.env, trigger, delay)
    assert code == 130, err[-3000:]          # not 139 / -11 (a crash) nor 0 (the signal ignored)
    assert took < 10, (took, err[-3000:])
    assert "resume with: shed value --run-dir" in err
    assert not list(run_dir.glob("core*")) and not (run_dir / "values.json").exists()
    resumed = subprocess.run(_value_argv(lm_run, run_dir) + ["--resume"], env=lm_run.env, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    values = json.loads((run_dir / "values.json").read_text())
    np.testing.assert_allclose(values["cluster_values"], uninterrupted["cluster_values"], rtol=0, atol=1e-6)
    assert values["u_full"] == pytest.approx(uninterrupted["u_full"], abs=1e-6)
