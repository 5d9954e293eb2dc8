"""JAX's persistent compilation cache under shed_jax's cache directory (one place for every caller).

The LM proxy's compiled steps take tens of seconds to minutes to compile on a CPU. With the persistent cache a
``--dry-run`` compiles them once and the later run (another process) loads them, and so do later runs of the same
shapes. :func:`enable` points JAX at ``user_cache_dir() / "jax"`` (``$SHED_CACHE/jax``, else
``~/.cache/shed_jax/jax``) unless the user chose a directory already (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config``), and stores entries whose compilation took at least :data:`MIN_COMPILE_SECONDS` (the small
bookkeeping functions compile faster than they load). ``SHED_COMPILATION_CACHE=0`` turns it off.

JAX keys an entry by the computation, its compile options, the JAX/XLA versions and the device kind, so an entry
is only reused where it is valid; a cache that cannot be written is skipped by JAX with a warning.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MIN_COMPILE_SECONDS", "cache_dir", "enable", "enabled"]

MIN_COMPILE_SECONDS = 1.0
_state = {"dir": None}


def enabled() -> bool:
    """Whether shed_jax may turn the persistent cache on (``SHED_COMPILATION_CACHE=0`` says no)."""
    return os.environ.get("SHED_COMPILATION_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """``user_cache_dir() / "jax"`` (see :func:`shed_jax.embed.user_cache_dir`)."""
    from shed_jax.embed import user_cache_dir

    return user_cache_dir() / "jax"


def enable() -> str | None:
    """Turn JAX's persistent compilation cache on (idempotent); returns the directory in use, or None when off.

    A directory the user set (``JAX_COMPILATION_CACHE_DIR``, ``jax.config.update("jax_compilation_cache_dir",
    ...)``) is kept as it is, with JAX's own thresholds."""
    if not enabled():
        return None
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return str(current)
    if _state["dir"] is None:
        directory = cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        _state["dir"] = str(directory)
    return _state["dir"]
