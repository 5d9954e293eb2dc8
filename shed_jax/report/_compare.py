"""The report's "Does the selection help?" section: ``RUN_DIR/compare.json`` (``shed compare``) drawn as bars with
95% intervals per test set and metric, the recipe, and the paired differences against ``random`` and ``full``.

Absent ``compare.json``: no section. Reads only :class:`shed_jax.compare.artifact.Comparison`.
"""
from __future__ import annotations

import html

import numpy as np

__all__ = ["compare_section"]

_COLOURS = {"shed": "#2563eb", "random": "#9ca3af", "full": "#111827", "untuned": "#e5e7eb"}


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _value(x: float, metric: str) -> str:
    return f"{x:.4f}" if metric == "loss" else f"{100 * x:.1f}%"


def _diff(d: dict | None, metric: str) -> str:
    if not d:
        return "—"
    scale, unit = (1.0, "") if metric == "loss" else (100.0, " pt")
    lo, hi = d["ci95"]
    sign = ""
    if lo > 0 or hi < 0:
        sign = " *"
    return f"{scale * d['diff']:+.3f}{unit} [{scale * lo:+.3f}, {scale * hi:+.3f}]{sign}"


def _plot(evals: list[dict]) -> str:
    from shed_jax.report._plots import _figure, _png_base64

    n = len(evals)
    fig, axes = _figure(min(4.0 * n, 12.0), 3.2, ncols=n)
    for ax, ev in zip(axes, evals):
        rows = ev["rows"]
        names = [r["train"] for r in rows]
        means = np.array([r["mean"] for r in rows])
        lo = np.array([r["ci95"][0] for r in rows])
        hi = np.array([r["ci95"][1] for r in rows])
        scale = 1.0 if ev["metric"] == "loss" else 100.0
        x = np.arange(len(rows))
        ax.bar(x, scale * means, color=[_COLOURS.get(name, "#60a5fa") for name in names], edgecolor="#374151",
               linewidth=0.6)
        ax.errorbar(x, scale * means, yerr=[scale * (means - lo), scale * (hi - means)], fmt="none", ecolor="#111827",
                    capsize=4, linewidth=1.2)
        ax.set_xticks(x, names, fontsize=9)
        span = scale * (hi.max() - lo.min())
        ax.set_ylim(scale * lo.min() - 0.3 * span - 1e-9, scale * hi.max() + 0.3 * span + 1e-9)
        unit = "loss" if ev["metric"] == "loss" else "accuracy (%)"
        better = "higher" if ev["higher_is_better"] else "lower"
        ax.set_title(f"{ev['name']}: {ev['metric']}\n({better} is better, {ev['n_items']} items)", fontsize=9)
        ax.set_ylabel(unit, fontsize=9)
    return _png_base64(fig)


def compare_section(run) -> str:
    """The section's HTML for a :class:`~shed_jax.report._load.ReportData` (reads ``run.run_dir``)."""
    from shed_jax.compare.artifact import Comparison
    from shed_jax.errors import DataError

    head = '<section id="compare"><h2>Does the selection help?</h2>'
    try:
        result = Comparison.load(run.run_dir)
    except FileNotFoundError:
        return ""  # no `shed compare` yet: no section (a run without one is not missing anything)
    except DataError as exc:
        return head + f'<p class="note">compare.json could not be read ({_esc(exc)}).</p></section>'
    recipe = result.recipe
    steps = recipe.get("steps_per_set") or {}
    recipe_text = (f"{_esc(recipe.get('model'))}; LoRA rank {_esc(recipe.get('rank'))}, alpha {_esc(recipe.get('alpha'))}"
                   f", learning rate {_esc(recipe.get('learning_rate'))}, batch {_esc(recipe.get('batch_size'))} x "
                   f"{_esc(recipe.get('max_length'))} tokens, {_esc(recipe.get('seeds'))} seeds per set, steps: "
                   f"{_esc(', '.join(f'{k} {v}' for k, v in steps.items()))} (match: {_esc(recipe.get('match'))})")
    image = _plot(result.evals) if result.evals else ""
    tables = []
    for ev in result.evals:
        metric = ev["metric"]
        overlap = ev.get("overlap") or {}
        note = ""
        if overlap.get("items"):
            note = (f" {overlap['items']} test item(s) also appear in a training set"
                    + (" and were dropped." if overlap.get("excluded") else " (kept)."))
        body = "".join(
            f"<tr><td>{_esc(r['train'])}</td><td>{int(r['records']):,}</td>"
            f"<td>{_value(r['mean'], metric)} [{_value(r['ci95'][0], metric)}, {_value(r['ci95'][1], metric)}]</td>"
            f"<td>{_diff(r.get('vs_random'), metric)}</td><td>{_diff(r.get('vs_full'), metric)}</td></tr>"
            for r in ev["rows"])
        tables.append(f"<h3>{_esc(ev['name'])}: {_esc(metric)} ({'higher' if ev['higher_is_better'] else 'lower'} "
                      f"is better, {int(ev['n_items'])} items)</h3><p class='caption'>{_esc(note)}</p>"
                      "<table><tr><th>train</th><th>records</th><th>mean [95% CI]</th><th>vs random [95% CI]</th>"
                      f"<th>vs full [95% CI]</th></tr>{body}</table>")
    caption = ("Bars: mean over seeds; whiskers: 95% bootstrap interval over test items and seeds. Differences are "
               "paired (same items, same seeds); * marks an interval that excludes 0.")
    img = f'<img alt="comparison bars" src="data:image/png;base64,{image}">' if image else ""
    return (head + f'<p class="caption">Recipe: {recipe_text}.</p>{img}<p class="caption">{caption}</p>'
            + "".join(tables) + "</section>")
