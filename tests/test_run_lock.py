"""The run directory lock is an OS lock (flock): two commands started at the same moment on one run directory
never both hold it, a dead holder's lock is free again, and a refused command names the holder."""
from __future__ import annotations

import json
import os
import time

import pytest

from shed_jax.errors import PipelineError
from shed_jax.run.rundir import RunDir


def _contender(run_dir: str, ready_w: int, go_r: int, log_path: str) -> None:
    """Child process: say it is ready, wait for the common go, try the lock, and if it got it record the interval
    it held it (50 ms) in ``log_path``."""
    os.write(ready_w, b"r")
    os.read(go_r, 1)  # both children block here until the parent releases them together
    run = RunDir(run_dir)
    try:
        run.acquire_lock()
    except PipelineError:
        os._exit(3)
    begin = time.monotonic()
    time.sleep(0.05)
    end = time.monotonic()
    run.release_lock()
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps([begin, end]) + "\n")
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_two_commands_started_together_never_both_hold_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    refused = 0
    for trial in range(100):
        log = tmp_path / f"held-{trial}.jsonl"
        # a start signal rather than a start time: forking a test process that holds JAX and torch can take
        # longer than any fixed head start, and then the two commands would never meet
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                _contender(str(run_dir), ready_w, go_r, str(log))
            children.append(pid)
        for _ in range(2):
            os.read(ready_r, 1)
        os.write(go_w, b"gg")
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        codes = [os.waitpid(pid, 0)[1] for pid in children]
        assert all(os.WIFEXITED(c) and os.WEXITSTATUS(c) in (0, 3) for c in codes), codes
        refused += sum(os.WEXITSTATUS(c) == 3 for c in codes)
        intervals = sorted(json.loads(line) for line in log.read_text().splitlines()) if log.exists() else []
        assert intervals, f"trial {trial}: nobody got the lock"
        for (_, first_end), (second_begin, _) in zip(intervals, intervals[1:]):
            assert second_begin >= first_end, f"trial {trial}: both held the lock {intervals}"
        assert not (run_dir / ".lock").exists()
    assert refused > 0  # the race was real: the commands did meet


def test_the_lock_of_a_killed_holder_is_free_and_a_live_one_is_named(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds the lock until killed, never releases it
        os.close(read_end)
        RunDir(str(run_dir)).acquire_lock()
        os.write(write_end, b"x")
        time.sleep(60)
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"x"
    other = RunDir(run_dir)
    with pytest.raises(PipelineError, match=f"another shed command \\(pid {pid} on "):
        other.acquire_lock()
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert (run_dir / ".lock").exists()  # left behind by the killed holder, but the kernel released its lock
    other.acquire_lock()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    other.release_lock()
    assert not (run_dir / ".lock").exists()
