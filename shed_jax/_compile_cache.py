"""JAX's persistent compilation cache under shed_jax's cache directory.

XLA compilations are the largest fixed cost of an LM-proxy run (minutes on a CPU for SmolLM2's training and scoring
steps); with the cache on, a second run of the same command (same model, shapes and JAX version) reads the
compiled executables back instead of compiling them. :func:`enable_compilation_cache` is called once by the CLI
before anything compiles, and by :func:`shed_jax.proxies.lm.build_lm_proxy` (so a library user's dry run and
run share the LM proxy's compiled steps too).

Location: ``$SHED_COMPILE_CACHE`` if set (``0``/``off`` disables the cache), else ``<user cache dir>/jax``
(``$SHED_CACHE``, ``$XDG_CACHE_HOME/shed_jax`` or ``~/.cache/shed_jax``; see
:func:`shed_jax.embed.user_cache_dir`). A user's own ``JAX_COMPILATION_CACHE_DIR`` wins. Every compilation that
takes at least ``min_compile_seconds`` (default 0.2 s, so that CPU entries are kept too; JAX's own default, 1 s,
skips most of them) is stored, whatever its size.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["compilation_cache_dir", "enable_compilation_cache"]

_OFF = ("0", "off", "false", "no", "")


def compilation_cache_dir() -> Path | None:
    """Where :func:`enable_compilation_cache` stores entries; None when ``$SHED_COMPILE_CACHE`` turns it off."""
    setting = os.environ.get("SHED_COMPILE_CACHE")
    if setting is not None:
        return None if setting.strip().lower() in _OFF else Path(setting).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    from shed_jax.embed import user_cache_dir

    return user_cache_dir() / "jax"


def enable_compilation_cache(min_compile_seconds: float = 0.2) -> Path | None:
    """Turn on JAX's persistent compilation cache (see the module docstring); returns its directory, or None when
    turned off. Before ``import jax`` it only sets the ``JAX_*`` environment variables (a user's own values win), so
    calling it costs no JAX import; after, it updates ``jax.config``. Idempotent."""
    directory = compilation_cache_dir()
    if directory is None:
        return None
    settings = {"jax_compilation_cache_dir": str(directory),
                "jax_persistent_cache_min_compile_time_secs": float(min_compile_seconds),
                "jax_persistent_cache_min_entry_size_bytes": 0}
    if "jax" not in sys.modules:
        for name, value in settings.items():
            os.environ.setdefault(name.upper(), str(value))
        return directory
    import jax

    for name, value in settings.items():
        if name != "jax_compilation_cache_dir" and os.environ.get(name.upper()):
            continue  # the user's own threshold
        jax.config.update(name, value)
    return directory
