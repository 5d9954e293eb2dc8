"""shed_jax._compile_cache: JAX's persistent compilation cache under the shed cache dir, so that a second process
(the run after its --dry-run) loads what the first compiled instead of compiling it again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = """
import jax, jax.numpy as jnp
from jax import monitoring
from shed_jax import _compile_cache
events = []
monitoring.register_event_listener(lambda event, **_: events.append(event))
directory = _compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # store this small function too
f = jax.jit(lambda x: jnp.sin(x) * 2 + jnp.cos(x) ** 3)
f(jnp.ones(7)).block_until_ready()
print(directory, events.count("/jax/compilation_cache/cache_hits"))
"""


def run(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = {"SHED_CACHE": str(tmp_path / "cache")}
    directory, hits = run(env)
    assert directory == str(tmp_path / "cache" / "jax") and hits == "0"
    assert any(Path(directory).iterdir())
    directory, hits = run(env)
    assert int(hits) >= 1  # this function (and the small ones jnp.ones compiles) loaded, not compiled


def test_it_can_be_turned_off_and_a_users_directory_is_kept(tmp_path):
    directory, hits = run({"SHED_CACHE": str(tmp_path / "cache"), "SHED_COMPILATION_CACHE": "0"})
    assert directory == "None" and not (tmp_path / "cache" / "jax").exists()
    mine = tmp_path / "mine"
    directory, _ = run({"SHED_CACHE": str(tmp_path / "cache"), "JAX_COMPILATION_CACHE_DIR": str(mine)})
    assert directory == str(mine) and not (tmp_path / "cache" / "jax").exists()
