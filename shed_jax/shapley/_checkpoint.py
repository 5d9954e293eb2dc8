"""Checkpointing of the Monte Carlo estimator state with orbax-checkpoint.

A checkpoint step ``k`` (= samples folded in) holds two items:

* ``state`` (``StandardSave``): ``count``, ``mean``, ``m2``, with groups ``group_mean``/``group_m2``, and the
  history arrays;
* ``meta`` (``JsonSave``): the run arguments that fix the estimate (n_players, removal_step, seed,
  antithetic, truncation_tol, history_every), ``n_evaluations`` (exact integer), the RNG position
  ``next_sample_index`` (= count: sample ``i`` always uses ``fold_in(key, i)``) and the history length.

Orbax writes a step into a temporary directory and renames it when complete, so a process killed at any
point leaves either the previous or the new step; ``restore_latest`` reads the newest complete one. Resuming
with different run arguments raises ``CheckpointMismatchError``. A run with ``groups`` records their digest
among the run arguments; resuming it from a checkpoint that holds no group state (written without groups, or
by a shed_jax from before groups existed) raises :class:`MissingGroupStateError` rather than guessing the
group sums: the per-sample group means cannot be recovered from the per-player sums, so such a run must
restart (the value stage does that, and says so).

:func:`save` finishes the step before it returns, and a Ctrl-C (SIGINT) that arrives while it writes is held
back until the step is complete (:func:`deferred_interrupt`), so an interrupt never costs the checkpoint
being written.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from .._faults import fault_point
from ._estimator import ShapleyState

FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint in ``checkpoint_dir`` was written by a run with different arguments."""


class MissingGroupStateError(CheckpointMismatchError):
    """A run with ``groups`` found a checkpoint without group state (see the module docstring)."""


def groups_digest(owner: np.ndarray, n_groups: int) -> str:
    """A short digest of the players' groups, recorded among the run arguments."""
    payload = np.asarray(owner, np.int64).tobytes() + int(n_groups).to_bytes(8, "little")
    return f"{int(n_groups)}:" + hashlib.sha256(payload).hexdigest()[:16]


def open_manager(directory: str | os.PathLike, run_args: dict) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``directory`` (created if needed) keeping the two newest steps."""
    path = Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


@contextlib.contextmanager
def deferred_interrupt():
    """Hold back SIGINT (Ctrl-C) until the block ends, then raise ``KeyboardInterrupt``.

    Only in the main thread (where Python delivers signals); elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if received:
            raise KeyboardInterrupt


def save(manager: ocp.CheckpointManager, state: ShapleyState, history: dict, run_args: dict) -> None:
    """Save ``state`` and ``history`` as step ``state.count`` and wait until the step is complete (no-op if that
    step exists). A SIGINT during the write is re-raised as ``KeyboardInterrupt`` after it."""
    with deferred_interrupt():
        _save(manager, state, history, run_args)
        manager.wait_until_finished()


def _save(manager: ocp.CheckpointManager, state: ShapleyState, history: dict, run_args: dict) -> None:
    step = int(state.count)
    if step in manager.all_steps():
        return
    n = int(state.mean.shape[0])
    length = len(history["n_permutations"])
    tree = {"count": np.asarray(state.count, dtype=np.int32),
            "mean": np.asarray(state.mean), "m2": np.asarray(state.m2)}
    n_groups = None if state.group_mean is None else int(state.group_mean.shape[0])
    if n_groups is not None:
        tree["group_mean"] = np.asarray(state.group_mean)
        tree["group_m2"] = np.asarray(state.group_m2)
    if length:
        tree["history_n_permutations"] = np.asarray(history["n_permutations"], dtype=np.int64)
        tree["history_values"] = np.asarray(history["values"], dtype=np.float64).reshape(length, n)
        tree["history_stderr"] = np.asarray(history["stderr"], dtype=np.float64).reshape(length, n)
        if n_groups is not None:
            tree["history_group_values"] = np.asarray(history["group_values"], np.float64).reshape(length, n_groups)
            tree["history_group_stderr"] = np.asarray(history["group_stderr"], np.float64).reshape(length, n_groups)
    meta = {"format_version": FORMAT_VERSION, "run_args": run_args,
            "n_evaluations": int(state.n_evaluations), "next_sample_index": step,
            "history_length": length}
    if n_groups is not None:
        meta["n_groups"] = n_groups
    fault_point("checkpoint_save")  # testing hook: a failure before the step is started
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                               meta=ocp.args.JsonSave(meta)))
    fault_point("checkpoint_write")  # testing hook (shed_jax._faults): the step is being written, not finalised


def _check_args(stored: dict, run_args: dict, directory) -> None:
    diffs = [f"{k}: checkpoint has {stored.get(k)!r}, this call has {v!r}"
             for k, v in run_args.items() if stored.get(k) != v]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint in {directory} was written by a run with different arguments ("
            + "; ".join(diffs) + "). Use the same arguments to resume, or another checkpoint_dir.")


def restore_latest(manager: ocp.CheckpointManager, run_args: dict, n_players: int, n_groups: int | None = None):
    """``(ShapleyState, history dict of lists)`` from the newest step, or None when there is none.

    With ``n_groups`` the step must hold group state, else :class:`MissingGroupStateError`."""
    step = manager.latest_step()
    if step is None:
        return None
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatchError(f"checkpoint in {manager.directory} has format "
                                      f"{meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if n_groups is not None and meta.get("n_groups") is None:
        raise MissingGroupStateError(
            f"checkpoint in {manager.directory} holds no per-group state (written by a run without groups, or by "
            "an older shed_jax); it cannot be resumed with groups: delete it (or use another checkpoint_dir) and "
            "start again")
    _check_args(meta["run_args"], run_args, manager.directory)
    dtype = jnp.zeros((), dtype=float).dtype
    length = int(meta["history_length"])
    target = {"count": np.zeros((), np.int32), "mean": np.zeros((n_players,), dtype),
              "m2": np.zeros((n_players,), dtype)}
    if n_groups is not None:
        target["group_mean"] = np.zeros((n_groups,), dtype)
        target["group_m2"] = np.zeros((n_groups,), dtype)
    if length:
        target["history_n_permutations"] = np.zeros((length,), np.int64)
        target["history_values"] = np.zeros((length, n_players), np.float64)
        target["history_stderr"] = np.zeros((length, n_players), np.float64)
        if n_groups is not None:
            target["history_group_values"] = np.zeros((length, n_groups), np.float64)
            target["history_group_stderr"] = np.zeros((length, n_groups), np.float64)
    tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    group = ((jnp.asarray(np.asarray(tree["group_mean"]), dtype), jnp.asarray(np.asarray(tree["group_m2"]), dtype))
             if n_groups is not None else (None, None))
    state = ShapleyState(count=jnp.asarray(np.asarray(tree["count"]), jnp.int32),
                         mean=jnp.asarray(np.asarray(tree["mean"]), dtype),
                         m2=jnp.asarray(np.asarray(tree["m2"]), dtype),
                         n_evaluations=int(meta["n_evaluations"]), group_mean=group[0], group_m2=group[1])
    history = {"n_permutations": [], "values": [], "stderr": []}
    if n_groups is not None:
        history.update(group_values=[], group_stderr=[])
    if length:
        history["n_permutations"] = [int(v) for v in np.asarray(tree["history_n_permutations"])]
        for key in history:
            if key != "n_permutations":
                history[key] = list(np.asarray(tree["history_" + key], dtype=np.float64))
    return state, history
