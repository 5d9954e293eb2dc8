"""A self-contained HTML report of a SHED run directory.

``write_report(run_dir)`` reads what the pipeline stages wrote (``config.json``, ``summary.json``,
``clusters.npz``, ``values.json``, ``convergence.npz``, ``scores.jsonl``, ``selection.json`` and the data file
named in the config) and writes one HTML file with the plots inlined as base64 PNG images:

* the distribution of the cluster values (sorted, with +-2 standard-error bars),
* the convergence of the Monte Carlo estimates over permutations (trajectories of the top and bottom
  clusters, and the mean standard error against the number of permutations),
* cluster size against value, with the clusters the selection drew from highlighted,
* the composition of the selection against the input by ``category`` (when the records have one),
* tables of the top and bottom clusters with example records (HTML-escaped).

Every piece except the run directory itself is optional: a missing or unreadable file gives a note in the
report where its section would be, never an exception. When the data file is generated demo data
(:func:`shed_jax.synthetic.make_demo`, recognised by a ``meta.json`` next to it), the report also shows the
fraction of known junk per cluster.

matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` only (no pyplot, no global
backend switch), so writing a report never changes the caller's plotting state.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shed_jax.data import atomic_write_text

__all__ = ["write_report"]

_SELECTED = "#2563eb"
_UNSELECTED = "#9ca3af"
_JUNK = "#dc2626"
_TOP = ("#1d4ed8", "#3b82f6", "#93c5fd")
_BOTTOM = ("#b91c1c", "#ef4444", "#fca5a5")
_N_TABLE = 5          # clusters in each of the top / bottom tables
_N_EXAMPLES = 3       # example records per cluster in those tables
_TEXT_LIMIT = 220     # characters of an example prompt / response shown


@dataclass
class _Run:
    """Everything the report shows, as loaded from the run directory (None where missing)."""

    run_dir: Path
    notes: dict[str, list[str]] = field(default_factory=dict)
    config: dict | None = None            # config.json "config" (or the whole file if flat)
    resolved: dict = field(default_factory=dict)
    summary: dict | None = None
    values: np.ndarray | None = None      # (K,) float64
    stderr: np.ndarray | None = None      # (K,) float64, NaN where unknown
    values_meta: dict = field(default_factory=dict)
    labels: np.ndarray | None = None      # (N,) int, -1 = not a candidate
    proxy_index: np.ndarray | None = None  # (K,) int
    convergence: dict | None = None       # n_permutations (T,), values (T, K), stderr (T, K)
    selected: np.ndarray | None = None    # (N,) bool, or None
    selection: dict | None = None
    prompts: list[str] | None = None
    responses: list[str] | None = None
    categories: list[str] | None = None
    junk: np.ndarray | None = None        # (N,) bool, ground truth of generated demo data
    data_path: str | None = None

    def note(self, section: str, message: str) -> None:
        self.notes.setdefault(section, []).append(message)

    @property
    def n_clusters(self) -> int | None:
        if self.values is not None:
            return int(self.values.shape[0])
        if self.proxy_index is not None:
            return int(self.proxy_index.shape[0])
        return None

    def cluster_sizes(self) -> np.ndarray | None:
        """(K,) int64 number of candidate records per cluster."""
        if self.labels is None or self.n_clusters is None:
            return None
        members = self.labels[self.labels >= 0]
        return np.bincount(members, minlength=self.n_clusters)[: self.n_clusters].astype(np.int64)

    def selected_per_cluster(self) -> np.ndarray | None:
        """(K,) int64 number of selected records per cluster."""
        if self.labels is None or self.selected is None or self.n_clusters is None:
            return None
        chosen = self.labels[self.selected & (self.labels >= 0)]
        return np.bincount(chosen, minlength=self.n_clusters)[: self.n_clusters].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------

def write_report(run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None) -> Path:
    """Write a self-contained HTML report of the SHED run in ``run_dir``.

    Args:
        run_dir: a run directory (layout of :mod:`shed_jax.pipeline`). Only the directory must exist;
            each missing or unreadable file is reported as a note in the HTML in place of its section.
        out: where to write the report; default ``run_dir / "report.html"``.

    Returns:
        The path written (atomically: a reader never sees a half-written report).

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    run = _load_run(run_dir)
    document = _render(run)
    out_path = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(out_path, document)
    return out_path


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------

def _read_json(path: Path, run: _Run, section: str) -> Any:
    if not path.is_file():
        run.note(section, f"{path.name} not found in the run directory.")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        run.note(section, f"{path.name} could not be read ({exc}).")
        return None


def _read_npz(path: Path, run: _Run, section: str, keys: tuple[str, ...]) -> dict | None:
    if not path.is_file():
        run.note(section, f"{path.name} not found in the run directory.")
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in keys if k not in arrays.files]
            if missing:
                run.note(section, f"{path.name} lacks {', '.join(missing)}.")
                return None
            return {k: np.asarray(arrays[k]) for k in keys}
    except Exception as exc:  # zip/format errors vary with numpy versions
        run.note(section, f"{path.name} could not be read ({type(exc).__name__}: {exc}).")
        return None


def _float_array(values: Any) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _load_run(run_dir: Path) -> _Run:
    run = _Run(run_dir)
    payload = _read_json(run_dir / "config.json", run, "config")
    if isinstance(payload, dict):
        run.config = payload["config"] if isinstance(payload.get("config"), dict) else payload
        run.resolved = payload.get("resolved") if isinstance(payload.get("resolved"), dict) else {}
    summary = _read_json(run_dir / "summary.json", run, "summary")
    run.summary = summary if isinstance(summary, dict) else None

    values = _read_json(run_dir / "values.json", run, "values")
    if isinstance(values, dict) and isinstance(values.get("cluster_values"), list):
        try:
            run.values = _float_array(values["cluster_values"])
            stderr = values.get("stderr") or [None] * run.values.shape[0]
            run.stderr = _float_array(stderr)
            if run.stderr.shape != run.values.shape:
                run.note("values", "values.json: stderr and cluster_values differ in length; error bars omitted.")
                run.stderr = np.full_like(run.values, np.nan)
            bulky = ("cluster_values", "stderr", "proxy_index", "members")
            run.values_meta = {k: v for k, v in values.items() if k not in bulky}
        except (TypeError, ValueError) as exc:
            run.values = run.stderr = None
            run.note("values", f"values.json: cluster_values are not numbers ({exc}).")
    elif values is not None:
        run.note("values", "values.json has no 'cluster_values' list.")

    clusters = _read_npz(run_dir / "clusters.npz", run, "clusters", ("labels", "proxy_index"))
    if clusters is not None:
        run.labels = clusters["labels"].astype(np.int64).ravel()
        run.proxy_index = clusters["proxy_index"].astype(np.int64).ravel()
        k = run.proxy_index.shape[0]
        if run.values is not None and run.values.shape[0] != k:
            run.note("clusters", f"clusters.npz has {k} clusters but values.json {run.values.shape[0]} values; "
                                 "cluster sizes and examples omitted.")
            run.labels = run.proxy_index = None

    scores = _load_scores(run_dir / "scores.jsonl", run)
    selection = _read_json(run_dir / "selection.json", run, "selection")
    run.selection = selection if isinstance(selection, dict) else None
    n_records = run.labels.shape[0] if run.labels is not None else (len(scores) if scores else None)
    if run.labels is None and scores and run.values is not None:
        labels = np.asarray([s.get("cluster", -1) if s.get("cluster") is not None else -1 for s in scores])
        if labels.max(initial=-1) < run.values.shape[0]:
            run.labels = labels.astype(np.int64)
    if scores and n_records is not None and len(scores) == n_records:
        run.selected = np.asarray([bool(s.get("selected", False)) for s in scores], dtype=bool)
    elif run.selection is not None and n_records is not None and isinstance(run.selection.get("indices"), list):
        try:
            indices = np.asarray(run.selection["indices"], dtype=np.int64).ravel()
        except (TypeError, ValueError):
            indices = np.asarray([-1])
        if indices.size and (indices.min() < 0 or indices.max() >= n_records):
            run.note("selection", "selection.json indices are out of range; selection not shown.")
        else:
            run.selected = np.zeros(n_records, dtype=bool)
            run.selected[indices] = True

    conv = _read_npz(run_dir / "convergence.npz", run, "convergence", ("n_permutations", "values", "stderr"))
    if conv is not None:
        t = conv["n_permutations"].ravel()
        shape_ok = conv["values"].ndim == 2 and conv["values"].shape == conv["stderr"].shape \
            and conv["values"].shape[0] == t.shape[0] and t.shape[0] > 0
        if shape_ok and run.values is not None and conv["values"].shape[1] != run.values.shape[0]:
            shape_ok = False
        if shape_ok:
            run.convergence = {"n_permutations": t.astype(np.float64), "values": conv["values"].astype(np.float64),
                               "stderr": conv["stderr"].astype(np.float64)}
        else:
            run.note("convergence", "convergence.npz arrays have inconsistent shapes; not plotted.")

    _load_data(run, n_records)
    return run


def _load_scores(path: Path, run: _Run) -> list[dict] | None:
    if not path.is_file():
        run.note("selection", "scores.jsonl not found in the run directory.")
        return None
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    rows.append(row if isinstance(row, dict) else {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        run.note("selection", f"scores.jsonl could not be read ({exc}).")
        return None
    return rows


def _load_data(run: _Run, n_records: int | None) -> None:
    """Prompts, responses and categories of the data file named in config.json (best effort)."""
    config = run.config or {}
    data = config.get("data")
    if not data:
        run.note("data", "config.json names no data file; example records are not shown.")
        return
    path = Path(str(data))
    if not path.is_file() and not path.is_absolute() and (run.run_dir / path).is_file():
        path = run.run_dir / path
    run.data_path = str(path)
    if not path.is_file():
        run.note("data", f"data file {data} not found; example records are not shown.")
        return
    from shed_jax import data as _data

    field_map = config.get("field_map") or None
    fmt = config.get("format") if isinstance(config.get("format"), str) else "auto"
    try:
        dataset = _data.read_instructions(path, format=fmt, field_map=field_map, duplicates="keep")
    except Exception as exc:  # a report must not fail on a data file that changed since the run
        run.note("data", f"data file {data} could not be read ({exc}); example records are not shown.")
        return
    if n_records is not None and len(dataset) != n_records:
        run.note("data", f"data file {data} has {len(dataset)} records but the run has {n_records}; "
                         "it changed since the run, so example records are not shown.")
        return
    run.prompts, run.responses = list(dataset.prompts), list(dataset.responses)
    categories = dataset.category("category")
    run.categories = None if categories is None else [str(c) for c in categories]
    run.junk = _demo_junk(path, len(dataset))


def _demo_junk(data_path: Path, n_records: int) -> np.ndarray | None:
    """(N,) bool known junk when ``data_path`` was written by ``shed_jax.synthetic.make_demo``."""
    meta_path = data_path.parent / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not str(meta.get("generator", "")).startswith("shed_jax.synthetic"):
            return None
        if meta.get("files", {}).get("train") != data_path.name or int(meta.get("n_examples", -1)) != n_records:
            return None
        junk = np.zeros(n_records, dtype=bool)
        junk[np.asarray(meta["junk_indices"], dtype=np.int64)] = True
        return junk
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------

def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.grid(True, color="#e5e7eb", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=9)
    return fig, axes


def _png_base64(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _two_stderr(stderr: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(stderr), 2.0 * stderr, 0.0)


def _plot_values(run: _Run) -> str:
    values, stderr = run.values, run.stderr
    order = np.argsort(-values, kind="stable")
    ranks = np.arange(1, values.shape[0] + 1)
    per_cluster = run.selected_per_cluster()
    chosen = per_cluster[order] > 0 if per_cluster is not None else np.zeros(values.shape[0], dtype=bool)
    fig, (ax,) = _figure(10.5, 3.8)
    for mask, colour, label in ((~chosen, _UNSELECTED, "not selected"), (chosen, _SELECTED, "selected from")):
        if mask.any():
            ax.errorbar(ranks[mask], values[order][mask], yerr=_two_stderr(stderr[order][mask]), fmt="o",
                        ms=4, color=colour, ecolor=colour, elinewidth=1, capsize=2, label=label, alpha=0.9)
    ax.axhline(0.0, color="#374151", linewidth=0.8)
    ax.set_xlabel("cluster rank (highest value first)", fontsize=10)
    ax.set_ylabel("Shapley value (± 2 s.e.)", fontsize=10)
    if per_cluster is not None:
        ax.legend(frameon=False, fontsize=9)
    return _png_base64(fig)


def _plot_convergence(run: _Run) -> str:
    conv = run.convergence
    t, traj, traj_se = conv["n_permutations"], conv["values"], conv["stderr"]
    final = traj[-1]
    order = np.argsort(-final, kind="stable")
    n_show = min(3, max(1, final.shape[0] // 2))
    fig, (ax_traj, ax_se) = _figure(10.5, 3.8, ncols=2)
    groups = [(order[:n_show], _TOP, "top"), (order[::-1][:n_show], _BOTTOM, "bottom")]
    for clusters, colours, _ in groups:
        for k, colour in zip(clusters, colours):
            band = _two_stderr(traj_se[:, k])
            ax_traj.fill_between(t, traj[:, k] - band, traj[:, k] + band, color=colour, alpha=0.15, linewidth=0)
            ax_traj.plot(t, traj[:, k], color=colour, linewidth=1.6, label=f"cluster {int(k)}")
    ax_traj.axhline(0.0, color="#374151", linewidth=0.8)
    ax_traj.set_xlabel("permutations", fontsize=10)
    ax_traj.set_ylabel("estimated value (± 2 s.e.)", fontsize=10)
    ax_traj.set_title("top and bottom clusters", fontsize=10)
    ax_traj.legend(frameon=False, fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    with np.errstate(all="ignore"):
        finite = np.where(np.isfinite(traj_se), traj_se, np.nan)
        counts = np.sum(np.isfinite(finite), axis=1)
        mean_se = np.where(counts > 0, np.nansum(finite, axis=1) / np.maximum(counts, 1), np.nan)
    ok = np.isfinite(mean_se) & (mean_se > 0) & (t > 0)
    if ok.any():
        ax_se.plot(t[ok], mean_se[ok], color=_SELECTED, linewidth=1.8, marker="o", ms=3, label="mean s.e.")
        anchor = np.flatnonzero(ok)[0]
        reference = mean_se[anchor] * np.sqrt(t[anchor] / t[ok])
        ax_se.plot(t[ok], reference, color="#6b7280", linestyle="--", linewidth=1, label=r"$\propto 1/\sqrt{T}$")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        if t[ok].max() > t[ok].min():
            ax_se.set_xscale("log")
        ax_se.set_yscale("log")
        for axis in (ax_se.xaxis, ax_se.yaxis):  # ticks at 1, 2, 5 x 10^k, written plainly
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax_se.legend(frameon=False, fontsize=8)
    else:
        ax_se.text(0.5, 0.5, "no finite standard errors yet", ha="center", va="center", transform=ax_se.transAxes)
    ax_se.set_xlabel("permutations T", fontsize=10)
    ax_se.set_ylabel("mean standard error", fontsize=10)
    ax_se.set_title("mean standard error over clusters", fontsize=10)
    return _png_base64(fig)


def _plot_size_value(run: _Run, sizes: np.ndarray) -> str:
    values, stderr = run.values, run.stderr
    per_cluster = run.selected_per_cluster()
    chosen = per_cluster > 0 if per_cluster is not None else np.zeros(values.shape[0], dtype=bool)
    fig, (ax,) = _figure(10.5, 3.8)
    for mask, colour, label in ((~chosen, _UNSELECTED, "not selected"), (chosen, _SELECTED, "selected from")):
        if mask.any():
            ax.errorbar(sizes[mask], values[mask], yerr=_two_stderr(stderr[mask]), fmt="o", ms=5, color=colour,
                        ecolor=colour, elinewidth=0.8, alpha=0.85, label=label)
    if run.junk is not None and run.labels is not None:
        junk_share = _junk_share(run)
        mostly_junk = junk_share > 0.5
        if mostly_junk.any():
            ax.scatter(sizes[mostly_junk], values[mostly_junk], s=110, facecolors="none", edgecolors=_JUNK,
                       linewidths=1.5, label="mostly junk (demo ground truth)", zorder=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.0, color="#374151", linewidth=0.8)
    ax.set_xlabel("cluster size (records)", fontsize=10)
    ax.set_ylabel("Shapley value (± 2 s.e.)", fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    return _png_base64(fig)


def _plot_composition(rows: list[tuple[str, int, int]], n_input: int, n_selected: int) -> str:
    shown = rows[:15]
    names = [name for name, _, _ in shown][::-1]
    input_share = np.asarray([c for _, c, _ in shown][::-1], dtype=np.float64) / max(n_input, 1) * 100
    selected_share = np.asarray([s for _, _, s in shown][::-1], dtype=np.float64) / max(n_selected, 1) * 100
    y = np.arange(len(names), dtype=np.float64)
    fig, (ax,) = _figure(10.5, max(2.6, 0.42 * len(names) + 1.0))
    ax.barh(y + 0.2, input_share, height=0.4, color=_UNSELECTED, label=f"input ({n_input} records)")
    ax.barh(y - 0.2, selected_share, height=0.4, color=_SELECTED, label=f"selection ({n_selected} records)")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xlabel("share of records (%)", fontsize=10)
    ax.grid(True, axis="x", color="#e5e7eb")
    ax.grid(False, axis="y")
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.legend(frameon=False, fontsize=9, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return _png_base64(fig)


def _junk_share(run: _Run) -> np.ndarray:
    k = run.n_clusters
    members = run.labels >= 0
    total = np.bincount(run.labels[members], minlength=k)[:k]
    junk = np.bincount(run.labels[members & run.junk], minlength=k)[:k]
    return np.where(total > 0, junk / np.maximum(total, 1), 0.0)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #111827; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; --bg: #f9fafb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 10px; }
.sub { color: var(--muted); margin: 0 0 20px; word-break: break-all; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px;
          margin: 0 0 18px; }
.caption { color: var(--muted); font-size: 13.5px; margin: 6px 0 0; }
.note { background: #fffbeb; border: 1px solid #fde68a; color: #92400e; border-radius: 6px;
        padding: 8px 12px; margin: 8px 0; font-size: 14px; }
img.plot { display: block; max-width: 100%; height: auto; margin: 4px auto; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.card .k { color: var(--muted); font-size: 12.5px; text-transform: uppercase; letter-spacing: .03em; }
.card .v { font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; word-break: break-all; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: 12.5px; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; width: 1%; }
table.kv td:first-child { color: var(--muted); width: 32%; }
table.kv td { word-break: break-all; }
ul.examples { margin: 0; padding-left: 18px; }
ul.examples li { margin: 0 0 6px; }
.prompt { white-space: pre-wrap; }
.response { color: var(--muted); white-space: pre-wrap; font-size: 13px; }
.tag { display: inline-block; font-size: 11px; border-radius: 4px; padding: 0 5px; margin-right: 4px;
       background: #dbeafe; color: #1e40af; vertical-align: 1px; }
.tag.junk { background: #fee2e2; color: #991b1b; }
details { margin-top: 10px; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px; overflow-x: auto;
      font-size: 12.5px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
@media (max-width: 860px) { .grid2 { grid-template-columns: 1fr; } }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "—"
        return f"{v:.4g}"
    return str(value)


def _value_pm(value: float, stderr: float) -> str:
    """``value ± stderr`` with the value rounded to the stderr's second significant digit."""
    if not math.isfinite(stderr) or stderr <= 0:
        return f"{value:.4g}"
    decimals = max(0, 1 - int(math.floor(math.log10(stderr))))
    return f"{value:.{decimals}f} ± {stderr:.{decimals}f}"


def _shorten(text: str, limit: int = _TEXT_LIMIT) -> str:
    text = "\n".join(line for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _notes_html(run: _Run, *sections: str) -> str:
    return "".join(f'<p class="note">{_esc(message)}</p>' for s in sections for message in run.notes.get(s, []))


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _setting(run: _Run, *names: str) -> Any:
    for source in (run.resolved, run.config or {}, run.summary or {}):
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None


def _budget_text(run: _Run) -> str:
    budget = run.selection.get("budget") if run.selection else None
    if budget is None and run.summary:
        budget = run.summary.get("budget")
    ratio, size = _setting(run, "ratio"), _setting(run, "size")
    parts = [] if budget is None else [f"{_fmt(budget)} records"]
    if ratio is not None:
        parts.append(f"ratio {_fmt(ratio)}")
    elif size is not None and budget is None:
        parts.append(f"size {_fmt(size)}")
    return ", ".join(parts) if parts else "—"


def _header(run: _Run) -> str:
    config = run.config or {}
    permutations = run.values_meta.get("n_permutations")
    requested = config.get("n_permutations")
    perm_text = _fmt(permutations if permutations is not None else requested)
    if permutations is not None and requested is not None and int(permutations) != int(requested):
        perm_text += f" (of {_fmt(requested)} requested)"
    sampler = (run.selection or {}).get("sampler") or _setting(run, "sampler")
    if sampler == "qwcs" and _setting(run, "beta") is not None:
        sampler = f"qwcs (β = {_fmt(_setting(run, 'beta'))})"
    rows = [("data", config.get("data")), ("valid", config.get("valid")),
            ("K (clusters)", _fmt(run.n_clusters if run.n_clusters is not None else _setting(run, "n_clusters"))),
            ("permutations", perm_text),
            ("removal step", _fmt(run.values_meta.get("removal_step", _setting(run, "removal_step")))),
            ("sampler", sampler), ("budget", _budget_text(run)), ("seed", _fmt(_setting(run, "seed"))),
            ("model", config.get("model")), ("proxy", config.get("proxy")),
            ("proxies per cluster", run.values_meta.get("proxies_per_cluster", config.get("proxies_per_cluster")))]
    table = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows if v is not None)
    details = ""
    if run.config is not None:
        full = {"config": run.config, "resolved": run.resolved} if run.resolved else run.config
        details = (f"<details><summary>all options</summary><pre>{_esc(json.dumps(full, indent=2, default=str))}"
                   "</pre></details>")
    return (f'<section id="config"><h2>Run configuration</h2>{_notes_html(run, "config")}'
            f'<table class="kv">{table}</table>{details}</section>')


def _cards(run: _Run) -> str:
    cards: list[tuple[str, Any]] = []
    summary = run.summary or {}
    n_records = run.labels.shape[0] if run.labels is not None else summary.get("n_examples")
    cards.append(("records", n_records))
    if run.labels is not None:
        cards.append(("candidates", int((run.labels >= 0).sum())))
    elif summary.get("n_candidates") is not None:
        cards.append(("candidates", summary["n_candidates"]))
    cards.append(("clusters K", run.n_clusters))
    if run.selected is not None:
        cards.append(("selected", int(run.selected.sum())))
    for key, label in (("n_permutations", "permutations"), ("n_evaluations", "utility evaluations"),
                       ("u_empty", "utility (no data)"), ("u_full", "utility (all proxies)")):
        if run.values_meta.get(key) is not None:
            cards.append((label, run.values_meta[key]))
    if run.values is not None:
        cards.append(("value range", f"{_fmt(run.values.min())} … {_fmt(run.values.max())}"))
    if run.junk is not None:
        candidates = run.labels >= 0 if run.labels is not None else np.ones(run.junk.shape[0], dtype=bool)
        cards.append(("junk in input (demo)", f"{100 * run.junk[candidates].mean():.1f}%"))
        if run.selected is not None and run.selected.any():
            cards.append(("junk in selection (demo)", f"{100 * run.junk[run.selected].mean():.1f}%"))
    if summary.get("seconds_total") is not None:
        cards.append(("seconds", summary["seconds_total"]))
    body = "".join(f'<div class="card"><div class="k">{_esc(k)}</div><div class="v">{_esc(_fmt(v))}</div></div>'
                   for k, v in cards if v is not None)
    flat = _flatten(summary)
    details = ""
    if flat:
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in flat)
        details = f'<details><summary>summary.json</summary><table class="kv">{rows}</table></details>'
    return (f'<section id="summary"><h2>Summary</h2>{_notes_html(run, "summary")}<div class="cards">{body}</div>'
            f"{details}</section>")


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            rows.extend(_flatten(value, f"{prefix}{key}."))
    elif isinstance(obj, list):
        text = json.dumps(obj, default=str)
        rows.append((prefix[:-1], text if len(text) <= 200 else f"[{len(obj)} items]"))
    else:
        rows.append((prefix[:-1], obj))
    return rows


def _values_section(run: _Run) -> str:
    head = '<section id="values"><h2>Cluster values</h2>'
    notes = _notes_html(run, "values", "clusters")
    if run.values is None:
        return head + notes + '<p class="note">No cluster values to plot.</p></section>'
    per_cluster = run.values_meta.get("proxies_per_cluster") or 1
    what = ("each cluster's proxy example" if per_cluster == 1
            else f"each cluster: the mean over its (up to {per_cluster}) proxy examples")
    caption = (f"Monte Carlo Shapley value of {what}, highest first; bars are ± 2 standard "
               "errors over permutations. Blue: clusters the selection drew records from.")
    return head + notes + _img(_plot_values(run), "cluster values") + f'<p class="caption">{caption}</p></section>'


def _convergence_section(run: _Run) -> str:
    head = '<section id="convergence"><h2>Convergence</h2>'
    notes = _notes_html(run, "convergence")
    if run.convergence is None:
        return head + (notes or '<p class="note">No convergence history.</p>') + "</section>"
    caption = ("Left: running estimates of the three highest- and lowest-valued clusters with ± 2 s.e. bands. "
               "Right: mean standard error over clusters against the number of permutations (dashed: 1/√T).")
    return head + notes + _img(_plot_convergence(run), "convergence of the estimates") + \
        f'<p class="caption">{caption}</p></section>'


def _size_section(run: _Run) -> str:
    head = '<section id="sizes"><h2>Cluster size and value</h2>'
    sizes = run.cluster_sizes()
    if run.values is None or sizes is None:
        return head + '<p class="note">Needs both values.json and clusters.npz.</p></section>'
    caption = "Each point is a cluster; blue: the selection drew records from it."
    if run.junk is not None:
        caption += " Red rings: clusters whose records are mostly known junk (generated demo data)."
    return head + _img(_plot_size_value(run, sizes), "cluster size against value") + \
        f'<p class="caption">{caption}</p></section>'


def _composition_section(run: _Run) -> str:
    head = '<section id="composition"><h2>Composition of the selection</h2>'
    notes = _notes_html(run, "selection", "data")
    if run.selected is None:
        return head + notes + '<p class="note">No selection (scores.jsonl / selection.json) to show.</p></section>'
    if run.categories is None:
        return head + notes + ('<p class="note">The records have no <code>category</code> field; composition by '
                               "category is not shown.</p></section>")
    candidates = run.labels >= 0 if run.labels is not None else np.ones(len(run.categories), dtype=bool)
    categories = np.asarray(run.categories, dtype=object)
    names, input_counts = np.unique(categories[candidates], return_counts=True)
    selected_counts = {str(n): int(c) for n, c in zip(*np.unique(categories[run.selected], return_counts=True))}
    rows = sorted(((str(n), int(c), selected_counts.get(str(n), 0)) for n, c in zip(names, input_counts)),
                  key=lambda r: (-r[1], r[0]))
    n_input, n_selected = int(candidates.sum()), int(run.selected.sum())
    table = "".join(
        f"<tr><td>{_esc(name)}</td><td class='num'>{c:,}</td><td class='num'>{100 * c / max(n_input, 1):.1f}%</td>"
        f"<td class='num'>{s:,}</td><td class='num'>{100 * s / max(n_selected, 1):.1f}%</td></tr>"
        for name, c, s in rows)
    more = "" if len(rows) <= 15 else f" The plot shows the 15 largest of {len(rows)} categories."
    return (head + notes + _img(_plot_composition(rows, n_input, n_selected), "composition by category")
            + f'<p class="caption">Share of each category among the candidate records and in the selection.{more}</p>'
            + "<details><summary>counts</summary><table><tr><th>category</th><th class='num'>input</th>"
            + "<th class='num'>%</th><th class='num'>selected</th><th class='num'>%</th></tr>"
            + f"{table}</table></details></section>")


def _examples(run: _Run, cluster: int) -> str:
    if run.prompts is None or run.labels is None:
        return "<span class='response'>—</span>"
    members = np.flatnonzero(run.labels == cluster)
    proxy = int(run.proxy_index[cluster]) if run.proxy_index is not None else -1
    ordered = ([proxy] if proxy in set(members.tolist()) else []) + [int(i) for i in members if int(i) != proxy]
    items = []
    for i in ordered[:_N_EXAMPLES]:
        tags = "<span class='tag'>proxy</span>" if i == proxy else ""
        if run.junk is not None and run.junk[i]:
            tags += "<span class='tag junk'>junk</span>"
        response = (f"<div class='response'>→ {_esc(_shorten(run.responses[i], 160))}</div>"
                    if run.responses and run.responses[i] else "")
        items.append(f"<li>{tags}<span class='prompt'>{_esc(_shorten(run.prompts[i]))}</span>{response}</li>")
    return f"<ul class='examples'>{''.join(items)}</ul>"


def _cluster_table(run: _Run, clusters: np.ndarray, sizes: np.ndarray | None, per_cluster: np.ndarray | None,
                   junk_share: np.ndarray | None) -> str:
    head = "<tr><th class='num'>cluster</th><th class='num'>value ± s.e.</th><th class='num'>size</th>"
    head += "<th class='num'>selected</th>" + ("<th class='num'>junk</th>" if junk_share is not None else "")
    head += "<th>examples</th></tr>"
    rows = []
    for k in clusters:
        k = int(k)
        value = _value_pm(float(run.values[k]), float(run.stderr[k]))
        row = (f"<tr><td class='num'>{k}</td><td class='num'>{_esc(value)}</td>"
               f"<td class='num'>{_fmt(int(sizes[k])) if sizes is not None else '—'}</td>"
               f"<td class='num'>{_fmt(int(per_cluster[k])) if per_cluster is not None else '—'}</td>")
        if junk_share is not None:
            row += f"<td class='num'>{100 * junk_share[k]:.0f}%</td>"
        rows.append(row + f"<td>{_examples(run, k)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _tables_section(run: _Run) -> str:
    head = '<section id="clusters"><h2>Top and bottom clusters</h2>'
    if run.values is None:
        return head + '<p class="note">No cluster values.</p></section>'
    notes = _notes_html(run, "data") if run.prompts is None else ""
    k = run.values.shape[0]
    order = np.argsort(-run.values, kind="stable")
    n_top = min(_N_TABLE, max(1, (k + 1) // 2))
    top, bottom = order[:n_top], order[::-1][: min(_N_TABLE, k - n_top)]
    sizes, per_cluster = run.cluster_sizes(), run.selected_per_cluster()
    junk_share = _junk_share(run) if run.junk is not None and run.labels is not None else None
    body = f"<h3>Highest value</h3>{_cluster_table(run, top, sizes, per_cluster, junk_share)}"
    if bottom.size:
        body += f"<h3>Lowest value</h3>{_cluster_table(run, bottom, sizes, per_cluster, junk_share)}"
    caption = ("Examples: the cluster's proxy (the record nearest its centroid, whose value was estimated) "
               "first, then other members; prompt, then → response.")
    return head + notes + body + f'<p class="caption">{caption}</p></section>'


def _render(run: _Run) -> str:
    title = f"SHED report · {run.run_dir.name}"
    parts = []
    for name, section in (("configuration", _header), ("summary", _cards), ("cluster values", _values_section),
                          ("convergence", _convergence_section), ("cluster sizes", _size_section),
                          ("composition", _composition_section), ("cluster tables", _tables_section)):
        try:
            parts.append(section(run))
        except Exception as exc:  # one malformed input must not cost the rest of the report
            parts.append(f'<section><h2>{_esc(name.capitalize())}</h2><p class="note">This section could not be '
                         f"drawn ({_esc(type(exc).__name__)}: {_esc(exc)}).</p></section>")
    subtitle = f"Run directory {run.run_dir.resolve()}"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_esc(title)}</h1><p class='sub'>{_esc(subtitle)}</p>{''.join(parts)}"
            "<p class='caption'>Generated by shed_jax.report (SHED: He et al., NeurIPS 2024).</p>"
            "</main></body></html>\n")
