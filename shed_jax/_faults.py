"""A testing hook: kill or interrupt the process, or fail a write, at a named point (``SHED_FAULT``).

Not for users. The kill tests (``tests/test_kill_resume.py``) and the disk-full tests set the environment
variable ``SHED_FAULT`` to ``POINT[:WHICH]:ACTION``; the code calls :func:`fault_point` at each named point, which
does nothing unless the variable names that point.

* ``POINT``: ``embed`` (after the embeddings are computed, before the cache write), ``embed_batch`` (after a
  sentence-encoder batch), ``kmeans`` (after the k-means fit, before ``clusters.npz`` is written: the Lloyd
  iterations run inside one jitted ``while_loop``, so there is no host point within them), ``value_chunk``
  (after a Monte Carlo chunk is folded into the state, before its checkpoint), ``checkpoint_save`` (a checkpoint
  save, before orbax starts the step), ``checkpoint_write`` (inside a checkpoint save, after orbax started
  writing the step into its temporary directory, before it is finalised; an error raised there does not stop
  orbax from finishing the step in the background, so the disk-full tests use ``checkpoint_save``), ``write`` (in the atomic writer, after the temporary files are written, before any is moved into
  place), ``replace`` (after one target of an atomic write is moved into place, before the next), ``lm_step``
  (after an LM proxy fine-tune step is dispatched, :mod:`shed_jax.lm.finetune`).
* ``WHICH``: a number ``n`` (the n-th time this process reaches the point, from 1) or a name matched against the
  point's name (the file's base name for ``write``/``replace``); absent: the first time.
* ``ACTION``: ``kill`` (SIGKILL to itself), ``int`` (SIGINT to itself: a Ctrl-C), ``enospc`` (raise
  ``OSError(ENOSPC)``: a full disk), ``erofs`` (raise ``OSError(EROFS)``: a read-only file system).

Example: ``SHED_FAULT=value_chunk:3:kill shed refine ...`` dies after the third chunk of the valuation.
"""
from __future__ import annotations

import errno
import os
import signal

__all__ = ["fault_point"]

_COUNTS: dict[str, int] = {}
_ERRORS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}


def _parse(spec: str) -> tuple[str, str | None, str]:
    parts = spec.split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"SHED_FAULT must be POINT[:WHICH]:ACTION, got {spec!r}")


def fault_point(point: str, name: str | None = None) -> None:
    """Do the action of ``SHED_FAULT`` if it names ``point`` (and this occurrence or ``name``); else nothing."""
    spec = os.environ.get("SHED_FAULT")
    if not spec:
        return
    target, which, action = _parse(spec)
    if target != point:
        return
    _COUNTS[point] = count = _COUNTS.get(point, 0) + 1
    if which is None:
        hit = count == 1
    elif which.isdigit():
        hit = count == int(which)
    else:
        hit = name is not None and os.path.basename(name) == which
    if not hit:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "int":
        os.kill(os.getpid(), signal.SIGINT)
    elif action in _ERRORS:
        code = _ERRORS[action]
        raise OSError(code, os.strerror(code), name)
    else:
        raise ValueError(f"SHED_FAULT: unknown action {action!r} (kill, int, enospc, erofs)")
