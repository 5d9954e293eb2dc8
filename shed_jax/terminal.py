"""Commands that answer in the terminal: ``shed show RUN`` (the best and worst clusters of a run) and
``shed proxies`` (the registered proxies and their options).

Both read only what is already there (the run directory's artifacts; the proxies' configuration classes) and
import no JAX for it: ``shed proxies`` imports the proxy modules (and with them JAX) only to read their option
declarations.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from pathlib import Path

import click

from shed_jax.cli_support import _call, _Opts

__all__ = ["proxies_command", "show_command", "show_lines", "proxy_options"]


def _common(function):
    function = click.option("-v", "--verbose", count=True, help="More log output (-v: debug, with tracebacks).")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="No log lines on stderr.")(function)
    function = click.option("--json", "as_json", is_flag=True,
                            help="Print a machine-readable JSON summary on stdout.")(function)
    return function


# ------------------------------------------------------------------------------------------------- shed show
def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def _number(value: float) -> str:
    return f"{value:+.4g}" if value == value else "?"


def show_data(run_dir: Path, top: int) -> dict:
    """What ``shed show`` prints, as a JSON-compatible dict."""
    import numpy as np

    from shed_jax.report import require_run_dir
    from shed_jax.report._load import load_run
    from shed_jax.report._verdict import verdict

    require_run_dir(run_dir, "shed show")
    run = load_run(run_dir)
    if run.values is None:
        from shed_jax.errors import PipelineError

        if run.notes.get("stale"):  # values.json is there but older than the clusters
            raise PipelineError(run.notes["stale"][0], path=run_dir / "values.json")
        raise PipelineError("no values.json (or it is unreadable): run `shed value` (or `shed refine`) into this "
                            "directory first", path=run_dir / "values.json")
    found = verdict(run.values_meta, run.values, run.stderr)
    sizes = run.cluster_sizes()
    chosen = run.selected_per_cluster()
    order = np.argsort(-run.values, kind="stable")
    k = int(order.size)
    n = min(int(top), k)

    def row(cluster: int, rank: int) -> dict:
        examples = (run.examples[cluster] if run.examples is not None and cluster < len(run.examples) else [])
        example = examples[0] if examples else None
        se = float(run.stderr[cluster])
        return {"rank": rank, "cluster": cluster, "value": float(run.values[cluster]),
                "stderr": se if se == se else None,
                "interval": [float(run.values[cluster] - 2 * se), float(run.values[cluster] + 2 * se)] if se == se
                else None,
                "size": int(sizes[cluster]) if sizes is not None else None,
                "selected": int(chosen[cluster]) if chosen is not None else None,
                "example": ({"prompt": example.get("prompt", ""), "response": example.get("response", "")}
                            if example else None)}

    top_rows = [row(int(c), i + 1) for i, c in enumerate(order[:n])]
    bottom_start = max(n, k - n)
    bottom_rows = [row(int(order[i]), i + 1) for i in range(bottom_start, k)]
    return {"run_dir": str(run_dir), "n_clusters": k, "n_permutations": found.n_permutations,
            "proxy": (run.values_meta.get("utility") or {}).get("proxy") or (run.config or {}).get("proxy"),
            "u_full": run.values_meta.get("u_full"), "u_empty": run.values_meta.get("u_empty"),
            "utility_moves": found.moves, "delta": found.delta, "delta_half_width": found.half_width,
            "headline": found.headline, "delta_text": found.delta_text, "significance": found.significance_text,
            "top": top_rows, "bottom": bottom_rows}


def show_lines(data: dict, width: int | None = None) -> list[str]:
    """The human-readable lines of ``shed show`` (``width``: the terminal's, default from the environment)."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    lines = []
    if data["headline"]:
        lines += textwrap.wrap("Note: " + data["headline"], width) + [""]
    lines.append(f"{data['run_dir']}: {data['n_clusters']:,} clusters, {data['n_permutations'] or '?'} permutations"
                 f", proxy {data['proxy'] or '?'}")
    if data["delta_text"]:
        lines += textwrap.wrap(data["delta_text"], width)
    lines += textwrap.wrap(data["significance"], width)
    head = f"{'rank':>4}  {'cluster':>7}  {'value ± 2 s.e.':<22}  {'size':>6}  {'sel':>5}  example (prompt → response)"
    room = max(width - len(head) + len("example (prompt → response)"), 20)

    def table(title: str, rows: list[dict]) -> list[str]:
        out = ["", title, head]
        for r in rows:
            interval = (f"{_number(r['value'])} ± {2 * r['stderr']:.2g}" if r["stderr"] is not None
                        else f"{_number(r['value'])} (no s.e.)")
            example = (f"{_short(r['example']['prompt'], max(room * 2 // 3 - 2, 10))} → "
                       f"{_short(r['example']['response'], max(room // 3 - 1, 8))}" if r["example"] else "")
            size = "" if r["size"] is None else f"{r['size']:,}"
            selected = "" if r["selected"] is None else f"{r['selected']:,}"
            out.append(f"{r['rank']:>4}  {r['cluster']:>7}  {interval:<22}  {size:>6}  {selected:>5}  "
                       f"{_short(example, room)}")
        return out

    lines += table(f"Highest value ({len(data['top'])}):", data["top"])
    if data["bottom"]:
        lines += table(f"Lowest value ({len(data['bottom'])}):", data["bottom"])
    lines += ["", "sel: records the run's selection took from the cluster; the full report: report.html "
                  "(`shed report RUN`)"]
    return lines


@click.command("show")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=str))
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1),
              help="Clusters shown at each end (highest and lowest value).")
@_common
def show_command(run_dir, top, as_json, quiet, verbose):
    """Print a run's highest- and lowest-valued clusters: value ± 2 standard errors, size, records selected and
    a short example (the cluster's proxy), after U(full) - U(empty) and whether the values can be told from
    noise.

    \b
    Examples:
      shed show runs/train-20240101-120000
      shed show run/ --top 10 --json
    """
    opts = _Opts(quiet, verbose, as_json)
    directory = Path(run_dir).expanduser().resolve()
    data = _call(opts, lambda: show_data(directory, top), run_dir=None, log_run_dir=directory)
    opts.emit({"command": "show", **data}, show_lines(data))


# --------------------------------------------------------------------------------------------- shed proxies
def proxy_options(name: str) -> list[dict]:
    """The options of proxy ``name``: ``{"name", "type", "default", "help"}`` per field of its configuration."""
    from shed_jax.options import option_spec
    from shed_jax.proxies import registry

    config_class = registry.config_class(name)
    out = []
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        else:
            default = None
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        out.append({"name": field.name, "type": kind, "default": default,
                    "help": option_spec(config_class, field.name).help})
    return out


def proxies_data(only: str | None = None) -> list[dict]:
    from shed_jax.proxies import registry

    names = [only] if only else list(registry.names())
    result = []
    for name in names:
        spec = registry.get(name)
        result.append({"name": spec.name, "summary": spec.summary, "spec_field": spec.spec_field,
                       "options": proxy_options(name)})
    return result


def proxies_lines(data: list[dict], width: int | None = None) -> list[str]:
    width = width or shutil.get_terminal_size((100, 24)).columns
    lines = []
    for proxy in data:
        lines.append(f"{proxy['name']}: {proxy['summary']}".rstrip(": "))
        if proxy["spec_field"]:
            lines.append(f"  --proxy {proxy['name']}:SPEC sets {proxy['spec_field']}")
        for option in proxy["options"]:
            value = option["default"]
            default = ("none" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
            lines.append(f"  {option['name']}={default}")
            lines += textwrap.wrap(option["help"], width, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    lines.append("Set an option with --proxy-option NAME=VALUE (repeatable), e.g. --proxy lm --proxy-option steps=8.")
    return lines


@click.command("proxies")
@click.argument("name", required=False, metavar="[NAME]")
@_common
def proxies_command(name, as_json, quiet, verbose):
    """List the registered proxies (what --proxy takes) and their options (what --proxy-option NAME=VALUE sets),
    with defaults and help.

    \b
    Examples:
      shed proxies
      shed proxies lm
      shed proxies --json
    """
    opts = _Opts(quiet, verbose, as_json)
    data = _call(opts, lambda: proxies_data(name))
    opts.emit({"command": "proxies", "proxies": data}, proxies_lines(data))
