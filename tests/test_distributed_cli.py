"""`shed refine --distributed`: two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives), each with 1 or
2 fake CPU devices, against one process: the same values (within 1e-6) and the same selection; only process 0
writes the run directory (process 1 writes RUN_DIR/logs/process-1.log only); a process killed mid-valuation makes
the other exit with one line naming it within the heartbeat timeout, and `--resume` on both finishes with the
uninterrupted run's outputs.

Every process is started with a deadline and killed in ``finally``. The embedding is the hashing stand-in of
conftest.py (a driver swaps it in before calling the real CLI).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shed_jax import cli
from shed_jax.demo import synthetic
from _helpers import assert_dead_peer_line, reap

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 5
DEADLINE_S = 300

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


def refine_argv(data: Path, work: Path) -> list[str]:
    # 48 permutations in chunks of 16 (batch size 5): 3 chunks, a checkpoint after each
    return ["refine", str(data / "train.jsonl"), "--valid", str(data / "valid.jsonl"), "--ratio", "0.2",
            "-o", str(work / "out.jsonl"), "--run-dir", str(work / "run"), "--clusters", "6", "--permutations", "48",
            "--shapley-batch-size", "5", "--proxies-per-cluster", "1", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_data")
    synthetic.make_demo(root, n_examples=120, n_topics=6, n_validation=30, seed=0)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(work: Path, n_local: int, fault: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", SHED_CACHE=str(work / "cache"),
               SHED_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S),
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={n_local}")
    env.pop("SHED_FAULT", None)
    if fault:
        env["SHED_FAULT"] = fault
    return env


def _start(argv, work: Path, n_processes: int, n_local: int, faults: dict | None = None):
    port = _free_port()
    procs = []
    for process_id in range(n_processes):
        extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n_processes),
                 "--process-id", str(process_id)] if n_processes > 1 else []
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "tests"), *argv, *extra],
                                      env=_env(work, n_local, (faults or {}).get(process_id)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=DEADLINE_S):
    """(returncode, stdout, stderr) of each process, all within ``timeout``."""
    deadline = time.monotonic() + timeout
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        outs.append((proc.returncode, stdout, stderr))
    return outs


def _run(argv, work, n_processes, n_local, faults=None):
    procs = _start(argv, work, n_processes, n_local, faults)
    try:
        return _finish(procs)
    finally:
        reap(procs)


def _outputs(work: Path) -> dict:
    run = work / "run"
    values = json.loads((run / "values.json").read_text())
    return {"values": np.asarray(values["cluster_values"], float), "stderr": np.asarray(values["stderr"], float),
            "labels": np.load(run / "clusters.npz")["labels"],
            "selection": json.loads((run / "selection.json").read_text())["indices"],
            "out": (work / "out.jsonl").read_bytes()}


def _assert_same(got: dict, want: dict) -> None:
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["values"], want["values"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["stderr"], want["stderr"], rtol=0, atol=1e-6)
    assert got["selection"] == want["selection"]
    assert got["out"] == want["out"]


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("dist_single")
    ((code, _, err),) = _run(refine_argv(data, work), work, 1, 1)
    assert code == 0, err[-3000:]
    return _outputs(work)


def _process_1_wrote_only_its_log(work: Path) -> None:
    logs = sorted(p.name for p in (work / "run" / "logs").iterdir())
    assert logs == ["commands.log", "process-1.log"], logs
    from shed_jax import command_log

    commands = command_log.read(work / "run")  # process 0's end line only (no start line, none of process 1)
    assert [(c["event"], c["exit_status"]) for c in commands] == [("end", 0)], commands
    text = (work / "run" / "logs" / "process-1.log").read_text()
    assert "process 1 of 2" in text and "cluster:" in text


@pytest.mark.slow
@pytest.mark.parametrize("n_local", [1, 2])
def test_refine_on_two_processes_equals_one_process(data, single, tmp_path, n_local):
    work = tmp_path / "work"
    outs = _run(refine_argv(data, work), work, 2, n_local)
    for code, _, err in outs:
        assert code == 0, err[-3000:]
    assert "process 1 of 2: done; process 0 wrote" in outs[1][1]
    assert "selected" in outs[0][1] and "[Gloo]" not in outs[0][1] + outs[1][1]  # native prints go to stderr
    _assert_same(_outputs(work), single)
    _process_1_wrote_only_its_log(work)


@pytest.mark.slow
def test_killed_process_makes_the_other_exit_with_one_line_then_resume_finishes_identically(data, single, tmp_path):
    work = tmp_path / "work"
    argv = refine_argv(data, work)
    # process 1 dies (SIGKILL) after its second Monte Carlo chunk; process 0 has checkpointed the first
    procs = _start(argv, work, 2, 1, faults={1: "value_chunk:2:kill"})
    try:
        procs[1].wait(timeout=DEADLINE_S)
        assert procs[1].returncode == -9
        killed_at = time.monotonic()
        _, stderr = procs[0].communicate(timeout=HEARTBEAT_S + 30)
        waited = time.monotonic() - killed_at
    finally:
        reap(procs)
    assert procs[0].returncode == 3, stderr[-3000:]
    assert_dead_peer_line(stderr, HEARTBEAT_S)
    assert waited < HEARTBEAT_S + 30
    assert not (work / "out.jsonl").exists()
    assert (work / "run" / "shapley_ckpt").is_dir()
    resume = ["refine", "--resume", "--run-dir", str(work / "run"), "-q"]
    for code, _, err in _run(resume, work, 2, 1):
        assert code == 0, err[-3000:]
    _assert_same(_outputs(work), single)


@pytest.mark.parametrize("argv, message", [
    (["--coordinator", "localhost"], "HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234"], "--coordinator needs --num-processes N and --process-id I"),
    (["--num-processes", "2"], "--num-processes and --process-id go with --coordinator"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], r"--process-id must be in"),
    (["--distributed", "--dry-run"], "--dry-run runs in one process"),
])
def test_distributed_option_errors_are_one_line(data, tmp_path, argv, message):
    result = CliRunner().invoke(cli.cli, [*refine_argv(data, tmp_path), *argv])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_distributed_needs_a_run_dir(data, tmp_path):
    argv = [a for a in refine_argv(data, tmp_path)]
    i = argv.index("--run-dir")
    del argv[i:i + 2]
    result = CliRunner().invoke(cli.cli, [*argv, "--distributed"])
    assert result.exit_code == 2 and "--distributed needs --run-dir" in result.output


class _FakeStore:
    """The coordination service's key-value store, in memory."""

    def __init__(self):
        self.kv = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        self.kv[key] = value

    def key_value_try_get(self, key):
        if key not in self.kv:
            raise RuntimeError("NOT_FOUND: " + key)
        return self.kv[key]


def test_an_error_from_a_lost_peer_prints_nothing_after_the_watchdog_line(monkeypatch):
    """The race of the slow suite: the main thread's failed collective reached the excepthook while the watchdog's
    thread was still writing its line, and the traceback followed the line. The hook must wait until the watchdog
    has ended the process (here: until its slow ``exit`` returns) and then print nothing."""
    from shed_jax import distributed
    from shed_jax.distributed import Watchdog

    XlaRuntimeError = type("XlaRuntimeError", (RuntimeError,), {})
    events = []

    def slow_exit(line):  # stands in for a stderr write that takes a while before os._exit
        time.sleep(0.5)
        events.append(("line", line))

    store = _FakeStore()
    store.kv["shed/heartbeat/1"] = "1"  # process 1 beat once, then died
    dog = Watchdog(store, 0, 2, timeout_s=0.6, interval_s=0.05, exit=slow_exit)
    monkeypatch.setitem(distributed._STATE, "watchdog", dog)
    hook = distributed._excepthook_deferring_to_the_watchdog(lambda *exc: events.append(("traceback", exc[1])))
    dog.start()
    try:
        error = XlaRuntimeError("gloo: connection closed by peer")
        hook(type(error), error, None)
    finally:
        dog.stop()
    assert [kind for kind, _ in events] == ["line"], events
    assert events[0][1].startswith("shed: process 1 of 2 stopped responding")

    # no peer lost (process 1 finished): the error is this process's own and its traceback is printed, after the
    # hook's wait of timeout + 2 s for a verdict
    events.clear()
    store = _FakeStore()
    store.kv["shed/finished/1"] = "1"
    dog = Watchdog(store, 0, 2, timeout_s=0.5, interval_s=0.05, exit=slow_exit)
    monkeypatch.setitem(distributed._STATE, "watchdog", dog)
    hook = distributed._excepthook_deferring_to_the_watchdog(lambda *exc: events.append(("traceback", exc[1])))
    dog.start()
    try:
        error = XlaRuntimeError("a bad shape")
        hook(type(error), error, None)
    finally:
        dog.stop()
    assert [kind for kind, _ in events] == ["traceback"]


def test_watchdog_names_a_silent_peer_and_a_failed_one():
    """The watchdog's judgement on a fake key-value store (no processes): a peer whose counter stops, a peer that
    reports a failure, a peer that finished."""
    from shed_jax.distributed import Watchdog

    lines = []
    store = _FakeStore()
    dog = Watchdog(store, 0, 3, timeout_s=0.6, interval_s=0.05, exit=lines.append)
    store.kv["shed/heartbeat/1"] = "1"
    store.kv["shed/finished/2"] = "1"  # process 2 is done: never named
    dog.start()
    try:
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dog.stop()
    assert lines == ["shed: process 1 of 3 stopped responding (heartbeat timeout 0.6 s); rerun all processes with "
                     "--resume"]

    lines.clear()
    store = _FakeStore()
    dog = Watchdog(store, 1, 2, timeout_s=30, interval_s=0.05, exit=lines.append)
    store.kv["shed/failed/0"] = "OSError: disk full"
    dog.start()
    try:
        assert dog.await_verdict(10) is not None
    finally:
        dog.stop()
    assert lines == ["shed: process 0 of 2 failed (OSError: disk full); fix that, then rerun all processes with "
                     "--resume"]
