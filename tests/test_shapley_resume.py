"""Checkpoint/resume of shapley.monte_carlo: a SIGKILLed run resumes to exactly the uninterrupted values."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shed_jax import shapley
from shed_jax.shapley import games

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = dict(n_permutations=300, removal_step=2, seed=7, antithetic=True, truncation_tol=0.05,
                history_every=40, permutations_per_chunk=6)
GAME = "games.UnanimitySum(13, [[0, 1], [1, 2, 3], [4], [0, 5, 6, 7], [2, 8], [9, 10, 11, 12]], " \
       "[1.5, -2.0, 0.75, 3.0, 1.0, 2.0])"

SCRIPT = textwrap.dedent(f"""
    import json, sys, time
    from shed_jax import shapley
    from shed_jax.shapley import games
    out, ckpt = sys.argv[1], sys.argv[2]
    game = {GAME}
    first = []
    def progress(status):
        if not first:
            first.append(status.n_permutations)
        time.sleep(0.05)       # keep the run long enough to be killed half way
    res = shapley.monte_carlo(game, 13, checkpoint_dir=ckpt, progress=progress, **{RUN_ARGS!r})
    with open(out, "w") as f:
        json.dump({{"values": res.values.tolist(), "stderr": res.stderr.tolist(),
                   "n_evaluations": res.n_evaluations, "n_permutations": res.n_permutations,
                   "history_values": res.history["values"].tolist(),
                   "history_n": res.history["n_permutations"].tolist(), "first_progress": first}}, f)
""")


def completed_steps(ckpt: Path):
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()) if ckpt.exists() else []


def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ckpt)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(completed_steps(ckpt)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished or failed before it could be killed: " + proc.stderr.read().decode()
    time.sleep(0.3)                                  # kill somewhere in the middle of later chunks/saves
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    killed_at = completed_steps(ckpt)[-1]
    assert 0 < killed_at < 150                       # 150 samples = 300 antithetic permutations

    resumed = subprocess.run([sys.executable, str(script), str(out), str(ckpt)], env=env,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    got = json.loads(out.read_text())
    assert got["first_progress"][0] > 6 * 2          # it resumed rather than restarting

    game = eval(GAME, {"games": games})
    reference = shapley.monte_carlo(game, 13, **RUN_ARGS)
    np.testing.assert_array_equal(np.asarray(got["values"]), reference.values)
    np.testing.assert_array_equal(np.asarray(got["stderr"]), reference.stderr)
    assert got["n_evaluations"] == reference.n_evaluations
    assert got["n_permutations"] == reference.n_permutations == 300
    np.testing.assert_array_equal(np.asarray(got["history_n"]), reference.history["n_permutations"])
    np.testing.assert_array_equal(np.asarray(got["history_values"]), reference.history["values"])


def test_resume_refuses_different_arguments_and_finished_run_is_reused(tmp_path):
    game = games.GloveGame(3, 4)
    first = shapley.monte_carlo(game, 7, n_permutations=40, permutations_per_chunk=10, checkpoint_dir=tmp_path)
    for changed in ({"seed": 1}, {"removal_step": 2}, {"antithetic": True}, {"truncation_tol": 0.1}):
        with pytest.raises(shapley.CheckpointMismatchError, match=list(changed)[0]):
            shapley.monte_carlo(game, 7, n_permutations=40, permutations_per_chunk=10, checkpoint_dir=tmp_path,
                                **changed)
    with pytest.raises(shapley.CheckpointMismatchError, match="n_players"):
        shapley.monte_carlo(games.GloveGame(3, 5), 8, n_permutations=40, checkpoint_dir=tmp_path)
    calls = []
    again = shapley.monte_carlo(game, 7, n_permutations=40, permutations_per_chunk=10, checkpoint_dir=tmp_path,
                                progress=calls.append)
    assert calls == []                                 # nothing left to do
    np.testing.assert_array_equal(again.values, first.values)
    assert again.n_evaluations == first.n_evaluations
    # a larger budget extends the run; batch size may change (it does not affect the estimate)
    extended = shapley.monte_carlo(game, 7, n_permutations=70, permutations_per_chunk=10, batch_size=5,
                                   checkpoint_dir=tmp_path)
    direct = shapley.monte_carlo(game, 7, n_permutations=70)
    np.testing.assert_array_equal(extended.values, direct.values)
    np.testing.assert_array_equal(extended.stderr, direct.stderr)
