"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives): the Shapley engine with the embedding
proxy and k-means give the same results as one process; a process that dies makes the other exit within the
heartbeat timeout, with one line naming it. Every test starts its processes with a deadline and kills whatever is left in ``finally``.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shed_jax import distributed
from _helpers import assert_dead_peer_line, reap

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 5

WORKLOAD = textwrap.dedent("""
    import json, sys
    process_id, n_processes, port, n_local = (int(a) for a in sys.argv[1:5])
    from shed_jax import distributed
    if n_processes > 1:
        distributed.initialize(f"127.0.0.1:{port}", n_processes, process_id, heartbeat_timeout_s=%d,
                               initialization_timeout_s=60)
    import jax, numpy as np
    assert jax.process_count() == n_processes and jax.local_device_count() == n_local, (jax.devices(),)
    assert jax.device_count() == n_processes * n_local
    from shed_jax import cluster, shapley
    from shed_jax.proxies.embedding import EmbeddingProxyConfig, EmbeddingProxyUtility, ValidationEmbeddings
    rng = np.random.default_rng(7)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    K, d = 24, 16
    val = ValidationEmbeddings.instruction(unit(rng.normal(size=(12, d))), unit(rng.normal(size=(12, d))))
    utility = EmbeddingProxyUtility.from_arrays(unit(rng.normal(size=(K, d))), unit(rng.normal(size=(K, d))),
                                                val, EmbeddingProxyConfig(steps=6, n_distractors=3, min_bucket=8),
                                                seed=3)
    result = shapley.monte_carlo(utility, K, n_permutations=8, removal_step=3, seed=5, batch_size=16,
                                 permutations_per_chunk=2)
    x = rng.normal(size=(301, 8)).astype(np.float32)
    km = cluster.kmeans(x, 6, seed=2)
    print("RESULT" + json.dumps({"process": jax.process_index(), "values": result.values.tolist(),
                                 "stderr": result.stderr.tolist(), "labels": km.labels.tolist(),
                                 "inertia": km.inertia}), flush=True)
""" % HEARTBEAT_S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(tmp_path, n_processes, n_local, extra_env=None):
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    port = _free_port()
    procs = []
    for process_id in range(n_processes):
        env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={n_local}")
        env.update((extra_env or {}).get(process_id, {}))
        procs.append(subprocess.Popen([sys.executable, "-u", str(script), str(process_id), str(n_processes),
                                       str(port), str(n_local)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    return procs


def _result(stdout: bytes) -> dict:
    line = [ln for ln in stdout.decode().splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def _run(tmp_path, n_processes, n_local, timeout=240):
    procs = _start(tmp_path, n_processes, n_local)
    try:
        outs = []
        deadline = time.monotonic() + timeout
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, stderr.decode()[-3000:]
            outs.append(_result(stdout))
        return outs
    finally:
        reap(procs)


@pytest.mark.slow
@pytest.mark.parametrize("n_local", [1, 2])
def test_two_processes_match_one_process(tmp_path, n_local):
    (single,) = _run(tmp_path, 1, 1)
    outs = _run(tmp_path, 2, n_local)
    assert [o["process"] for o in outs] == [0, 1]
    for out in outs:  # every process holds the whole result
        np.testing.assert_allclose(out["values"], single["values"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out["stderr"], single["stderr"], rtol=0, atol=1e-6)
        assert out["labels"] == single["labels"]
        np.testing.assert_allclose(out["inertia"], single["inertia"], rtol=1e-6)


@pytest.mark.slow
def test_dead_peer_makes_the_other_exit_within_the_timeout(tmp_path):
    # process 1 kills itself (SIGKILL) after its first Monte Carlo chunk; process 0 must not hang
    procs = _start(tmp_path, 2, 1, extra_env={1: {"SHED_FAULT": "value_chunk:1:kill"}})
    try:
        procs[1].wait(timeout=240)
        assert procs[1].returncode == -9
        killed_at = time.monotonic()
        _, stderr = procs[0].communicate(timeout=HEARTBEAT_S + 60)
        waited = time.monotonic() - killed_at
        assert procs[0].returncode == distributed.PEER_EXIT_STATUS, stderr.decode()[-2000:]
        assert_dead_peer_line(stderr.decode(), HEARTBEAT_S)
        assert waited < HEARTBEAT_S + 60
    finally:
        reap(procs)


def test_initialize_argument_errors():
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("localhost:99999", 2, 0)
    with pytest.raises(ValueError, match="needs --num-processes and --process-id"):
        distributed.initialize("localhost:1234")
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    assert distributed.parse_coordinator("10.0.0.1:1234") == ("10.0.0.1", 1234)
    assert not distributed.is_initialized() and distributed.is_writer()
