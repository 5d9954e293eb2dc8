"""Ctrl-C (SIGINT) and SIGTERM for long work: stop after the step in flight, a second signal exits at once.

The command line installs :func:`handling` around every command. Outside a :func:`cooperative` block the first
signal raises :class:`KeyboardInterrupt` at once, as Python does by default (the stages that keep their work in
checkpoints or atomic writes stop where they are). Inside one (the LM proxy's fine-tunes and scoring, whose
jitted steps run for seconds each and cannot be stopped midway) the first signal only sets a flag; the work calls
:func:`check` after each step (the step in flight finishes first), which raises :class:`KeyboardInterrupt`, and
the command writes what is complete, prints how to resume and exits with status 130.

If the step in flight has not ended ``SHED_INTERRUPT_GRACE`` seconds (default 5) after the first signal (an XLA
compilation cannot be interrupted and can take longer), the process stops then, as on a second signal: the
Shapley checkpoints are written after each complete chunk, so nothing complete is lost, and the run directory's
lock of the dead process is taken over by the next command.

A second signal exits at once (status 130), even while the main thread waits inside XLA (a compilation, a long
step): a watcher thread reads the signal numbers that Python's C-level handler writes to a pipe
(:func:`signal.set_wakeup_fd`), so it sees the signal even when the Python-level handler cannot run yet, and
ends the process with :func:`os._exit`. Checkpoints already written are kept; ``--resume`` continues from them.

Why ``os._exit`` and not a normal exit after an interrupt: JAX dispatches asynchronously, so when the
``KeyboardInterrupt`` unwinds, XLA's CPU threads may still be running queued steps on arrays that the interpreter
is tearing down; exiting through interpreter finalisation then crashed with SIGSEGV (exit 139). The command line's
``main`` therefore waits for the device work in flight to finish and leaves with ``os._exit(130)`` (see
:func:`exit_now`), after flushing its output.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading

__all__ = ["check", "cooperative", "exit_now", "handling", "requested"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = threading.Event()
_state = {"cooperative": 0, "count": 0, "hint": None, "installed": False, "generation": 0}
_DEFAULT_GRACE = 5.0
_lock = threading.Lock()


def requested() -> bool:
    """Whether a stop was asked for (a first Ctrl-C/SIGTERM inside a :func:`cooperative` block)."""
    return _requested.is_set()


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop was asked for; call it between steps."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def cooperative():
    """A block whose work calls :func:`check` between steps: a first signal inside it waits for that check
    instead of interrupting a step. Leaving the block checks once more."""
    with _lock:
        _state["cooperative"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["cooperative"] -= 1
    check()


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:  # pragma: no cover - nothing left to tell
        pass


def _resume_line() -> str:
    hint = _state["hint"]
    return f"resume with: {hint}" if hint else "finished stages and checkpoints are kept"


def _handler(signum, frame):
    """The Python-level handler (main thread)."""
    _requested.set()
    if _state["cooperative"] == 0:
        raise KeyboardInterrupt


def _log_exit(code: int) -> None:
    """The end line of the command in progress in ``RUN_DIR/logs/commands.log`` (an ``os._exit`` skips it)."""
    try:
        from shed_jax.command_log import write_pending

        write_pending(code)
    except Exception:  # pragma: no cover - exiting anyway
        pass


def _grace_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("SHED_INTERRUPT_GRACE", _DEFAULT_GRACE)))
    except ValueError:
        return _DEFAULT_GRACE


def _grace_expired(generation: int) -> None:
    """The step in flight did not end within the grace period (a compilation, a very long step): stop now.
    Only while the work is still inside the cooperative block (once it left it, it is unwinding)."""
    if _state["installed"] and _state["generation"] == generation and _state["cooperative"] > 0:
        _write_stderr(f"\nthe step in flight is still running after {_grace_seconds():g} s; stopping now; "
                      f"{_resume_line()}\n")
        _log_exit(130)
        os._exit(130)


def _watch(read_fd: int) -> None:
    """Count signals as they arrive (even while the main thread waits inside C); exit on the second."""
    while True:
        try:
            select.select([read_fd], [], [])
            data = os.read(read_fd, 64)
        except (OSError, ValueError):
            return
        for byte in data:
            if byte == 0:  # the stop sentinel of handling()
                return
            _state["count"] += 1
            if _state["count"] == 1 and _state["cooperative"] > 0:
                _write_stderr("\nstopping after the step in flight (press Ctrl-C again to stop at once)\n")
                timer = threading.Timer(_grace_seconds(), _grace_expired, args=(_state["generation"],))
                timer.daemon = True
                timer.start()
            elif _state["count"] >= 2:
                _write_stderr(f"\ninterrupted again: stopping now; {_resume_line()}\n")
                _log_exit(130)
                os._exit(130)


@contextlib.contextmanager
def handling(resume_hint: str | None = None):
    """Install the handlers for SIGINT and SIGTERM for the duration of the block (main thread only; elsewhere,
    or when already installed, the block runs with the handlers as they are)."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # pragma: no cover - not the main thread of the main interpreter
        os.close(read_fd)
        os.close(write_fd)
        yield
        return
    _requested.clear()
    _state.update(count=0, hint=resume_hint, installed=True, generation=_state["generation"] + 1)
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="shed-interrupt-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(previous_fd)
        os.set_blocking(write_fd, True)
        os.write(write_fd, b"\0")
        watcher.join(timeout=5)
        os.close(write_fd)
        os.close(read_fd)
        _state.update(installed=False, hint=None)
        _requested.clear()


def exit_now(code: int) -> None:
    """End the process with ``code`` without interpreter finalisation: wait for queued device work (JAX), flush
    stdout/stderr, then :func:`os._exit` (see the module docstring for why)."""
    if "jax" in sys.modules:
        try:
            for array in sys.modules["jax"].live_arrays():
                array.block_until_ready()
        except Exception:  # pragma: no cover - exiting anyway (a deleted or donated array)
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover
            pass
    _log_exit(code)
    os._exit(code)
