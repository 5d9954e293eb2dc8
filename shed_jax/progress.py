"""Progress bars and durations for people: labelled bars on a terminal, plain periodic lines elsewhere.

A bar says what it counts (``"embedding 15,011 records"``). When stderr is a terminal it is a tqdm bar;
when it is not (a log file, a pipe, CI), it never writes a carriage return: it writes one plain line
(``"embedding 15,011 records: 6,400/15,011 (43%), 1 min 2 s elapsed, about 1 min 20 s left"``) at most
every ``SHED_PROGRESS_SECONDS`` seconds (default 15) and at most once per 10% step, and nothing for work
that ends sooner. ``SHED_PROGRESS=plain`` forces plain lines, ``SHED_PROGRESS=bar`` the tqdm bar,
``SHED_PROGRESS=off`` hides both.

:func:`quiet_library_bars` switches off the loading bars of sentence-transformers / transformers /
huggingface_hub / datasets (only for those libraries already imported or importable, and only when called).

This module imports neither JAX nor tqdm at import time.

>>> format_duration(72)
'1 min 12 s'
>>> format_duration(8280)
'2.3 h'
>>> format_count(15011)
'15,011'
"""
from __future__ import annotations

import math
import os
import sys
import time

__all__ = ["Bar", "bar", "format_count", "format_duration", "quiet_library_bars"]

_DEFAULT_SECONDS = 15.0


def format_duration(seconds: float) -> str:
    """A duration for people: ``"0.4 s"``, ``"40 s"``, ``"1 min 12 s"``, ``"25 min"``, ``"2.3 h"``."""
    seconds = float(seconds)
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    if seconds < 600:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_count(count: int) -> str:
    """An integer with thousands separators: ``15011 -> "15,011"``."""
    return f"{int(count):,}"


def _mode(stream) -> str:
    forced = os.environ.get("SHED_PROGRESS", "").strip().lower()
    if forced in ("plain", "bar", "off"):
        return forced
    try:
        return "bar" if stream.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("SHED_PROGRESS_SECONDS", _DEFAULT_SECONDS)))
    except ValueError:
        return _DEFAULT_SECONDS


class Bar:
    """A labelled progress counter (see the module docstring). ``update(n)`` adds ``n`` done items;
    ``set(done)`` sets the count; ``close()`` ends it. Also a context manager."""

    def __init__(self, total: int, label: str, *, unit: str = "it", enabled: bool = True, stream=None):
        self.total = max(0, int(total))
        self.label = label
        self.unit = unit
        self.done = 0
        self._start = time.perf_counter()
        self._last_line = self._start
        self._last_decile = 0
        self._interval = _interval()
        self._tqdm = None
        self._echo = None
        self.mode = _mode(stream or sys.stderr) if enabled else "off"
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, desc=label, unit=unit, file=stream or sys.stderr, leave=False,
                              dynamic_ncols=True)
        elif self.mode == "plain":
            import click  # writes to the current stderr (also under click's CliRunner)

            self._echo = (lambda line: click.echo(line, err=True)) if stream is None else (
                lambda line: print(line, file=stream, flush=True))

    def update(self, n: int = 1) -> None:
        self.set(self.done + int(n))

    def set(self, done: int) -> None:
        step = int(done) - self.done
        self.done = int(done)
        if self._tqdm is not None:
            self._tqdm.update(step)
        elif self._echo is not None and self.total:
            now = time.perf_counter()
            decile = min(10, self.done * 10 // self.total)
            if self.done < self.total and now - self._last_line >= self._interval and decile > self._last_decile:
                self._last_line, self._last_decile = now, decile
                self._echo(self._line(now))

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        line = (f"{self.label}: {format_count(self.done)}/{format_count(self.total)} "
                f"({100 * self.done / self.total:.0f}%), {format_duration(elapsed)} elapsed")
        if 0 < self.done < self.total:
            line += f", about {format_duration(elapsed * (self.total - self.done) / self.done)} left"
        return line

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self._echo = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int, label: str, *, unit: str = "it", enabled: bool = True, stream=None) -> Bar:
    """A :class:`Bar` counting ``total`` items, labelled ``label`` (what is being done)."""
    return Bar(total, label, unit=unit, enabled=enabled, stream=stream)


def quiet_library_bars() -> None:
    """Disable the progress bars of transformers, huggingface_hub and datasets (ours say what they do).

    Only libraries that are importable are touched, and each is imported only if it is already loaded or
    about to be used by the caller (call this right before loading a model or a dataset).
    """
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
