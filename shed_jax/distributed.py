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

Failure: every process of a run started by :func:`initialize` runs a watchdog (:class:`Watchdog`): a thread that
publishes a heartbeat counter in the coordination service's key-value store every second and reads the others'.
A peer whose counter has not moved for ``heartbeat_timeout_s`` (default :data:`HEARTBEAT_TIMEOUT_S`), or a
coordinator (process 0) that stops answering that long, makes this process print ONE line to stderr and exit
with status :data:`PEER_EXIT_STATUS`::

    shed: process 1 of 2 stopped responding (heartbeat timeout 30 s); rerun all processes with --resume

A peer that fails with an error (rather than dying) says so at once: ``shed: process 1 of 2 failed (...)``.
JAX's own coordination-service heartbeat is set to twice that timeout plus 10 s, so the watchdog's line comes
first instead of JAX's fatal message dump. A process never hangs on a dead peer past the timeout (plus one
second of polling).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import jax

__all__ = ["HEARTBEAT_TIMEOUT_S", "INITIALIZATION_TIMEOUT_S", "PEER_EXIT_STATUS", "Watchdog", "barrier",
           "broadcast_text", "heartbeat_timeout", "initialize", "is_initialized", "is_writer", "parse_coordinator",
           "mark_finished", "process_log_path", "report_failure", "watchdog"]

HEARTBEAT_TIMEOUT_S = 30
"""Seconds without a heartbeat after which a process counts as dead and the others exit."""

INITIALIZATION_TIMEOUT_S = 120
"""Seconds :func:`initialize` waits for all processes to connect before it fails."""

PEER_EXIT_STATUS = 3
"""Exit status of a process whose peer stopped responding or failed."""

_STATE: dict = {"initialized": False, "watchdog": None, "keys": 0}


def heartbeat_timeout() -> int:
    """The watchdog's timeout: ``$SHED_HEARTBEAT_TIMEOUT`` seconds if set, else :data:`HEARTBEAT_TIMEOUT_S`."""
    raw = os.environ.get("SHED_HEARTBEAT_TIMEOUT", "").strip()
    if not raw:
        return HEARTBEAT_TIMEOUT_S
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"SHED_HEARTBEAT_TIMEOUT must be a whole number of seconds, got {raw!r}") from None
    if value < 2:
        raise ValueError(f"SHED_HEARTBEAT_TIMEOUT must be >= 2 seconds, got {value}")
    return value


def parse_coordinator(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ValueError with the offending text otherwise."""
    match = re.fullmatch(r"\[?([^\s\[\]]+?)\]?:(\d{1,5})", str(address).strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {address!r}")
    return match.group(1), int(match.group(2))


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
               heartbeat_timeout_s: int | None = None,
               initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S) -> tuple[int, int]:
    """Connects this process to the others (``jax.distributed.initialize``); call before any other JAX call.

    Args:
      coordinator: ``"HOST:PORT"`` of process 0's coordinator; ``None`` lets JAX detect the cluster (TPU
        pods, SLURM, Open MPI) or read its own environment variables.
      num_processes / process_id: needed with ``coordinator``; ``0 <= process_id < num_processes``.
      heartbeat_timeout_s: a peer silent this long counts as dead and this process exits with one line (default
        :func:`heartbeat_timeout`: ``$SHED_HEARTBEAT_TIMEOUT`` or :data:`HEARTBEAT_TIMEOUT_S`).
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
    timeout = heartbeat_timeout() if heartbeat_timeout_s is None else int(heartbeat_timeout_s)
    # CPU cross-process collectives (harmless where an accelerator does the work)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=None if num_processes is None else int(num_processes),
                               process_id=None if process_id is None else int(process_id),
                               initialization_timeout=int(initialization_timeout_s),
                               # JAX's own detection later than the watchdog's, so that its line comes first
                               heartbeat_timeout_seconds=2 * timeout + 10,
                               shutdown_timeout_seconds=2 * timeout + 10)
    _STATE["initialized"] = True
    if jax.process_count() > 1:
        _STATE["watchdog"] = Watchdog(_client(), jax.process_index(), jax.process_count(), timeout)
        _STATE["watchdog"].start()
        import atexit

        # runs before JAX's own exit handler (registered at import, so run later), whose shutdown barrier would
        # abort with a fatal dump if a peer died; and stops the watchdog's threads before the interpreter ends
        # daemon threads inside C++ calls (glibc: "FATAL: exception not rethrown", abort)
        atexit.register(_at_exit)
        previous_hook = sys.excepthook

        sys.excepthook = _excepthook_deferring_to_the_watchdog(previous_hook)
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


# --------------------------------------------------------------------------------------------------
# watchdog, barriers and small broadcasts through the coordination service's key-value store
# --------------------------------------------------------------------------------------------------


def _client():
    """The distributed runtime client of ``jax.distributed`` (JAX keeps it in a private module; the same object
    ``jax.experimental.multihost_utils`` uses)."""
    from jax._src import distributed as _jax_distributed

    client = _jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return client


def _say_and_exit(line: str) -> None:
    """One line on stderr, then end the process at once (no interpreter teardown under XLA threads, no JAX
    shutdown barrier that would wait for the dead peer)."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    finally:
        os._exit(PEER_EXIT_STATUS)


class Watchdog:
    """Heartbeats through the coordination service's key-value store; ends this process with one line when a
    peer stops (see the module docstring).

    Args:
      client: the distributed runtime client.
      process: this process's index; ``n_processes``: how many.
      timeout_s: seconds of silence after which a peer counts as dead.
      interval_s: seconds between heartbeats.
      exit: called with the line when a peer is found dead or failed (default: print it and ``os._exit``).
    """

    PREFIX = "shed/heartbeat/"

    def __init__(self, client, process: int, n_processes: int, timeout_s: float, *, interval_s: float = 1.0,
                 exit=_say_and_exit):
        self.client, self.process, self.n = client, int(process), int(n_processes)
        self.timeout, self.interval, self._exit = float(timeout_s), float(interval_s), exit
        self._seen: dict[int, tuple[str | None, float]] = {}
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._verdict: str | None = None
        self._finished: set[int] = set()
        self._threads: list[threading.Thread] = []
        self._exited = threading.Event()

    def start(self) -> None:
        now = time.monotonic()
        self._seen = {p: (None, now) for p in range(self.n) if p != self.process}
        self._last_ok = now
        for target, name in ((self._pulse, "shed-heartbeat"), (self._judge, "shed-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, join_s: float = 10.0) -> None:
        """Stop watching and wait (up to ``join_s``) for the threads to leave any key-value call."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(join_s)

    @property
    def verdict(self) -> str | None:
        """The line about a dead or failed peer, once found."""
        return self._verdict

    def _pulse(self) -> None:
        # key-value calls may block while the coordinator is unreachable; the judge thread does not wait on them
        beat = 0
        while not self._stop.is_set():
            beat += 1
            try:
                self.client.key_value_set(f"{self.PREFIX}{self.process}", str(beat), allow_overwrite=True)
                values = {p: self._try_get(f"{self.PREFIX}{p}") for p in self._seen}
                failures = {p: self._try_get(f"shed/failed/{p}") for p in self._seen}
                finished = {p for p in self._seen if self._try_get(f"shed/finished/{p}") is not None}
            except Exception:  # the coordinator (process 0) does not answer
                self._stop.wait(self.interval)
                continue
            now = time.monotonic()
            self._last_ok = now
            self._finished = finished
            for p, value in values.items():
                if value != self._seen[p][0]:
                    self._seen[p] = (value, now)
            for p, message in failures.items():
                if message is not None and self._verdict is None:
                    self._decide(f"shed: process {p} of {self.n} failed ({message}); fix that, then rerun all "
                                 f"processes with --resume")
            self._stop.wait(self.interval)

    def _try_get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as exc:  # a missing key is an error here; a dead coordinator too
            if "NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
                return None
            raise

    def _judge(self) -> None:
        while not self._stop.wait(min(self.interval, 0.5)):
            now = time.monotonic()
            silent = [p for p, (_, at) in self._seen.items() if now - at > self.timeout and p not in self._finished]
            if now - self._last_ok > self.timeout and self.process != 0 and 0 not in self._finished:
                silent = [0]  # the coordinator lives in process 0
            if silent and self._verdict is None:
                self._decide(f"shed: process {silent[0]} of {self.n} stopped responding (heartbeat timeout "
                             f"{self.timeout:g} s); rerun all processes with --resume")

    def _decide(self, line: str) -> None:
        self._verdict = line
        self._stop.set()
        try:
            self._exit(line)  # the default never returns (os._exit)
        finally:
            self._exited.set()

    def await_verdict(self, seconds: float) -> str | None:
        """Wait up to ``seconds`` for a verdict on the peers (after an error that a dead peer may have caused,
        e.g. a collective whose partner vanished); returns it, or None if every peer still answers."""
        deadline = time.monotonic() + seconds
        while self._verdict is None and not self._stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self._verdict


    def yield_to_verdict(self, seconds: float) -> str | None:
        """After an error that a dead peer may have caused: wait up to ``seconds`` for a verdict; if there is one,
        wait until the watchdog's thread has written its line and ended the process, so that the caller never
        prints anything after that line. Returns the verdict (only when ``exit`` returns, as in tests), or None if
        every peer still answers: then the error is this process's own."""
        verdict = self.await_verdict(seconds)
        if verdict is not None:
            self._exited.wait(60)
        return verdict


def _excepthook_deferring_to_the_watchdog(previous_hook):
    """``sys.excepthook`` for a run with peers: an uncaught error from a collective whose partner vanished ends
    with the watchdog's one line, not a traceback (the hook yields to the watchdog's thread, which exits)."""

    def excepthook(kind, value, tb):
        dog = _STATE["watchdog"]
        if dog is not None and _looks_like_a_lost_peer(value):
            if dog.yield_to_verdict(dog.timeout + 2) is not None:
                return
        previous_hook(kind, value, tb)

    return excepthook


def _looks_like_a_lost_peer(exc: BaseException) -> bool:
    """An error from the runtime (e.g. a gloo collective whose partner vanished), not from this process's work."""
    return type(exc).__name__ in ("XlaRuntimeError", "JaxRuntimeError") or "gloo" in str(exc).lower()


def _at_exit() -> None:
    """Every process meets at an exit barrier while the watchdog still runs (a dead peer: its line and exit 3
    within the timeout), then the watchdog stops and JAX's shutdown barrier finds everyone."""
    dog = _STATE["watchdog"]
    if dog is None:
        return
    try:
        barrier("exit", timeout_s=max(60.0, 4 * dog.timeout))
    except Exception:  # a peer gone after it finished, or far behind: JAX's shutdown decides
        pass
    dog.stop()


def watchdog() -> Watchdog | None:
    """This process's :class:`Watchdog` (None in a single-process run)."""
    return _STATE["watchdog"]


def _next_key(name: str) -> str:
    _STATE["keys"] += 1
    return f"shed/{name}/{_STATE['keys']}"


def barrier(name: str, timeout_s: float = 24 * 3600) -> None:
    """Wait until every process reaches this barrier (the coordination service's, no device collective). A peer
    that dies meanwhile ends this process through the watchdog. Every process must call the same barriers in the
    same order. Nothing in a single-process run."""
    if not _STATE["initialized"] or jax.process_count() == 1:
        return
    _client().wait_at_barrier(_next_key(f"barrier/{name}"), int(timeout_s * 1000))


def broadcast_text(name: str, text: str | None, timeout_s: float = 24 * 3600) -> str:
    """Process 0's ``text`` in every process (the key-value store; for short strings such as digests)."""
    if not _STATE["initialized"] or jax.process_count() == 1:
        return text or ""
    key = _next_key(f"text/{name}")
    if jax.process_index() == 0:
        _client().key_value_set(key, text or "")
        return text or ""
    return _client().blocking_key_value_get(key, int(timeout_s * 1000))


def report_failure(exc: BaseException) -> None:
    """Tell the other processes that this one failed (they exit with a line naming it instead of waiting for the
    heartbeat timeout). Best effort; nothing in a single-process run."""
    if not _STATE["initialized"] or jax.process_count() == 1:
        return
    try:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        _client().key_value_set(f"shed/failed/{jax.process_index()}", message, allow_overwrite=True)
    except Exception:
        pass


def mark_finished(done: bool = True) -> None:
    """This process is done (``done=False``: working again): the others stop expecting its heartbeat, and a
    coordinator that is done may go away without a verdict."""
    if not _STATE["initialized"] or jax.process_count() == 1:
        return
    key = f"shed/finished/{jax.process_index()}"
    try:
        if done:
            _client().key_value_set(key, "1", allow_overwrite=True)
        else:
            _client().key_value_delete(key)
    except Exception:
        pass
