"""``shed compare``: does the selection help? (registered in :mod:`shed_jax.cli` with one line).

Imports only click at import time; the comparison (JAX, the LM) is imported when the command runs.
"""
from __future__ import annotations

from pathlib import Path

import click

from shed_jax.cli_support import _call, _Opts, _UsageError

__all__ = ["compare", "table_lines"]


def _fmt(value: float, metric: str) -> str:
    return f"{value:.4f}" if metric == "loss" else f"{100 * value:.1f}%"


def _fmt_diff(diff: dict | None, metric: str) -> str:
    if diff is None:
        return "-"
    scale, unit = (1.0, "") if metric == "loss" else (100.0, " pt")
    lo, hi = diff["ci95"]
    return f"{scale * diff['diff']:+.3f}{unit} [{scale * lo:+.3f}, {scale * hi:+.3f}]"


def table_lines(payload: dict) -> list[str]:
    """The terminal table: one block per (test set, metric)."""
    recipe = payload["recipe"]
    steps = recipe.get("steps_per_set", {})
    lines = [f"model {recipe.get('model')}; LoRA rank {recipe.get('rank')}, lr {recipe.get('learning_rate')}, "
             f"batch {recipe.get('batch_size')} x {recipe.get('max_length')} tokens, {recipe.get('seeds')} seeds, "
             f"steps {', '.join(f'{k} {v}' for k, v in steps.items())} (match: {recipe.get('match')})"]
    for ev in payload["evals"]:
        metric = ev["metric"]
        better = "higher" if ev["higher_is_better"] else "lower"
        overlap = ev.get("overlap") or {}
        dropped = f"; {overlap.get('items', 0)} overlapping item(s) dropped" if overlap.get("excluded") else (
            f"; {overlap.get('items', 0)} item(s) overlap a training set (kept)" if overlap.get("items") else "")
        lines.append("")
        lines.append(f"{ev['name']}: {metric} ({better} is better), {ev['n_items']} items{dropped}")
        lines.append(f"  {'train':<10} {'records':>8}  {'mean [95% CI]':<28} {'vs random [95% CI]':<34} vs full [95% CI]")
        for row in ev["rows"]:
            lo, hi = row["ci95"]
            mean = f"{_fmt(row['mean'], metric)} [{_fmt(lo, metric)}, {_fmt(hi, metric)}]"
            lines.append(f"  {row['train']:<10} {row['records']:>8}  {mean:<28} "
                         f"{_fmt_diff(row.get('vs_random'), metric):<34} {_fmt_diff(row.get('vs_full'), metric)}")
    timing = payload.get("timing") or {}
    if timing:
        lines.append("")
        lines.append(f"{recipe.get('n_fine_tunes')} fine-tunes in {timing['train_seconds']:.1f} s, scoring "
                     f"{timing['score_seconds']:.1f} s ({timing['rounds']} round(s), {timing['backend']})")
    return lines


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dir", metavar="[RUN_DIR]", required=False, type=click.Path(path_type=str))
@click.option("--train", "train", multiple=True, metavar="[NAME=]PATH",
              help="A training set from a file (repeatable); the row is NAME or the file's stem. With RUN_DIR, "
                   "added to the run's sets.")
@click.option("--eval", "evals", multiple=True, metavar="[NAME=]PATH",
              help="A held-out test set (repeatable): multiple choice (question/choices/answer) or instruction data.")
@click.option("--methods", default="full,random,shed", show_default=True,
              help="RUN_DIR's training sets, comma list of full, random, shed, qwcs, qocs.")
@click.option("--model", default=None, help="Causal LM: checkpoint directory, hub name or .gguf file [default: the "
                                            "LM proxy's SmolLM2-135M-Instruct GGUF].")
@click.option("--steps", type=int, default=None,
              help="Optimiser steps for every set [default: compute-matched, --epochs passes over the selection].")
@click.option("--epochs", type=float, default=1.0, show_default=True,
              help="Passes over the selection (or, with --match data, over each set) that set the steps.")
@click.option("--match", type=click.Choice(["compute", "data"]), default="compute", show_default=True,
              help="compute: the same steps for every set; data: --epochs passes over each set's own records.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Fine-tunes per set (minibatch orders).")
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (update scale alpha/rank).")
@click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="Peak AdamW learning rate.")
@click.option("--warmup-steps", type=int, default=None, help="Linear warm-up steps [default: steps // 10, >= 1].")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Sequences per optimiser step.")
@click.option("--max-length", type=int, default=256, show_default=True, help="Tokens per sequence.")
@click.option("--prompt-format", type=click.Choice(["chat", "alpaca", "vicuna"]), default="chat", show_default=True,
              help="How prompts are written (chat: the tokenizer's template).")
@click.option("--shots", type=int, default=0, show_default=True,
              help="k-shot multiple-choice prompts: K solved questions from --shots-from before each question.")
@click.option("--shots-from", default=None, metavar="PATH", help="The separate split the k-shot examples come from.")
@click.option("--exclude-overlap/--no-exclude-overlap", default=True, show_default=True,
              help="Drop test items whose prompt is also a training prompt (always counted and reported).")
@click.option("--max-eval", type=int, default=None, help="Score at most this many items per test set (seeded subset).")
@click.option("--bootstrap", type=int, default=2000, show_default=True, help="Bootstrap replicates for the intervals.")
@click.option("--slots", type=int, default=None,
              help="Fine-tunes per batch [default: all at once; 1: one after another].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="Compute dtype of the base model (auto: float32 on a CPU, bfloat16 on accelerators).")
@click.option("--seed", type=int, default=None, help="Seeds the random set, the fine-tunes and the bootstrap "
                                                     "[default: the run's seed, else 0].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (logs stay on stderr).")
@click.option("-q", "--quiet", is_flag=True, help="No log lines on stderr.")
@click.option("-v", "--verbose", count=True, help="More log output.")
def compare(run_dir, train, evals, methods, model, steps, epochs, match, seeds, rank, alpha, learning_rate,
            warmup_steps, batch_size, max_length, prompt_format, shots, shots_from, exclude_overlap, max_eval,
            bootstrap, slots, dtype, seed, as_json, quiet, verbose):
    """Fine-tune a model on the curated, a random and the full data; score each on held-out tests.

    Every (training set x seed) pair is one LoRA adapter of one batched job on one base model. Prints, per
    test set, each set's mean with a 95% interval (bootstrap over test items and seeds), the untuned model,
    and each set's paired difference against `random` and `full`. With RUN_DIR the result is also written to
    RUN_DIR/compare.json (and shown by `shed report`).

    \b
    Examples:
      shed compare runs/dolly-20240101 --eval heldout.jsonl --eval mmlu_val.jsonl
      shed compare runs/dolly-20240101 --eval mmlu_val.jsonl --methods full,random,shed,qwcs --seeds 5
      shed compare --train random=rand.jsonl --train mine=curated.jsonl --eval heldout.jsonl --json
    """
    opts = _Opts(quiet, verbose, as_json)
    if not evals:
        raise _UsageError("give at least one test set: --eval PATH (see `shed compare --help`)")
    if not run_dir and not train:
        raise _UsageError("give a run directory (shed compare RUN_DIR --eval ...) or training files (--train PATH)")
    directory = str(Path(run_dir).expanduser().resolve()) if run_dir else None

    def work():
        from shed_jax import compare as cmp
        from shed_jax.errors import UserError

        sets, info = [], None
        if directory:
            method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
            sets, info = cmp.sets_from_run(directory, method_list, seed=seed)
        if train:
            sets += cmp.sets_from_files(train)
        eval_sets = [cmp.read_eval(spec) for spec in evals]
        shots_set = cmp.read_eval(shots_from) if shots_from else None
        if shots_from and not shots:
            raise UserError("--shots-from needs --shots K (K >= 1)", field="--shots-from")
        config = cmp.CompareConfig(model=model, steps=steps, epochs=epochs, match=match, seeds=seeds, rank=rank,
                                   alpha=alpha, learning_rate=learning_rate, warmup_steps=warmup_steps,
                                   batch_size=batch_size, max_length=max_length, prompt_format=prompt_format,
                                   exclude_overlap=exclude_overlap, bootstrap=bootstrap,
                                   seed=int(seed if seed is not None else (info or {}).get("seed", 0)),
                                   max_eval=max_eval, shots=shots, slots=slots, dtype=dtype)
        payload = cmp.compare(sets, eval_sets, config, shots_set=shots_set, log=opts.log)
        if info is not None:
            payload["recipe"]["run"] = info
            path = cmp.Comparison.from_json(payload).save(directory)
            payload["written"] = str(path)
        return payload

    payload = _call(opts, work, run_dir=directory)
    lines = table_lines(payload)
    if payload.get("written"):
        lines.append(f"wrote {payload['written']}")
    opts.emit({"command": "compare", **payload}, lines)
