"""The report's HTML: sections drawn from a :class:`~shed_jax.report._load.ReportData`."""
from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np

from shed_jax.progress import format_duration
from shed_jax.report import _compare, _mixed, _verdict
from shed_jax.report._load import ReportData
from shed_jax.report._plots import (
    _MAX_ERRORBARS,
    _junk_share,
    _plot_composition,
    _plot_convergence,
    _plot_size_value,
    _plot_values,
)

_N_TABLE = 5          # clusters in each of the top / bottom tables
_N_EXAMPLES = 3       # example records per cluster in those tables
_TEXT_LIMIT = 220     # characters of an example prompt / response shown

# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #111827; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; --bg: #f9fafb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei",
             "Noto Sans CJK JP", "Noto Sans CJK KR", sans-serif; }
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
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.card .k { color: var(--muted); font-size: 12.5px; text-transform: uppercase; letter-spacing: .03em; }
.card .v { font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap;
           overflow: hidden; text-overflow: ellipsis; }
.num, .card .v { white-space: nowrap; }
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
        return _significant(v)
    return str(value)


def _significant(value: float, digits: int = 3) -> str:
    """``value`` with at most ``digits`` significant digits, plainly written (no exponent between 1e-4 and 1e6,
    no trailing zeros).

    >>> _significant(0.00039721), _significant(0.84317), _significant(1234.5), _significant(-2.5e-07), _significant(0.1)
    ('0.000397', '0.843', '1,234', '-2.5e-07', '0.1')
    """
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 and magnitude < 1e6:
        return f"{value:,.0f}"
    if 1e-4 <= magnitude < 1000:
        decimals = max(0, digits - 1 - int(math.floor(math.log10(magnitude))))
        text = f"{value:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:.{digits}g}"


def _value_pm(value: float, stderr: float) -> str:
    """``value ± stderr`` with the value rounded to the stderr's second significant digit."""
    if not math.isfinite(stderr) or stderr <= 0:
        return f"{value:.4g}"
    decimals = max(0, 1 - int(math.floor(math.log10(stderr))))
    return f"{value:.{decimals}f} ± {stderr:.{decimals}f}"


def _shorten(text: str, limit: int = _TEXT_LIMIT) -> str:
    text = "\n".join(line for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _notes_html(run: ReportData, *sections: str) -> str:
    return "".join(f'<p class="note">{_esc(message)}</p>' for s in sections for message in run.notes.get(s, []))


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _setting(run: ReportData, *names: str) -> Any:
    for source in (run.resolved, run.config or {}, run.summary or {}):
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None


def _budget_text(run: ReportData) -> str:
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


def _header(run: ReportData) -> str:
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


def _cards(run: ReportData) -> str:
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
        cards.append(("lowest cluster value", float(run.values.min())))
        cards.append(("highest cluster value", float(run.values.max())))
    if run.junk is not None:
        candidates = run.labels >= 0 if run.labels is not None else np.ones(run.junk.shape[0], dtype=bool)
        cards.append(("junk in input (demo)", f"{100 * run.junk[candidates].mean():.1f}%"))
        if run.selected is not None and run.selected.any():
            cards.append(("junk in selection (demo)", f"{100 * run.junk[run.selected].mean():.1f}%"))
    if summary.get("seconds_total") is not None:
        cards.append(("run time", format_duration(float(summary["seconds_total"]))))
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


def _values_section(run: ReportData) -> str:
    head = '<section id="values"><h2>Cluster values</h2>'
    notes = _notes_html(run, "values", "clusters")
    if run.values is None:
        return head + notes + '<p class="note">No cluster values to plot.</p></section>'
    per_cluster = run.values_meta.get("proxies_per_cluster") or 1
    what = ("each cluster's proxy example" if per_cluster == 1
            else f"each cluster: the mean over its (up to {per_cluster}) proxy examples")
    caption = (f"Monte Carlo Shapley value of {what}, highest first; ± 2 standard errors over permutations. "
               "Blue: clusters the selection drew records from.")
    return (head + notes + _noise_note(run) + _img(_plot_values(run), "cluster values")
            + f'<p class="caption">{caption}</p></section>')


def _noise_note(run: ReportData) -> str:
    """U(full) - U(empty) with its interval, and how many cluster values are distinguishable from zero (stated
    only with enough permutations; see :mod:`shed_jax.report._verdict`)."""
    found = _verdict.verdict(run.values_meta, run.values, run.stderr)
    parts = []
    if found.delta_text:
        parts.append(f'<p class="caption">{_esc(found.delta_text)}.</p>')
    # a warning (note) when most values are within noise; otherwise, or when too few permutations to say, a caption
    klass = "note" if found.significance_stated and found.n_significant * 2 < (found.n_known or 1) else "caption"
    parts.append(f'<p class="{klass}">{_esc(found.significance_text)}</p>')
    return "".join(parts)


def _headline(run: ReportData) -> str:
    """First in the report: outputs that are out of date (a stage ran again after them), then the utility does not
    move (plain words, what to change), when that is so."""
    stale = "".join(f'<p class="note"><strong>Out of date: {_esc(message)}</strong></p>'
                    for message in run.notes.get("stale", []))
    found = _verdict.verdict(run.values_meta, run.values, run.stderr)
    if not found.headline and not stale:
        return ""
    verdict = f'<p class="note"><strong>{_esc(found.headline)}</strong></p>' if found.headline else ""
    return f'<section id="verdict">{stale}{verdict}</section>'


def _convergence_section(run: ReportData) -> str:
    head = '<section id="convergence"><h2>Convergence</h2>'
    notes = _notes_html(run, "convergence")
    if run.convergence is None:
        return head + (notes or '<p class="note">No convergence history.</p>') + "</section>"
    caption = ("Left: running estimates of the three highest- and lowest-valued clusters with ± 2 s.e. bands. "
               "Right: mean standard error over clusters against the number of permutations (dashed: 1/√T).")
    return head + notes + _img(_plot_convergence(run), "convergence of the estimates") + \
        f'<p class="caption">{caption}</p></section>'


def _size_section(run: ReportData) -> str:
    head = '<section id="sizes"><h2>Cluster size and value</h2>'
    sizes = run.cluster_sizes()
    if run.values is None or sizes is None:
        return head + '<p class="note">Needs both values.json and clusters.npz.</p></section>'
    caption = "Each point is a cluster; blue: the selection drew records from it."
    if run.values.shape[0] > _MAX_ERRORBARS:
        caption += " Error bars are left out with this many clusters; the values plot above shows them as a band."
    if run.junk is not None:
        caption += " Red rings: clusters whose records are mostly known junk (generated demo data)."
    return head + _img(_plot_size_value(run, sizes), "cluster size against value") + \
        f'<p class="caption">{caption}</p></section>'


def _composition_section(run: ReportData) -> str:
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


def _examples(run: ReportData, cluster: int) -> str:
    if run.examples is None:
        return "<span class='response'>—</span>"
    proxy = int(run.proxy_index[cluster]) if run.proxy_index is not None else -1
    items = []
    for example in run.examples[cluster][:_N_EXAMPLES]:
        i = int(example.get("index", -1))
        tags = "<span class='tag'>proxy</span>" if i == proxy else ""
        if run.junk is not None and 0 <= i < run.junk.shape[0] and run.junk[i]:
            tags += "<span class='tag junk'>junk</span>"
        response = (f"<div class='response'>→ {_esc(_shorten(example['response'], 160))}</div>"
                    if example.get("response") else "")
        items.append(f"<li>{tags}<span class='prompt'>{_esc(_shorten(example.get('prompt', '')))}</span>{response}</li>")
    return f"<ul class='examples'>{''.join(items)}</ul>"


def _cluster_table(run: ReportData, clusters: np.ndarray, sizes: np.ndarray | None, per_cluster: np.ndarray | None,
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


def _tables_section(run: ReportData) -> str:
    head = '<section id="clusters"><h2>Top and bottom clusters</h2>'
    if run.values is None:
        return head + '<p class="note">No cluster values.</p></section>'
    notes = _notes_html(run, "data") if run.examples is None else ""
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


def _render(run: ReportData) -> str:
    title = f"SHED report · {run.run_dir.name}"
    parts = []
    for name, section in (("verdict", _headline), ("configuration", _header), ("summary", _cards), ("cluster values", _values_section),
                          ("mixed clusters", _mixed.mixed_section),
                          ("convergence", _convergence_section), ("cluster sizes", _size_section),
                          ("composition", _composition_section), ("cluster tables", _tables_section),
                          ("comparison", _compare.compare_section)):  # issue 19
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
