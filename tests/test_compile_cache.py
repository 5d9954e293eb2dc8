"""The CLI's persistent compilation cache (shed_jax/_compile_cache.py): entries land under the shed cache directory,
a second process compiles nothing, SHED_COMPILE_CACHE=0 turns it off. Subprocesses: the test session itself runs
with the cache off (conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, logging, sys, time
from shed_jax._compile_cache import enable_compilation_cache
directory = enable_compilation_cache()          # before `import jax`, as the CLI does
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
start = time.perf_counter()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) + jnp.cumsum(x, axis=0)[-1])
jax.block_until_ready(f(jnp.arange(64.0 * 64).reshape(64, 64) / 4096))
print(json.dumps({"directory": None if directory is None else str(directory),
                  "config_dir": jax.config.jax_compilation_cache_dir, "seconds": time.perf_counter() - start,
                  "hits": sum("cache_hits" in e for e in events), "misses": sum("cache_misses" in e for e in events)}))
"""


def _run(env_extra):
    # every compilation is stored: the test function compiles in well under the CLI's 0.2 s threshold on a fast
    # machine (a user's own JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS wins over enable_compilation_cache's)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env_extra}
    for name in ("SHED_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        if name not in env_extra:
            env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_second_process_reads_the_compiled_programs_back(tmp_path):
    first = _run({"SHED_CACHE": str(tmp_path)})
    assert first["directory"] == str(tmp_path / "jax") == first["config_dir"]
    entries = sorted(p.name for p in (tmp_path / "jax").iterdir())
    assert entries and first["misses"] >= 1
    second = _run({"SHED_CACHE": str(tmp_path)})
    assert second["misses"] == 0 and second["hits"] >= 1
    assert sorted(p.name for p in (tmp_path / "jax").iterdir()) == entries  # nothing new compiled or stored


@pytest.mark.slow  # two more subprocesses that import JAX (~10 s each on a loaded 2-core machine)
def test_off_switch_and_explicit_directory(tmp_path):
    off = _run({"SHED_CACHE": str(tmp_path), "SHED_COMPILE_CACHE": "0"})
    assert off["directory"] is None and off["config_dir"] in (None, "") and not (tmp_path / "jax").exists()
    elsewhere = _run({"SHED_CACHE": str(tmp_path), "SHED_COMPILE_CACHE": str(tmp_path / "xla")})
    assert elsewhere["config_dir"] == str(tmp_path / "xla") and any((tmp_path / "xla").iterdir())
