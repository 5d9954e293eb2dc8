"""The report's plots: matplotlib ``Figure`` objects (no pyplot, no global backend) as base64 PNG."""
from __future__ import annotations

import base64
import io

import numpy as np

from shed_jax.report._load import ReportData

_SELECTED = "#2563eb"
_UNSELECTED = "#9ca3af"
_JUNK = "#dc2626"
_TOP = ("#1d4ed8", "#3b82f6", "#93c5fd")
_BOTTOM = ("#b91c1c", "#ef4444", "#fca5a5")
_MAX_ERRORBARS = 120  # above this many clusters the values plot is a ranked line with an error band

# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "Source Han Sans", "PingFang SC",
              "Hiragino Sans GB", "Microsoft YaHei", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei")


def font_context():
    """A ``matplotlib.rc_context`` whose ``font.family`` falls back to an installed CJK-capable font (category
    names and example text may be Chinese, Japanese or Korean); a plain context when none is installed."""
    import matplotlib
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallback = [name for name in _CJK_FONTS if name in installed]
    if not fallback:
        return matplotlib.rc_context()
    return matplotlib.rc_context({"font.family": ["sans-serif"],
                                  "font.sans-serif": [*matplotlib.rcParams["font.sans-serif"][:1], *fallback,
                                                      *matplotlib.rcParams["font.sans-serif"][1:]]})


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


def _plot_values(run: ReportData) -> str:
    values, stderr = run.values, run.stderr
    order = np.argsort(-values, kind="stable")
    ranks = np.arange(1, values.shape[0] + 1)
    per_cluster = run.selected_per_cluster()
    chosen = per_cluster[order] > 0 if per_cluster is not None else np.zeros(values.shape[0], dtype=bool)
    fig, (ax,) = _figure(10.5, 3.8)
    if values.shape[0] > _MAX_ERRORBARS:  # hundreds of clusters: a ranked line with an error band
        sorted_values, band = values[order], _two_stderr(stderr[order])
        ax.fill_between(ranks, sorted_values - band, sorted_values + band, color=_UNSELECTED, alpha=0.35,
                        linewidth=0, label="± 2 s.e.")
        ax.plot(ranks, sorted_values, color="#374151", linewidth=1.0, label="value")
        if chosen.any():
            ax.plot(ranks[chosen], sorted_values[chosen], "|", color=_SELECTED, ms=7, label="selected from")
    else:
        for mask, colour, label in ((~chosen, _UNSELECTED, "not selected"), (chosen, _SELECTED, "selected from")):
            if mask.any():
                ax.errorbar(ranks[mask], values[order][mask], yerr=_two_stderr(stderr[order][mask]), fmt="o",
                            ms=4, color=colour, ecolor=colour, elinewidth=1, capsize=2, label=label, alpha=0.9)
    ax.axhline(0.0, color="#374151", linewidth=0.8)
    ax.set_xlabel("cluster rank (highest value first)", fontsize=10)
    ax.set_ylabel("Shapley value (± 2 s.e.)", fontsize=10)
    if per_cluster is not None or values.shape[0] > _MAX_ERRORBARS:
        ax.legend(frameon=False, fontsize=9)
    return _png_base64(fig)


def _plot_convergence(run: ReportData) -> str:
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
        if t[ok].max() > t[ok].min():
            ax_se.set_xscale("log")
            _log_ticks(ax_se.xaxis, t[ok], integer=True)
        ax_se.set_yscale("log")
        _log_ticks(ax_se.yaxis, np.concatenate([mean_se[ok], reference]))
        ax_se.legend(frameon=False, fontsize=8)
    else:
        ax_se.text(0.5, 0.5, "no finite standard errors yet", ha="center", va="center", transform=ax_se.transAxes)
    ax_se.set_xlabel("permutations T", fontsize=10)
    ax_se.set_ylabel("mean standard error", fontsize=10)
    ax_se.set_title("mean standard error over clusters", fontsize=10)
    return _png_base64(fig)


def _log_ticks(axis, data: np.ndarray, *, integer: bool = False) -> None:
    """Enough labelled ticks on a log axis, written plainly: 1, 2, 5 x 10^k over two decades or more; 1, 2, 3, 5
    x 10^k over one to two; about five evenly spaced values over less than a decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    data = np.asarray(data, np.float64)
    data = data[np.isfinite(data) & (data > 0)]
    if data.size == 0:
        return
    low, high = float(data.min()), float(data.max())
    decades = np.log10(high / low) if high > low else 0.0
    if decades >= 2:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    elif decades >= 1:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    else:
        locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10], integer=integer)
        ticks = [v for v in locator.tick_values(low, high) if low * 0.95 <= v <= high * 1.05 and v > 0]
        axis.set_major_locator(FixedLocator(ticks if len(ticks) >= 2 else [low, high]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _plain(v)))
    axis.set_minor_formatter(NullFormatter())


def _plain(value: float) -> str:
    """A tick label without exponent where it stays short: ``0.000075``, ``20``, ``1.5``; else ``1.2e-07``."""
    if value == 0 or not np.isfinite(value):
        return "0" if value == 0 else ""
    if 1e-5 <= abs(value) < 1e6:
        return np.format_float_positional(float(f"{value:.3g}"), trim="-")
    return f"{value:.2g}"


def _plot_size_value(run: ReportData, sizes: np.ndarray) -> str:
    values, stderr = run.values, run.stderr
    per_cluster = run.selected_per_cluster()
    chosen = per_cluster > 0 if per_cluster is not None else np.zeros(values.shape[0], dtype=bool)
    fig, (ax,) = _figure(10.5, 3.8)
    many = values.shape[0] > _MAX_ERRORBARS  # hundreds of clusters: points only (the values plot has the band)
    for mask, colour, label in ((~chosen, _UNSELECTED, "not selected"), (chosen, _SELECTED, "selected from")):
        if mask.any() and many:
            ax.scatter(sizes[mask], values[mask], s=9, color=colour, alpha=0.6, linewidths=0, label=label)
        elif mask.any():
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
    ax.set_ylabel("Shapley value" if many else "Shapley value (± 2 s.e.)", fontsize=10)
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


def _junk_share(run: ReportData) -> np.ndarray:
    k = run.n_clusters
    members = run.labels >= 0
    total = np.bincount(run.labels[members], minlength=k)[:k]
    junk = np.bincount(run.labels[members & run.junk], minlength=k)[:k]
    return np.where(total > 0, junk / np.maximum(total, 1), 0.0)
