"""The ``shed`` command line: parse options, build a :class:`shed_jax.config.RefineConfig`, call one library
function, report.

Options are generated from the fields of :class:`~shed_jax.config.RefineConfig` (flag, default, help, choices
come from there), so the command line and the library cannot drift apart. Every command writes progress and
log lines to stderr (silenced by ``-q``) and a summary to stdout (``--json``: one JSON object, nothing else
on stdout).

Exit status: 0 success; 2 bad input (:class:`shed_jax.errors.UserError`: one line ``Error: ...`` naming the
file, line, field or option, nothing written); 1 an internal error (a bug: the traceback goes to
``RUN_DIR/logs/errors.log``, or a temporary file, and one line on stderr points to it) or an operating-system
failure such as a full disk; 3 another process of a ``--distributed`` run stopped or failed (one line naming it);
130 interrupted (with how to resume).

This module imports only :mod:`click` and the configuration at import time, so that ``shed --help`` answers at
once; the pipeline (JAX, and torch for the sentence encoder) is imported when a command runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from shed_jax.cli_options import BUDGET_FIELDS, DATA_FIELDS, VALUE_FIELDS, _abs, build_config, config_option, options
from shed_jax.cli_support import OneLineGroup, _call, _Opts, _UsageError, check_resume_restart, restart_option
from shed_jax.config import DemoConfig, check_budget
from shed_jax.errors import UserError
from shed_jax.cli_support import connect, distributed_arguments, distributed_options, emit_other_process

__all__ = ["main", "cli"]


def common_options(function):
    """--json, -q/--quiet, -v/--verbose."""
    function = click.option("-v", "--verbose", count=True, help="More log output (-v: debug, with tracebacks).")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="No progress bars or log lines on stderr.")(function)
    function = click.option("--json", "as_json", is_flag=True,
                            help="Print a machine-readable JSON summary on stdout (logs stay on stderr).")(function)
    return function


def _check_budget_flags(ratio, size, *, required: bool = True):
    """:func:`shed_jax.config.check_budget` before any work (one line, exit 2)."""
    try:
        check_budget(ratio, size, required=required)
    except UserError as exc:
        raise _UsageError(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# the command group
# --------------------------------------------------------------------------------------------------


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
      shed show run/                              # best and worst clusters, in the terminal

    `shed proxies` lists the proxies (--proxy) and their options (--proxy-option NAME=VALUE) with defaults.

    DATA is a JSON/JSON Lines file (.gz too), .parquet, .csv/.tsv, a datasets save_to_disk directory,
    hf:OWNER/NAME (with --split, --revision) or - (JSON Lines on stdin); the selection is written in DATA's
    format unless the extension of -o names another.

    A run directory holds config.json, the stage outputs and report.html; finished stages are
    skipped when their inputs did not change. Default: $SHED_HOME/runs/<data>-<time> (SHED_HOME
    defaults to the current directory).

    Compiled XLA programs are kept under $SHED_CACHE/jax (see `shed cache`; SHED_COMPILE_CACHE=0 turns it off).
    """
    from shed_jax._compile_cache import enable_compilation_cache  # env only: no JAX import here

    enable_compilation_cache()


def main(argv=None):
    """Entry point of the ``shed`` console script."""
    try:
        return cli.main(args=argv, prog_name="shed")
    except SystemExit as exc:
        if exc.code == 130:  # interrupted: no interpreter finalisation under running XLA threads (exit 139)
            from shed_jax.interrupt import exit_now

            exit_now(130)
        raise


DRY_RUN_HELP = ("Check the inputs, print what each stage will do and its estimated time on this machine (from a "
                "short calibration of the encoder, k-means and the utility), and stop. Writes nothing.")


def _dry_run(config, opts, *, need_budget: bool):
    """The plan of a run (:func:`shed_jax.run.estimate.plan_run`): every input check, nothing written."""
    from shed_jax.run.estimate import plan_run
    from shed_jax.run.rundir import user_error_for_output

    if need_budget and config.output:
        user_error_for_output(config.output, data=config.data)
    return plan_run(config, need_budget=need_budget, log=opts.log)


def _emit_plan(opts, command: str, run_dir: str, plan) -> None:
    opts.emit({"command": command, "dry_run": True, "run_dir": run_dir, **plan.to_dict()},
              [f"dry run: nothing was written (run directory {run_dir})", *plan.lines()])


def _refresh_report(run_dir: str, result, opts) -> None:
    """A stage recomputed what report.html shows: rewrite the report (:func:`shed_jax.report.refresh`)."""
    if not getattr(result, "skipped", True):
        from shed_jax import report as _report

        _report.refresh(run_dir, log=opts.log)


def _no_dry_run_distributed(dry_run: bool, distributed):
    if dry_run and distributed is not False:
        raise _UsageError("--dry-run runs in one process; leave out --distributed/--coordinator")
    return distributed


def _run_dir_for(params: dict) -> str:
    from shed_jax.run.rundir import default_run_dir

    return _abs(params.get("run_dir")) or str(default_run_dir(_abs(params["data"])))


# --------------------------------------------------------------------------------------------------
# embed, cluster
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("data", metavar="DATA", type=click.Path(path_type=str))
@options(*DATA_FIELDS, "run_dir")
@config_option("seed", hidden=True, help="Deprecated: embedding uses no randomness; accepted and ignored.")
@restart_option
@common_options
@click.pass_context
def embed(ctx, restart, as_json, quiet, verbose, **params):
    """Embed every record of DATA (into the shared embedding cache; see `shed cache info`).

    \b
    Examples:
      shed embed train.jsonl --run-dir run/
      shed embed chats.json --format sharegpt --text prompt --run-dir run/
      shed embed qa.jsonl --field-map instruction=question,output=answer --run-dir run/
    """
    opts = _Opts(quiet, verbose, as_json)
    run_dir = _run_dir_for(params)

    def work():
        from shed_jax import run

        config = build_config(ctx, params, run_dir=run_dir)
        return run.run_embed(config, progress=opts.progress, log=opts.log, restart=restart)

    result = _call(opts, work, run_dir=run_dir)
    from shed_jax.embed import embedding_cache_dir

    summary = {"command": "embed", "run_dir": run_dir, "cache_dir": str(embedding_cache_dir()), **result.summary()}
    opts.emit(summary, [f"embedded {summary['n_examples']} records (dim {summary['dim']})"
                        f"{' [cached]' if result.skipped else ''} -> {summary['cache_dir']}"])


@cli.command()
@click.argument("data", metavar="DATA", type=click.Path(path_type=str))
@options("n_clusters", "kmeans_max_iter", *DATA_FIELDS, "run_dir", "seed",
         seed={"help": "Seeds k-means++ (the same seed and data give the same clusters)."})
@restart_option
@distributed_options
@common_options
@click.pass_context
def cluster(ctx, restart, as_json, quiet, verbose, **params):
    """Embed DATA (cached) and cluster it with k-means; writes RUN_DIR/clusters.npz.

    Each cluster's proxy is its real example nearest to the centroid. Dropped duplicates get label -1.

    \b
    Examples:
      shed cluster train.jsonl --clusters 64 --run-dir run/
      shed cluster train.jsonl --clusters 300 --text prompt --run-dir run/ --json
    """
    opts = _Opts(quiet, verbose, as_json)
    distributed = distributed_arguments(params)
    if distributed is not False and not params["run_dir"]:
        raise _UsageError("--distributed needs --run-dir DIR (the same directory in every process, on a file system "
                          "they all see)")
    run_dir = _run_dir_for(params)
    where = [0, 1]

    def work():
        where[:] = connect(distributed)
        from shed_jax import run

        return run.run_cluster(build_config(ctx, params, run_dir=run_dir), progress=opts.progress, log=opts.log,
                               restart=restart, distributed=distributed)

    result = _call(opts, work, run_dir=run_dir)
    if where[0] != 0:
        return emit_other_process(opts, "cluster", run_dir, *where)
    _refresh_report(run_dir, result, opts)
    summary = {"command": "cluster", "run_dir": run_dir, "clusters": str(Path(run_dir) / "clusters.npz"),
               **result.summary()}
    opts.emit(summary, [f"{summary['n_clusters']} clusters over {summary['n_candidates']} records "
                        f"(sizes {summary['cluster_size_min']}..{summary['cluster_size_max']})"
                        f"{' [cached]' if result.skipped else ''} -> {summary['clusters']}"])


# --------------------------------------------------------------------------------------------------
# value
# --------------------------------------------------------------------------------------------------


@cli.command()
@options("run_dir", *VALUE_FIELDS, run_dir={"required": True, "help": "Run directory written by `shed cluster` "
                                                                        "(or `shed refine`)."})
@click.option("--resume", is_flag=True, help="Continue the valuation in RUN_DIR/shapley_ckpt, or extend a finished "
                                              "one to a larger --permutations (the same values as a fresh run).")
@restart_option
@config_option("seed", default=None, show_default=False,
               help="Override the run's seed (re-clusters if it changes).")
@click.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)
@distributed_options
@common_options
@click.pass_context
def value(ctx, resume, restart, dry_run, as_json, quiet, verbose, **params):
    """Monte Carlo Shapley values of the cluster proxies; writes RUN_DIR/values.json.

    Reads the data and clustering options from RUN_DIR/config.json; options given here override them.
    Each permutation costs about K / removal-step utility evaluations; values.json holds per-cluster
    values and standard errors, convergence.npz their history. The estimator state is checkpointed in
    RUN_DIR/shapley_ckpt and never discarded without --restart: --resume continues an interrupted valuation or
    extends a finished one to a larger --permutations; any other change is refused (exit 2). Each cluster is valued by its M
    members nearest the centroid (--proxies-per-cluster; auto, the default, picks the largest M in 1, 2, 4,
    8, 16 with K x M within --max-players, prints it and records it in values.json).

    \b
    Examples:
      shed value --run-dir run/ --valid mmlu_dev.jsonl
      shed value --run-dir run/ --valid mmlu_dev.jsonl --proxies-per-cluster 1   # SHED's single proxy
      shed value --run-dir run/ --valid mmlu_dev.jsonl --permutations 200 --removal-step 4
      shed value --run-dir run/ --valid val.jsonl --proxy lm --proxy-option steps=20
      shed value --run-dir run/ --resume
    """
    opts = _Opts(quiet, verbose, as_json)
    check_resume_restart(resume, restart)
    distributed = _no_dry_run_distributed(dry_run, distributed_arguments(params))
    run_dir = _abs(params["run_dir"])
    where = [0, 1]

    def work():
        where[:] = connect(distributed)
        from shed_jax import run
        from shed_jax.errors import PipelineError

        config = build_config(ctx, params, base=run.RunDir(run_dir).load_config(), run_dir=run_dir)
        if not config.valid:
            raise PipelineError("no validation set: give --valid VALID", field="--valid")
        if dry_run:
            return _dry_run(config, opts, need_budget=False)
        return run.run_value(config, progress=opts.progress, log=opts.log, resume=resume, restart=restart,
                             distributed=distributed)

    result = _call(opts, work, resume_hint=f"shed value --run-dir {run_dir} --resume",
                   run_dir=None if dry_run else run_dir)
    if dry_run:
        return _emit_plan(opts, "value", run_dir, result)
    if where[0] != 0:
        return emit_other_process(opts, "value", run_dir, *where)
    _refresh_report(run_dir, result, opts)
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
@click.argument("data", metavar="DATA", type=click.Path(path_type=str))
@click.option("--values", "values_path", default=None, metavar="VALUES.json", type=click.Path(path_type=str),
              help="Values file with \"cluster_values\" [default: RUN_DIR/values.json].")
@options("run_dir", "output", *BUDGET_FIELDS, "keep_order", "seed", "split", "revision",
         run_dir={"help": "Run directory with clusters.npz [default: the directory of --values]."},
         output={"required": True},
         seed={"help": "Seeds the samplers: qwcs and random draws, and qocs's draw from the last cluster that does "
                       "not fit whole."})
@click.option("--replace", is_flag=True,
              help="Make this the run's selection (rewrite selection.json, scores.jsonl and report.html) even when "
                   "the run already has one with other settings.")
@common_options
@click.pass_context
def select(ctx, values_path, replace, as_json, quiet, verbose, **params):
    """Select a budget of records of DATA from cluster values and write them to OUT (DATA's format unless
    OUT's extension names another).

    The records are written exactly as they are in DATA; OUT.scores.jsonl holds each one's cluster,
    value and standard error. RUN_DIR/selection.json and RUN_DIR/scores.jsonl are written, and report.html
    rewritten; when the run already has a selection with other settings (sampler, budget, beta, seed or values
    file), this one goes to RUN_DIR/selection-NAME.json and scores-NAME.jsonl instead (NAME from the settings,
    e.g. random-0.1) and the run's own selection stays, unless --replace.

    \b
    Examples:
      shed select train.jsonl --run-dir run/ --ratio 0.1 -o refined.jsonl
      shed select train.jsonl --values run/values.json --size 1000 --sampler qwcs --beta 2 -o refined.jsonl
    """
    opts = _Opts(quiet, verbose, as_json)
    if values_path is None and params["run_dir"] is None:
        raise _UsageError("give --values VALUES.json or --run-dir DIR")
    _check_budget_flags(params["ratio"], params["size"])
    values_file = _abs(values_path) if values_path else str(Path(_abs(params["run_dir"])) / "values.json")
    directory = _abs(params["run_dir"]) if params["run_dir"] else str(Path(values_file).parent)

    def work():
        from shed_jax import run

        config = build_config(ctx, params, run_dir=directory)
        stored = run.RunDir(directory)
        if (stored.path / "config.json").is_file():
            base = stored.load_config()
            config = config.replace(format=base.format, field_map=base.field_map, duplicates=base.duplicates,
                                    **{name: getattr(base, name) for name in ("split", "revision")
                                       if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT})
            if ctx.get_parameter_source("seed") == click.core.ParameterSource.DEFAULT:
                config = config.replace(seed=base.seed)  # the run's seed unless --seed is given
        named = _named_selection(config, directory, values_file, replace, opts)
        if named is not None:
            return config, named, named.fingerprint  # the selection's name
        result = run.run_select(config, progress=opts.progress, log=opts.log, values_path=values_file,
                                output=config.output)
        from shed_jax import report as _report

        _report.refresh(directory, log=opts.log)
        return config, result, None

    config, result, name = _call(opts, work, run_dir=directory)
    summary = {"command": "select", "run_dir": directory, "output": config.output, **result.summary(),
               "selection_file": str(Path(directory) / (f"selection-{name}.json" if name else "selection.json"))}
    opts.emit(summary, [f"selected {result.budget} of {result.n_candidates} records with {result.sampler} "
                        f"-> {config.output}" + (f" (a named selection: {summary['selection_file']})" if name else "")])


def _named_selection(config, directory: str, values_file: str, replace: bool, opts):
    """A selection with other settings than the run's own (``shed_jax.run.select.run_named_select``), or None
    when this one is (or becomes, with --replace) the run's selection."""
    from shed_jax.run import select as _select

    own = Path(directory) / "values.json"
    source = None if Path(values_file) == own else values_file
    stored = _select.stored_settings(directory)
    if stored is None or replace:
        return None
    if stored.get("values") and Path(stored["values"]) == own:
        stored["values"] = None
    wanted = _select.settings(config, source)
    differs = _select.differences(wanted, stored)
    if not differs:
        return None
    name = _select.selection_name(wanted, stored)
    opts.log(f"select: the run's selection.json has other settings ({'; '.join(differs)}); this selection goes to "
             f"selection-{name}.json and scores-{name}.jsonl beside it (--replace makes it the run's selection)")
    return _select.run_named_select(config, values_path=values_file, output=config.output, name=name,
                                    values_source=source, progress=opts.progress, log=opts.log)


# --------------------------------------------------------------------------------------------------
# refine
# --------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("data", metavar="[DATA]", required=False, type=click.Path(path_type=str))
@options("output", *VALUE_FIELDS, *BUDGET_FIELDS, "keep_order", "n_clusters", "kmeans_max_iter", *DATA_FIELDS, "seed",
         "run_dir")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir: options come from its config.json (options given here "
                   "override them), finished stages are loaded, an interrupted valuation continues and a finished "
                   "one extends to a larger --permutations.")
@restart_option
@click.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)
@distributed_options
@common_options
@click.pass_context
def refine(ctx, resume, restart, dry_run, as_json, quiet, verbose, **params):
    """The whole pipeline: embed -> cluster -> value -> select -> report.

    Writes the selected records of DATA, exactly as they are in DATA, to OUT (in DATA's format unless OUT's
    extension names another; plus OUT.scores.jsonl), and the run directory: config.json, clusters.npz,
    values.json, scores.jsonl, selection.json, summary.json, report.html. OUT is written last, so a failed
    run leaves none.

    \b
    Examples:
      shed refine train.jsonl --valid mmlu_dev.jsonl --ratio 0.1 -o refined.jsonl
      shed refine train.jsonl --valid valid.jsonl --size 5000 --clusters 300 \\
          --sampler qwcs --beta 2 --permutations 100 --run-dir run/ -o refined.jsonl
      shed refine train.jsonl --valid valid.jsonl --ratio 0.1 -o refined.jsonl --proxy lm:model.gguf
      shed refine --resume --run-dir run/          # after Ctrl-C, or to finish a killed run
    """
    opts = _Opts(quiet, verbose, as_json)
    check_resume_restart(resume, restart)
    distributed = _no_dry_run_distributed(dry_run, distributed_arguments(params))
    if distributed is not False and not params["run_dir"]:
        raise _UsageError("--distributed needs --run-dir DIR (the same directory in every process, on a file system "
                          "they all see)")
    if resume and not params["run_dir"]:
        raise _UsageError("--resume needs --run-dir DIR")
    if not resume:
        if not params["data"]:
            raise _UsageError("missing DATA (or use --resume --run-dir DIR)")
        if not params["output"]:
            raise _UsageError("missing -o/--output OUT.jsonl")
        if not params["valid"]:
            raise _UsageError("missing --valid VALID (the validation set the utility is measured on)")
        _check_budget_flags(params["ratio"], params["size"])
    else:
        _check_budget_flags(params["ratio"], params["size"], required=False)
    run_dir = _run_dir_for(params) if not resume else _abs(params["run_dir"])
    where = [0, 1]

    def work():
        where[:] = connect(distributed)
        from shed_jax import run
        from shed_jax.errors import PipelineError

        if resume:
            base = run.RunDir(run_dir).load_config()
            config = build_config(ctx, {k: v for k, v in params.items() if k != "data" or v}, base=base,
                                  run_dir=run_dir)
            if not config.output:
                raise PipelineError("the run has no output file; give -o OUT.jsonl", field="--output")
            if not config.valid:
                raise PipelineError("the run has no validation set; give --valid VALID", field="--valid")
        else:
            config = build_config(ctx, params, run_dir=run_dir)
        if dry_run:
            return _dry_run(config, opts, need_budget=True)
        return run.refine(config, progress=opts.progress, log=opts.log, resume=resume, restart=restart,
                          distributed=distributed)

    result = _call(opts, work, resume_hint=f"shed refine --resume --run-dir {run_dir}",
                   run_dir=None if dry_run else run_dir)
    if dry_run:
        return _emit_plan(opts, "refine", run_dir, result)
    if where[0] != 0:
        return emit_other_process(opts, "refine", run_dir, *where)
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
@options("run_dir", "size", "ratio", "n_permutations", "proxies_per_cluster", "model", "seed",
         config_class=DemoConfig)
@common_options
def demo(run_dir, size, ratio, n_permutations, proxies_per_cluster, model, seed, as_json, quiet, verbose):
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

    def work():
        from shed_jax.demo import demo as run_demo

        return run_demo(_abs(run_dir), size=size, seed=seed, ratio=ratio, n_permutations=n_permutations,
                        progress=opts.progress, log=opts.log, model=model, proxies_per_cluster=proxies_per_cluster)

    result = _call(opts, work, resume_hint="shed demo --run-dir <same dir> (finished stages are skipped)",
                   run_dir=_abs(run_dir))
    summary = {"command": "demo", **result.summary()}
    rates = result.junk_rate
    opts.emit(summary, [
        f"junk rate in the input:          {result.junk_rate_input:6.1%}",
        f"junk rate, QOCS selection:       {rates['qocs']:6.1%}   ({result.budget} records)",
        f"junk rate, QWCS selection:       {rates['qwcs']:6.1%}",
        f"junk rate, random selection:     {rates['random']:6.1%}",
        f"run directory: {result.run_dir}"])


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=str))
@common_options
def report(run_dir, as_json, quiet, verbose):
    """(Re)write RUN_DIR/report.html from the artifacts in a run directory.

    \b
    Example:
      shed report runs/train-20240101-120000
    """
    opts = _Opts(quiet, verbose, as_json)
    directory = Path(_abs(run_dir))

    def work():
        from shed_jax import run

        run.RunDir(directory).require("shed report")
        return run.write_report(directory, log=opts.log)

    path = _call(opts, work, run_dir=str(directory))
    opts.emit({"command": "report", "run_dir": str(directory), "report": str(path)}, [f"wrote {path}"])


@cli.group()
def cache():
    """The embedding cache shared by every run directory.

    Location: $SHED_CACHE, else $XDG_CACHE_HOME/shed_jax, else ~/.cache/shed_jax (embeddings/ inside).
    Entries are keyed by the model and the texts, so a second run on the same data embeds nothing.
    JAX's persistent compilation cache lives next to it, in jax/ ($SHED_COMPILE_CACHE: another directory,
    or 0 to turn it off), so a second run of the same command compiles nothing.
    """


@cache.command("info")
@common_options
def cache_info(as_json, quiet, verbose):
    """Where the embedding cache is, how many entries it holds and their size."""
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import embed as _embed

    info = _call(opts, _embed.cache_info)
    opts.emit({"command": "cache info", **info},
              [f"{info['path']}: {info['entries']} entries, {info['bytes'] / 2**20:.1f} MiB"])


@cache.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def cache_clear(yes, as_json, quiet, verbose):
    """Delete every cached embedding (they are recomputed when needed)."""
    opts = _Opts(quiet, verbose, as_json)
    from shed_jax import embed as _embed

    info = _embed.cache_info()
    if info["entries"] and not yes:
        click.confirm(f"delete {info['entries']} cached embedding files ({info['bytes'] / 2**20:.1f} MiB) in "
                      f"{info['path']}?", abort=True, err=True)
    info = _call(opts, _embed.clear_cache)
    opts.emit({"command": "cache clear", "deleted_entries": info["entries"], "deleted_bytes": info["bytes"],
               "path": info["path"]}, [f"deleted {info['entries']} entries from {info['path']}"])


from shed_jax.terminal import proxies_command, show_command  # noqa: E402  (light: click only)

cli.add_command(show_command)
cli.add_command(proxies_command)
from shed_jax.cli_compare import compare as compare_command  # noqa: E402

cli.add_command(compare_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
