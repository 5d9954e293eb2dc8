"""The ``shed`` command line: parse options, build a :class:`shed_jax.pipeline.RefineConfig`, call one
pipeline function, report.

Every command writes progress and log lines to stderr (silenced by ``-q``) and a summary to stdout
(``--json``: one JSON object, nothing else on stdout). Bad input (unreadable data, an impossible budget,
unknown options...) ends with a one-line ``Error: ...`` on stderr and exit status 2, without a traceback
(``-v`` adds it) and without a partial output file. An interrupted command exits with status 130 and says
how to resume.

This module imports only :mod:`click` at import time so that ``shed --help`` answers at once; the
pipeline (JAX, and torch for the sentence encoder) is imported when a command runs.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

import click

__all__ = ["main", "cli"]

_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_SAMPLERS = ("qocs", "qwcs", "random")
_PROXIES = ("embedding",)


class UserError(click.ClickException):
    """A problem with the user's input: one line on stderr, exit status 2."""

    exit_code = 2


# --------------------------------------------------------------------------------------------------
# shared plumbing
# --------------------------------------------------------------------------------------------------


class _ClickHandler(logging.Handler):
    """Logging handler writing through click to the *current* stderr (works under CliRunner)."""

    def emit(self, record):
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(verbosity: int) -> None:
    """-q: warnings only; default: info; -v: debug, on the ``shed_jax`` logger, for this command only.

    The previous handlers/level/propagation are restored when the click context closes, so that running
    the CLI in-process (tests, notebooks) leaves logging as it was.
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger("shed_jax")
    saved = (root.level, root.propagate)
    handler = _ClickHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else "%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False

    def restore():
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(restore)


class _Opts:
    """Options common to every command (verbosity, --json)."""

    def __init__(self, quiet: bool, verbose: int, as_json: bool):
        self.verbosity = -1 if quiet else int(verbose)
        self.as_json = as_json
        _setup_logging(self.verbosity)

    @property
    def progress(self) -> bool:
        return self.verbosity >= 0

    def log(self, message: str) -> None:
        if self.verbosity >= 0:
            click.echo(message, err=True)

    def emit(self, summary: dict, lines: list[str]) -> None:
        """The command's result: JSON (with --json) or human-readable lines, on stdout."""
        if self.as_json:
            click.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=_json_default))
        else:
            for line in lines:
                click.echo(line)


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _call(opts: _Opts, function, *, resume_hint: str | None = None):
    """Run ``function()``; turn user errors into :class:`UserError` and Ctrl-C into exit status 130."""
    try:
        return function()
    except ValueError as exc:  # DataError, PipelineError, budget / cluster / option checks
        if opts.verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        raise UserError(" ".join(str(exc).split()) or type(exc).__name__) from None
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: file not found" if exc.filename else str(exc)) from None
    except OSError as exc:  # permissions, disk full...: one line, exit status 1
        if opts.verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        raise click.ClickException(" ".join(str(exc).split())) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted" + (f"; resume with: {resume_hint}" if resume_hint else ""), err=True)
        sys.exit(130)


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())


def _parse_pairs(value: str | None, *, option: str) -> tuple[tuple[str, str], ...]:
    """``"a=b,c=d"`` -> ``(("a", "b"), ("c", "d"))``; raises click.BadParameter on bad syntax."""
    if not value:
        return ()
    pairs = []
    for item in value.split(","):
        key, sep, mapped = item.partition("=")
        if not sep or not key.strip() or not mapped.strip():
            raise click.BadParameter(f"expected key=value[,key=value...], got {item!r}", param_hint=option)
        pairs.append((key.strip(), mapped.strip()))
    return tuple(pairs)


def _parse_proxy_options(values: tuple[str, ...]) -> tuple[tuple[str, object], ...]:
    """``("steps=20", "metric=logprob")`` -> ``(("metric", "logprob"), ("steps", 20))`` (JSON values)."""
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected name=value, got {item!r}", param_hint="--proxy-option")
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = raw
        out[key.strip()] = parsed
    return tuple(sorted(out.items()))


def _explicit(ctx: click.Context, name: str) -> bool:
    """True when option ``name`` was given on the command line (not a default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP)


def common_options(function):
    """--json, -q/--quiet, -v/--verbose."""
    function = click.option("-v", "--verbose", count=True, help="More log output (-v: debug, with tracebacks).")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="No progress bars or log lines on stderr.")(function)
    function = click.option("--json", "as_json", is_flag=True,
                            help="Print a machine-readable JSON summary on stdout (logs stay on stderr).")(function)
    return function


def seed_option(function):
    return click.option("--seed", type=int, default=0, show_default=True,
                        help="Seeds k-means, the proxy utility, the Shapley permutations and the sampler.")(function)


def data_options(function):
    """Options of reading and embedding the instruction data."""
    for decorator in reversed([
        click.option("--format", "data_format", default="auto", show_default=True,
                     type=click.Choice(["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"]),
                     help="Record format of DATA (auto: detected from the keys)."),
        click.option("--field-map", default=None, metavar="NAME=KEY,...",
                     help="Map canonical field names to the keys in DATA, e.g. instruction=question,output=answer."),
        click.option("--duplicates", default="drop", show_default=True, type=click.Choice(["drop", "keep", "error"]),
                     help="Exact duplicate records: drop (never clustered or selected), keep, or error."),
        click.option("--text", default="all", show_default=True, metavar="all|prompt|response|KEY,...",
                     help="What to embed for clustering: prompt + response, one side, or a comma list of record keys."),
        click.option("--model", default=_DEFAULT_MODEL, show_default=True,
                     help="Sentence-transformers model (hub name or local path; the default ships offline)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Embedding batch size."),
    ]):
        function = decorator(function)
    return function


def value_options(function):
    for decorator in reversed([
        click.option("--valid", default=None, metavar="VALID",
                     help="Validation set: multiple-choice ({question, choices, answer}) or instruction records."),
        click.option("--valid-format", default="auto", show_default=True,
                     help="Format of VALID: auto, multiple_choice, or an instruction format."),
        click.option("--proxy", default="embedding", show_default=True, type=click.Choice(_PROXIES),
                     help="Utility that values a coalition of proxies (embedding: a scorer fitted in "
                          "sentence-embedding space, CPU-friendly)."),
        click.option("--proxy-option", multiple=True, metavar="NAME=VALUE",
                     help="Override a field of the proxy's configuration (repeatable), e.g. steps=20, metric=logprob."),
        click.option("--proxies-per-cluster", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Members of each cluster valued as Shapley players (those nearest its centroid); a "
                          "cluster's value is their mean. 1 is SHED's single proxy; more cost proportionally more "
                          "evaluations but see clusters that mix good and bad examples."),
        click.option("--permutations", type=click.IntRange(min=1), default=50, show_default=True,
                     help="Monte Carlo permutations (each costs about K / removal-step utility evaluations)."),
        click.option("--removal-step", type=click.IntRange(min=1), default=None,
                     help="Proxies removed per step along a permutation [default: max(1, P // 32) for P = K x "
                          "proxies-per-cluster players, i.e. at most ~63 evaluations per permutation]."),
        click.option("--shapley-batch-size", type=click.IntRange(min=1), default=None,
                     help="Coalitions per utility call [default: the utility's preferred size]."),
    ]):
        function = decorator(function)
    return function


def budget_options(function):
    for decorator in reversed([
        click.option("--ratio", type=float, default=None, help="Budget as a fraction of the candidate examples, in (0, 1]."),
        click.option("--size", type=int, default=None, help="Budget as a number of examples."),
        click.option("--sampler", default="qocs", show_default=True, type=click.Choice(_SAMPLERS),
                     help="qocs: best clusters whole; qwcs: clusters drawn with weight exp(beta * z-scored value); "
                          "random: uniform baseline."),
        click.option("--beta", type=float, default=1.0, show_default=True,
                     help="QWCS inverse temperature on z-scored cluster values (0 = uniform over clusters)."),
    ]):
        function = decorator(function)
    return function


def _check_budget_flags(ratio, size):
    if ratio is not None and size is not None:
        raise UserError("give either --ratio or --size, not both")
    if ratio is None and size is None:
        raise UserError("give a budget: --ratio R (fraction of the examples) or --size N")


# --------------------------------------------------------------------------------------------------
# the command group
# --------------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="shed_jax", prog_name="shed", message="%(prog)s %(version)s")
def cli():
    """SHED: Shapley-based refinement of instruction-tuning data, in JAX.

    Clusters the data, values each cluster's proxy example with Monte Carlo Shapley values of a cheap
    utility measured on a validation set, and keeps a budget of examples from the best clusters.

    \b
    Quick start:
      shed demo                                   # generated data with known junk
      shed refine train.jsonl --valid mmlu_dev.jsonl --ratio 0.1 -o refined.jsonl
      shed refine --resume --run-dir runs/train-20240101-120000

    \b
    Step by step (same run directory):
      shed cluster train.jsonl --clusters 64 --run-dir run/
      shed value --run-dir run/ --valid mmlu_dev.jsonl --permutations 100
      shed select train.jsonl --run-dir run/ --ratio 0.1 -o refined.jsonl
      shed report run/

    A run directory holds config.json, the stage outputs and report.html; finished stages are
    skipped when their inputs did not change. Default: $SHED_HOME/runs/<data>-<time> (SHED_HOME
    defaults to the current directory).
    """


def main(argv=None):
    """Entry point of the ``shed`` console script."""
    return cli.main(args=argv, prog_name="shed")


# --------------------------------------------------------------------------------------------------
# embed
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("data", metavar="DATA")
@data_options
@click.option("--run-dir", default=None, help="Run directory [default: $SHED_HOME/runs/<data>-<time>].")
@seed_option
@common_options
def embed(data, data_format, field_map, duplicates, text, model, batch_size, run_dir, seed, as_json, quiet, verbose):
    """Embed every record of DATA (cached in RUN_DIR/cache).

    \b
    Examples:
      shed embed train.jsonl --run-dir run/
      shed embed chats.json --format sharegpt --text prompt --run-dir run/
      shed embed qa.jsonl --field-map instruction=question,output=answer --run-dir run/
    """
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import pipeline

    def work():
        config = pipeline.RefineConfig(
            data=_abs(data), run_dir=_abs(run_dir), format=data_format,
            field_map=_parse_pairs(field_map, option="--field-map"), duplicates=duplicates, text=text,
            model=model, batch_size=batch_size, seed=seed)
        config = config.replace(run_dir=config.run_dir or str(pipeline.default_run_dir(config.data)))
        return config, pipeline.run_embed(config, progress=opts.progress, log=opts.log)

    config, result = _call(opts, work)
    summary = {"command": "embed", "run_dir": config.run_dir, "cache_dir": str(Path(config.run_dir) / "cache"),
               **result.summary()}
    opts.emit(summary, [f"embedded {summary['n_examples']} records (dim {summary['dim']})"
                        f"{' [cached]' if result.skipped else ''} -> {summary['cache_dir']}"])


# --------------------------------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("data", metavar="DATA")
@click.option("--clusters", "n_clusters", type=click.IntRange(min=1), default=None,
              help="Number of clusters K [default: clip(N // 20, 2, 64)].")
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True, help="k-means iterations.")
@data_options
@click.option("--run-dir", default=None, help="Run directory [default: $SHED_HOME/runs/<data>-<time>].")
@seed_option
@common_options
def cluster(data, n_clusters, max_iter, data_format, field_map, duplicates, text, model, batch_size, run_dir, seed,
            as_json, quiet, verbose):
    """Embed DATA (cached) and cluster it with k-means; writes RUN_DIR/clusters.npz.

    Each cluster's proxy is its real example nearest to the centroid. Dropped duplicates get label -1.

    \b
    Examples:
      shed cluster train.jsonl --clusters 64 --run-dir run/
      shed cluster train.jsonl --clusters 300 --text prompt --run-dir run/ --json
    """
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import pipeline

    def work():
        config = pipeline.RefineConfig(
            data=_abs(data), run_dir=_abs(run_dir), format=data_format,
            field_map=_parse_pairs(field_map, option="--field-map"), duplicates=duplicates, text=text,
            model=model, batch_size=batch_size, n_clusters=n_clusters, kmeans_max_iter=max_iter, seed=seed)
        config = config.replace(run_dir=config.run_dir or str(pipeline.default_run_dir(config.data)))
        return config, pipeline.run_cluster(config, progress=opts.progress, log=opts.log)

    config, result = _call(opts, work)
    summary = {"command": "cluster", "run_dir": config.run_dir,
               "clusters": str(Path(config.run_dir) / "clusters.npz"), **result.summary()}
    opts.emit(summary, [f"{summary['n_clusters']} clusters over {summary['n_candidates']} records "
                        f"(sizes {summary['cluster_size_min']}..{summary['cluster_size_max']})"
                        f"{' [cached]' if result.skipped else ''} -> {summary['clusters']}"])


# --------------------------------------------------------------------------------------------------
# value
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--run-dir", required=True, help="Run directory written by `shed cluster` (or `shed refine`).")
@value_options
@click.option("--resume", is_flag=True, help="Continue an interrupted valuation from RUN_DIR/shapley_ckpt.")
@click.option("--seed", type=int, default=None, help="Override the run's seed (re-clusters if it changes).")
@common_options
@click.pass_context
def value(ctx, run_dir, valid, valid_format, proxy, proxy_option, proxies_per_cluster, permutations, removal_step,
          shapley_batch_size, resume, seed, as_json, quiet, verbose):
    """Monte Carlo Shapley values of the cluster proxies; writes RUN_DIR/values.json.

    Reads the data and clustering options from RUN_DIR/config.json; options given here override them.
    Each permutation costs about K / removal-step utility evaluations; values.json holds per-cluster
    values and standard errors, convergence.npz their history. The estimator state is checkpointed in
    RUN_DIR/shapley_ckpt, so an interrupted run continues with --resume.

    \b
    Examples:
      shed value --run-dir run/ --valid mmlu_dev.jsonl
      shed value --run-dir run/ --valid mmlu_dev.jsonl --permutations 200 --removal-step 4
      shed value --run-dir run/ --resume
    """
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import pipeline

    run_dir = _abs(run_dir)

    def work():
        base = pipeline.load_config(run_dir)
        changes = {"run_dir": run_dir}
        mapping = {"valid": ("valid", _abs(valid)), "valid_format": ("valid_format", valid_format),
                   "proxy": ("proxy", proxy), "permutations": ("n_permutations", permutations),
                   "proxies_per_cluster": ("proxies_per_cluster", proxies_per_cluster),
                   "removal_step": ("removal_step", removal_step),
                   "shapley_batch_size": ("shapley_batch_size", shapley_batch_size), "seed": ("seed", seed)}
        for name, (field_name, field_value) in mapping.items():
            if _explicit(ctx, name):
                changes[field_name] = field_value
        if proxy_option:  # merged into the stored options
            changes["proxy_options"] = {**dict(base.proxy_options), **dict(_parse_proxy_options(proxy_option))}
        config = base.replace(**changes)
        if not config.valid:
            raise pipeline.PipelineError("no validation set: give --valid VALID")
        return config, pipeline.run_value(config, progress=opts.progress, log=opts.log, resume=resume)

    config, result = _call(opts, work, resume_hint=f"shed value --run-dir {run_dir} --resume")
    summary = {"command": "value", "run_dir": run_dir, "values": str(Path(run_dir) / "values.json"),
               **result.summary()}
    opts.emit(summary, [
        f"Shapley values of {summary['n_clusters']} clusters from {summary['n_permutations']} permutations "
        f"({summary['n_evaluations']} evaluations){' [cached]' if result.skipped else ''} -> {summary['values']}",
        f"best clusters: {summary['top_clusters']}  worst: {summary['bottom_clusters']}"])


# --------------------------------------------------------------------------------------------------
# select
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("data", metavar="DATA")
@click.option("--values", "values_path", default=None, metavar="VALUES.json",
              help="Values file with \"cluster_values\" [default: RUN_DIR/values.json].")
@click.option("--run-dir", default=None,
              help="Run directory with clusters.npz [default: the directory of --values].")
@click.option("-o", "--output", required=True, metavar="OUT.jsonl", help="Where to write the selected records.")
@budget_options
@seed_option
@common_options
def select(data, values_path, run_dir, output, ratio, size, sampler, beta, seed, as_json, quiet, verbose):
    """Select a budget of records of DATA from cluster values and write them to OUT.jsonl.

    The records are written exactly as they are in DATA; OUT.scores.jsonl holds each one's cluster,
    value and standard error. RUN_DIR/selection.json and RUN_DIR/scores.jsonl are (re)written.

    \b
    Examples:
      shed select train.jsonl --run-dir run/ --ratio 0.1 -o refined.jsonl
      shed select train.jsonl --values run/values.json --size 1000 --sampler qwcs --beta 2 -o refined.jsonl
    """
    opts = _Opts(quiet, verbose, as_json)
    if values_path is None and run_dir is None:
        raise UserError("give --values VALUES.json or --run-dir DIR")
    _check_budget_flags(ratio, size)
    from shed_jax import pipeline

    values_file = _abs(values_path) if values_path else str(Path(_abs(run_dir)) / "values.json")
    directory = _abs(run_dir) if run_dir else str(Path(values_file).parent)

    def work():
        config = pipeline.RefineConfig(data=_abs(data), run_dir=directory, sampler=sampler, beta=beta, ratio=ratio,
                                       size=size, seed=seed, output=_abs(output))
        try:
            stored = pipeline.load_config(directory)
            config = config.replace(format=stored.format, field_map=stored.field_map, duplicates=stored.duplicates)
        except ValueError:
            pass  # a bare directory with clusters.npz: read DATA with the defaults
        return config, pipeline.run_select(config, progress=opts.progress, log=opts.log, values_path=values_file,
                                           output=_abs(output))

    config, result = _call(opts, work)
    summary = {"command": "select", "run_dir": directory, "output": config.output, **result.summary()}
    opts.emit(summary, [f"selected {result.budget} of {result.n_candidates} records with {result.sampler} "
                        f"-> {config.output}"])


# --------------------------------------------------------------------------------------------------
# refine
# --------------------------------------------------------------------------------------------------


_REFINE_FIELDS = {
    # CLI parameter -> RefineConfig field
    "output": "output", "valid": "valid", "valid_format": "valid_format", "data_format": "format",
    "field_map": "field_map", "duplicates": "duplicates", "text": "text", "model": "model",
    "batch_size": "batch_size", "n_clusters": "n_clusters", "max_iter": "kmeans_max_iter", "proxy": "proxy",
    "proxy_option": "proxy_options", "permutations": "n_permutations", "removal_step": "removal_step",
    "proxies_per_cluster": "proxies_per_cluster",
    "shapley_batch_size": "shapley_batch_size", "sampler": "sampler", "beta": "beta", "ratio": "ratio",
    "size": "size", "seed": "seed",
}


@cli.command()
@click.argument("data", metavar="[DATA]", required=False)
@click.option("-o", "--output", default=None, metavar="OUT.jsonl", help="Where to write the selected records.")
@value_options
@budget_options
@click.option("--clusters", "n_clusters", type=click.IntRange(min=1), default=None,
              help="Number of clusters K [default: clip(N // 20, 2, 64)].")
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True, help="k-means iterations.")
@data_options
@seed_option
@click.option("--run-dir", default=None, help="Run directory [default: $SHED_HOME/runs/<data>-<time>].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir: options come from its config.json (options given here "
                   "override them), finished stages are loaded and an interrupted valuation continues.")
@common_options
@click.pass_context
def refine(ctx, data, output, valid, valid_format, proxy, proxy_option, proxies_per_cluster, permutations, removal_step,
           shapley_batch_size, ratio, size, sampler, beta, n_clusters, max_iter, data_format, field_map, duplicates,
           text, model, batch_size, seed, run_dir, resume, as_json, quiet, verbose):
    """The whole pipeline: embed -> cluster -> value -> select -> report.

    Writes the selected records of DATA, exactly as they are in DATA, to OUT.jsonl (plus
    OUT.scores.jsonl), and the run directory: config.json, clusters.npz, values.json, scores.jsonl,
    selection.json, summary.json, report.html. OUT.jsonl is written last, so a failed run leaves none.

    \b
    Examples:
      shed refine train.jsonl --valid mmlu_dev.jsonl --ratio 0.1 -o refined.jsonl
      shed refine train.jsonl --valid valid.jsonl --size 5000 --clusters 300 \\
          --sampler qwcs --beta 2 --permutations 100 --run-dir run/ -o refined.jsonl
      shed refine --resume --run-dir run/          # after Ctrl-C, or to finish a killed run
    """
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import pipeline

    if resume and not run_dir:
        raise UserError("--resume needs --run-dir DIR")
    if not resume:
        if not data:
            raise UserError("missing DATA (or use --resume --run-dir DIR)")
        if not output:
            raise UserError("missing -o/--output OUT.jsonl")
        if not valid:
            raise UserError("missing --valid VALID (the validation set the utility is measured on)")
        _check_budget_flags(ratio, size)
    elif ratio is not None and size is not None:
        raise UserError("give either --ratio or --size, not both")

    params = {"output": _abs(output), "valid": _abs(valid), "valid_format": valid_format, "data_format": data_format,
              "duplicates": duplicates, "text": text, "model": model, "batch_size": batch_size,
              "n_clusters": n_clusters, "max_iter": max_iter, "proxy": proxy, "permutations": permutations,
              "proxies_per_cluster": proxies_per_cluster,
              "removal_step": removal_step, "shapley_batch_size": shapley_batch_size, "sampler": sampler,
              "beta": beta, "ratio": ratio, "size": size, "seed": seed}
    run_dir_abs = _abs(run_dir) or str(pipeline.default_run_dir(_abs(data)))

    def work():
        fields = {_REFINE_FIELDS[k]: v for k, v in params.items()}
        fields["field_map"] = _parse_pairs(field_map, option="--field-map")
        fields["proxy_options"] = _parse_proxy_options(proxy_option)
        if resume:
            base = pipeline.load_config(run_dir_abs)
            changes = {_REFINE_FIELDS[k]: fields[_REFINE_FIELDS[k]] for k in _REFINE_FIELDS
                       if _explicit(ctx, k)}
            if "proxy_options" in changes:  # merged into the stored options
                changes["proxy_options"] = {**dict(base.proxy_options), **dict(changes["proxy_options"])}
            if data:
                changes["data"] = _abs(data)
            if "ratio" in changes:
                changes.setdefault("size", None)
            if "size" in changes:
                changes.setdefault("ratio", None)
            config = base.replace(run_dir=run_dir_abs, **changes)
            if not config.output:
                raise pipeline.PipelineError("the run has no output file; give -o OUT.jsonl")
            if not config.valid:
                raise pipeline.PipelineError("the run has no validation set; give --valid VALID")
        else:
            config = pipeline.RefineConfig(data=_abs(data), run_dir=run_dir_abs, **fields)
        return pipeline.refine(config, progress=opts.progress, log=opts.log, resume=resume)

    result = _call(opts, work, resume_hint=f"shed refine --resume --run-dir {run_dir_abs}")
    summary = dict(result.summary)
    summary["command"] = "refine"
    s = result.summary
    opts.emit(summary, [
        f"selected {s['budget']} of {s['n_candidates']} records ({s['sampler']}, {s['n_clusters']} clusters) "
        f"-> {result.output}",
        f"run directory: {result.run_dir}" + (f"   report: {result.report}" if result.report else ""),
        "stages: " + ", ".join(f"{k} {v}" for k, v in result.stages.items())])


# --------------------------------------------------------------------------------------------------
# demo and report
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--run-dir", default=None, help="Run directory [default: $SHED_HOME/runs/demo-<size>-<time>].")
@click.option("--size", "demo_size", type=click.Choice(["small", "default"]), default="small", show_default=True,
              help="small: 600 records, 16 clusters (~2 CPU-minutes); default: 3000 records, 48 clusters.")
@click.option("--ratio", type=float, default=0.2, show_default=True, help="Budget as a fraction of the data.")
@click.option("--permutations", type=click.IntRange(min=1), default=None,
              help="Monte Carlo permutations [default: as in `shed refine`].")
@click.option("--model", default=_DEFAULT_MODEL, show_default=True, help="Sentence-transformers model.")
@seed_option
@common_options
def demo(run_dir, demo_size, ratio, permutations, model, seed, as_json, quiet, verbose):
    """Refine a generated data set with known junk and show how much junk each selection keeps.

    The data (RUN_DIR/demo_data) mixes useful instruction clusters with junk clusters; the validation
    set only rewards the useful ones. Prints the junk rate of the input, of the QOCS and QWCS selections
    and of a random selection of the same size.

    \b
    Examples:
      shed demo
      shed demo --size default --run-dir demo-run/ --json
    """
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import pipeline

    def work():
        return pipeline.demo(_abs(run_dir), size=demo_size, seed=seed, ratio=ratio, n_permutations=permutations,
                             progress=opts.progress, log=opts.log, model=model)

    result = _call(opts, work, resume_hint="shed demo --run-dir <same dir> (finished stages are skipped)")
    summary = {"command": "demo", **result.summary()}
    rates = result.junk_rate
    opts.emit(summary, [
        f"junk rate in the input:          {result.junk_rate_input:6.1%}",
        f"junk rate, QOCS selection:       {rates['qocs']:6.1%}   ({result.budget} records)",
        f"junk rate, QWCS selection:       {rates['qwcs']:6.1%}",
        f"junk rate, random selection:     {rates['random']:6.1%}",
        f"run directory: {result.run_dir}"])


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR")
@common_options
def report(run_dir, as_json, quiet, verbose):
    """(Re)write RUN_DIR/report.html from the files in a run directory.

    \b
    Example:
      shed report runs/train-20240101-120000
    """
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import pipeline

    directory = Path(_abs(run_dir))

    def work():
        if not directory.is_dir():
            raise pipeline.PipelineError(f"{directory}: not a directory")
        path = pipeline.write_report(directory, log=opts.log)
        if path is None:
            raise pipeline.PipelineError("the report module (shed_jax.report) is not available")
        return path

    path = _call(opts, work)
    opts.emit({"command": "report", "run_dir": str(directory), "report": str(path)}, [f"wrote {path}"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
