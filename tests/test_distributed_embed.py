"""Embedding across processes (shed_jax._embed_share): two processes on 127.0.0.1 (jax.distributed, gloo CPU
collectives) each embed only their share of the distinct texts (every 2nd, from their index), and the gathered
embeddings equal the one-process embeddings exactly (float32 is carried exactly), with per-host caches (no shared
file system): both empty; one process with the cache file and the other without (the one with it encodes nothing,
the other only its share, and neither waits on a gather the other skips); both with it (nobody encodes); and fewer
distinct texts than processes (process 1 has nothing to embed and loads no model).

The encoder is the hashing stand-in of conftest.py below the real ``embed_texts``, recording the texts it encodes.
Every process is started with a deadline and killed in ``finally``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from _helpers import reap
from conftest import hashing_embed
from shed_jax import _embed_share
from test_distributed_cli import ROOT, _free_port

TEXTS = [f"text number {i} about topic {i % 5}" for i in range(21)]
TEXTS = TEXTS + [TEXTS[3], TEXTS[0], TEXTS[20]]  # 24 texts, 21 distinct

SCRIPT = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    process, port, work = int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    texts = json.loads(sys.argv[5])
    from shed_jax import distributed
    distributed.initialize(f"127.0.0.1:{port}", 2, process, heartbeat_timeout_s=10, initialization_timeout_s=60)
    import jax
    assert jax.process_count() == 2 and jax.local_device_count() == 1
    from conftest import hashing_embed
    from shed_jax import embed
    encoded, models = [], []
    embed._get_model = lambda *args, **kwargs: models.append(1)
    def fake_encode(encoder, part, **kwargs):
        encoded.extend(part)
        return hashing_embed(list(part))
    embed._encode = fake_encode
    cache = work / f"cache-{process}"   # one cache per process: no shared file system
    phases = {}
    def phase(name, texts):
        encoded.clear(); models.clear()
        out = embed.embed_texts(texts, cache_dir=cache, progress=False)
        phases[name] = {"embeddings": out.tolist(), "encoded": list(encoded), "models": len(models)}
    phase("empty_caches", texts)
    if process == 1:
        shutil.rmtree(cache)           # process 0 keeps its cache file, process 1 has none
    phase("one_cache", texts)
    phase("both_caches", texts)
    phase("one_distinct_text", [texts[0]] * 3)
    print("RESULT" + json.dumps(phases), flush=True)
""")


def _run(tmp_path, timeout=240):
    script = tmp_path / "embed_share.py"
    script.write_text(SCRIPT)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen([sys.executable, str(script), str(ROOT / "tests"), str(p), str(port), str(tmp_path),
                               json.dumps(TEXTS)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in range(2)]
    try:
        outs, deadline = [], time.monotonic() + timeout
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, stderr[-3000:]
            outs.append(json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):]))
        return outs
    finally:
        reap(procs)


def test_each_process_embeds_its_share_and_every_process_gets_all(tmp_path):
    distinct = list(dict.fromkeys(TEXTS))
    want = hashing_embed(TEXTS)  # one process: the encoder on every text
    outs = _run(tmp_path)
    for process, out in enumerate(outs):
        for name, texts in (("empty_caches", TEXTS), ("one_cache", TEXTS), ("both_caches", TEXTS),
                            ("one_distinct_text", [TEXTS[0]] * 3)):
            got = np.asarray(out[name]["embeddings"], np.float32)
            np.testing.assert_array_equal(got, hashing_embed(texts), err_msg=f"{name}, process {process}")
        np.testing.assert_array_equal(np.asarray(out["empty_caches"]["embeddings"], np.float32), want)
        mine = distinct[process::2]  # its share: every 2nd distinct text from its index, each once
        assert sorted(out["empty_caches"]["encoded"]) == sorted(mine)
        assert out["both_caches"]["encoded"] == [] and out["both_caches"]["models"] == 0
    assert len(outs[0]["empty_caches"]["encoded"]) == 11 and len(outs[1]["empty_caches"]["encoded"]) == 10
    # process 0 still has its cache file: its share comes from it; process 1 encodes its share only
    assert outs[0]["one_cache"]["encoded"] == [] and outs[0]["one_cache"]["models"] == 0
    assert sorted(outs[1]["one_cache"]["encoded"]) == sorted(distinct[1::2])
    # one distinct text: process 0 embeds it, process 1 has nothing to embed and loads no model
    assert outs[0]["one_distinct_text"]["encoded"] == [TEXTS[0]]
    assert outs[1]["one_distinct_text"]["encoded"] == [] and outs[1]["one_distinct_text"]["models"] == 0


def test_shares_are_strided_by_process_and_cover_every_text_once():
    shares = [_embed_share.share(23, p, 3) for p in range(3)]
    assert shares[0].tolist() == [0, 3, 6, 9, 12, 15, 18, 21] and shares[2].tolist()[:2] == [2, 5]
    np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(23))
    assert _embed_share.processes() is None  # a single-process run: nothing to split
