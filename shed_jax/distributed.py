"""Multi-controller runs on JAX's own runtime (``jax.distributed``): one process per host, one global mesh.

Every process runs the same program on the same inputs; :func:`initialize` connects them (before any other
JAX call), after which ``jax.devices()`` lists the devices of all processes and :func:`shed_jax.sharding.make_mesh`
spans them. The Shapley engine and k-means then run one deterministic host loop per process over the global
mesh: arguments become global arrays (``jax.make_array_from_callback`` fills each process's own shards), results
come back to every process (``multihost_utils.process_allgather`` where they are sharded), so each process holds
the same values. Only process 0 should write outputs (:func:`is_writer`); the others log to
``RUN_DIR/logs/process-I.log`` (:func:`process_log_path`).

Launch:

* TPU pod slices, SLURM, Open MPI: ``initialize()`` with no arguments (JAX detects the cluster).
* Elsewhere: ``initialize("HOST:PORT", num_processes=N, process_id=I)`` in every process (same coordinator
  address, ``I = 0 .. N-1``; process 0 hosts the coordinator), or JAX's own environment variables.

On CPU the cross-process collectives go through gloo (``jax_cpu_collectives_implementation``), set here.

Failure: a process that dies stops sending heartbeats; after ``heartbeat_timeout_s`` (default
:data:`HEARTBEAT_TIMEOUT_S`) the coordination service marks it unhealthy and every other process terminates
(abort, exit status 134 / signal 6) with the line ``Terminating process because the JAX distributed service
detected fatal errors ... The following tasks are unhealthy (stopped sending heartbeats): I``, naming the dead
process. It never hangs past that timeout (plus the collective in flight).
"""
from __future__ import annotations

import re
from pathlib import Path

import jax

__all__ = ["HEARTBEAT_TIMEOUT_S", "INITIALIZATION_TIMEOUT_S", "initialize", "is_initialized", "is_writer",
           "parse_coordinator", "process_log_path"]

HEARTBEAT_TIMEOUT_S = 30
"""Seconds without a heartbeat after which a process counts as dead and the others exit."""

INITIALIZATION_TIMEOUT_S = 120
"""Seconds :func:`initialize` waits for all processes to connect before it fails."""

_STATE = {"initialized": False}


def parse_coordinator(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ValueError with the offending text otherwise."""
    match = re.fullmatch(r"\[?([^\s\[\]]+?)\]?:(\d{1,5})", str(address).strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {address!r}")
    return match.group(1), int(match.group(2))


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S) -> tuple[int, int]:
    """Connects this process to the others (``jax.distributed.initialize``); call before any other JAX call.

    Args:
      coordinator: ``"HOST:PORT"`` of process 0's coordinator; ``None`` lets JAX detect the cluster (TPU
        pods, SLURM, Open MPI) or read its own environment variables.
      num_processes / process_id: needed with ``coordinator``; ``0 <= process_id < num_processes``.
      heartbeat_timeout_s: a peer silent this long counts as dead and this process exits.
      initialization_timeout_s: how long to wait for every process to connect.

    Returns:
      ``(jax.process_index(), jax.process_count())``.

    Raises:
      ValueError: inconsistent arguments (one line naming the option).
    """
    if coordinator is not None:
        parse_coordinator(coordinator)
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id")
    if num_processes is not None and (isinstance(num_processes, bool) or int(num_processes) < 1):
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if _STATE["initialized"]:
        return jax.process_index(), jax.process_count()
    # CPU cross-process collectives (harmless where an accelerator does the work)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=None if num_processes is None else int(num_processes),
                               process_id=None if process_id is None else int(process_id),
                               initialization_timeout=int(initialization_timeout_s),
                               heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                               shutdown_timeout_seconds=int(heartbeat_timeout_s))
    _STATE["initialized"] = True
    return jax.process_index(), jax.process_count()


def is_initialized() -> bool:
    """True after :func:`initialize` in this process."""
    return _STATE["initialized"]


def is_writer() -> bool:
    """True in the process that writes outputs: process 0 (also in a single-process run)."""
    return jax.process_index() == 0


def process_log_path(run_dir) -> Path:
    """``RUN_DIR/logs/process-I.log`` for this process."""
    return Path(run_dir) / "logs" / f"process-{jax.process_index()}.log"
