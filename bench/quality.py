"""Does the selection help? ``shed compare`` on the dolly junk mixes (known answer) and on clean dolly data.

One command; writes ``OUT/quality.json`` and prints Markdown tables (the README's) on stdout:

1. **Known answer**: ``bench/junk_mix.py``'s block and scattered mixes (3,000 dolly records, 20% junk),
   ``shed refine --ratio 0.2`` with the default (embedding) proxy and the mix's MMLU validation set, then
   ``shed compare`` of full / random / shed on held-out clean dolly records (instruction loss) and, in the full
   run, 400 MMLU questions (test split). Also the junk rate of each training set.
2. **Clean data**: dolly -> 10% by SHED (embedding proxy), random 10% and full; the full run uses all of
   dolly15k, ``--small`` the 3,000 clean originals of the junk-mix sample.
3. **Cost**: the same fine-tunes batched (one SlotTrainer) and one after another, side by side in one process.

    .venv/bin/python bench/quality.py --small            # this 2-core CPU: tens of minutes
    .venv/bin/python bench/quality.py                    # the full size (an accelerator)

Every number depends on the recipe printed with it; ``--small`` is far too short a fine-tune to test the paper's
claims (see the README).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import junk_mix  # noqa: E402

SIZES = {
    # steps, seeds, batch, max_length, held-out dolly items, MMLU items (0: none), cost steps
    "small": dict(steps=10, seeds=2, batch_size=4, max_length=128, heldout=50, mmlu=0, cost_steps=2, cost_seeds=1,
                  cost_items=10, clean_records="sample"),
    "full": dict(steps=None, seeds=3, batch_size=8, max_length=512, heldout=300, mmlu=400, cost_steps=20,
                 cost_seeds=3, cost_items=100, clean_records="all"),
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def shed(*args, env=None) -> dict:
    """Run the ``shed`` CLI in a subprocess; its --json output."""
    cmd = [sys.executable, "-m", "shed_jax.cli", *map(str, args), "--json"]
    print("+ shed " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        raise SystemExit(f"shed {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return json.loads(proc.stdout)


def heldout_dolly(out: Path, used: set, n: int, seed: int) -> Path:
    """``n`` dolly records never in the junk-mix sample (exact duplicates skipped), seeded."""
    path = out / f"heldout_dolly_{n}.jsonl"
    if path.is_file():
        return path
    dolly = junk_mix.read_jsonl(junk_mix.SHARED / "instruct" / "dolly15k.jsonl")
    seen, pool = set(), []
    for i, record in enumerate(dolly):
        key = json.dumps(record, sort_keys=True)
        if i not in used and key not in seen:
            pool.append(i)
        seen.add(key)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E1D]))
    pick = np.sort(rng.choice(np.asarray(pool), n, replace=False))
    junk_mix.write_jsonl(path, [dolly[i] for i in pick])
    return path


def mmlu_test(out: Path, n: int, seed: int) -> Path:
    path = out / f"mmlu_test_{n}.jsonl"
    if not path.is_file():
        items = junk_mix.read_jsonl(junk_mix.SHARED / "mmlu" / "mmlu_test.jsonl")
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x3317]))
        junk_mix.write_jsonl(path, [items[i] for i in np.sort(rng.choice(len(items), n, replace=False))])
    return path


def refine(data: Path, valid: Path, run_dir: Path, ratio: float) -> None:
    if (run_dir / "selection.json").is_file():
        return
    shed("refine", data, "--valid", valid, "--ratio", ratio, "--run-dir", run_dir, "-o",
         run_dir.with_suffix(".refined.jsonl"), "-q")


def compare_args(size: dict, evals: list[Path], model: str | None) -> list:
    args = []
    for path in evals:
        args += ["--eval", path]
    if size["steps"] is not None:
        args += ["--steps", size["steps"]]
    args += ["--seeds", size["seeds"], "--batch-size", size["batch_size"], "--max-length", size["max_length"], "-q"]
    if model:
        args += ["--model", model]
    return args


def junk_rates(run_dir: Path, junk: np.ndarray, seed: int) -> dict:
    from shed_jax.compare import sets_from_run

    sets, _ = sets_from_run(run_dir, ("full", "random", "shed"), seed=seed)
    return {s.name: float(junk[s.indices].mean()) for s in sets}


def cost(run_dir: Path, heldout: Path, size: dict, model: str | None) -> dict:
    """The same fine-tunes batched and one after another, in this process (so load hits both alike)."""
    import dataclasses

    from shed_jax.compare import CompareConfig, compare, load_model, read_eval, sets_from_run

    sets, _ = sets_from_run(run_dir, ("full", "random", "shed"))
    evals = [read_eval(str(heldout))]
    config = CompareConfig(model=model, steps=size["cost_steps"], seeds=size["cost_seeds"],
                           batch_size=size["batch_size"], max_length=size["max_length"], max_eval=size["cost_items"],
                           bootstrap=200)
    loaded, source = load_model(model, "auto")
    out = {"recipe": {"steps": config.steps, "seeds": config.seeds, "sets": 3, "batch_size": config.batch_size,
                      "max_length": config.max_length, "eval_items": config.max_eval, "model": source}}
    for label, slots in (("batched", None), ("one_after_another", 1)):
        before = load()
        start = time.perf_counter()
        payload = compare(sets, evals, dataclasses.replace(config, slots=slots), loaded=loaded, source=source)
        out[label] = {"seconds": time.perf_counter() - start, "train_seconds": payload["timing"]["train_seconds"],
                      "score_seconds": payload["timing"]["score_seconds"], "rounds": payload["timing"]["rounds"],
                      "load_before": before, "load_after": load()}
        print(f"cost {label}: {out[label]}", file=sys.stderr, flush=True)
    seq = out["one_after_another"]["seconds"]
    bat = out["batched"]["seconds"]
    out["batched_over_sequential"] = bat / seq
    return out


def fmt_row(row: dict, metric: str) -> str:
    def f(x):
        return f"{x:.4f}" if metric == "loss" else f"{100 * x:.1f}%"

    def d(diff):
        if diff is None:
            return "-"
        scale = 1 if metric == "loss" else 100
        return f"{scale * diff['diff']:+.4f} [{scale * diff['ci95'][0]:+.4f}, {scale * diff['ci95'][1]:+.4f}]"

    lo, hi = row["ci95"]
    return f"{f(row['mean'])} [{f(lo)}, {f(hi)}] | {d(row['vs_random'])} | {d(row['vs_full'])}"


def markdown(results: dict) -> str:
    lines = []
    for part, result in results.items():
        if part == "cost" or "compare" not in result:
            continue
        recipe = result["compare"]["recipe"]
        lines.append(f"\n#### {part}: {result.get('description', '')}\n")
        lines.append(f"recipe: {recipe['model']}, {recipe['seeds']} seeds, steps {recipe['steps_per_set']}, "
                     f"batch {recipe['batch_size']} x {recipe['max_length']} tokens, LoRA rank {recipe['rank']}, "
                     f"lr {recipe['learning_rate']}; load {result.get('load')}; {result.get('seconds', 0):.0f} s\n")
        for ev in result["compare"]["evals"]:
            lines.append(f"{ev['name']}: {ev['metric']} ({'higher' if ev['higher_is_better'] else 'lower'} is better), "
                         f"{ev['n_items']} items\n")
            lines.append("| train | records | junk | mean [95% CI] | vs random [95% CI] | vs full [95% CI] |")
            lines.append("| --- | ---: | ---: | --- | --- | --- |")
            for row in ev["rows"]:
                junk = result.get("junk_rate", {}).get(row["train"])
                lines.append(f"| {row['train']} | {row['records']} | {'-' if junk is None else f'{junk:.1%}'} | "
                             f"{fmt_row(row, ev['metric'])} |")
            lines.append("")
    if "cost" in results:
        c = results["cost"]
        lines.append("\n#### cost\n")
        lines.append(f"recipe: {c['recipe']}\n")
        lines.append("| run | seconds | fine-tune s | scoring s | rounds | load before / after |")
        lines.append("| --- | ---: | ---: | ---: | ---: | --- |")
        for label in ("batched", "one_after_another"):
            r = c[label]
            lines.append(f"| {label} | {r['seconds']:.1f} | {r['train_seconds']:.1f} | {r['score_seconds']:.1f} | "
                         f"{r['rounds']} | {r['load_before'][0]} / {r['load_after'][0]} |")
        lines.append(f"\nbatched / one after another: {c['batched_over_sequential']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the CPU size (see SIZES)")
    parser.add_argument("--out", default=str(HERE / "results" / "quality"))
    parser.add_argument("--parts", default="block,scattered,clean,cost")
    parser.add_argument("--model", default=None, help="default: the LM proxy's SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = SIZES["small" if args.small else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mixes = ROOT / "bench" / "results" / "junk_mix"
    if not (mixes / "meta.json").is_file():
        junk_mix.build(mixes, seed=0)
    meta = json.loads((mixes / "meta.json").read_text())
    heldout = heldout_dolly(out, set(meta["dolly_index"]), size["heldout"], args.seed)
    evals = [heldout] + ([mmlu_test(out, size["mmlu"], args.seed)] if size["mmlu"] else [])
    results_path = out / ("quality_small.json" if args.small else "quality.json")
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for part in parts:
        start, before = time.perf_counter(), load()
        if part in ("block", "scattered"):
            run_dir = out / f"run-{part}"
            refine(mixes / f"{part}.jsonl", mixes / "valid.jsonl", run_dir, 0.2)
            payload = shed("compare", run_dir, *compare_args(size, evals, args.model))
            junk = np.load(mixes / f"{part}.junk.npy")
            results[part] = {"description": f"dolly junk mix ({part}, 20% junk), shed refine --ratio 0.2",
                             "compare": payload, "junk_rate": junk_rates(run_dir, junk, payload["recipe"]["seed"])}
        elif part == "clean":
            if size["clean_records"] == "all":
                data = junk_mix.SHARED / "instruct" / "dolly15k.jsonl"
                description = "dolly15k (15,011 records) -> 10% by SHED"
            else:
                data = out / "clean_sample.jsonl"
                if not data.is_file():
                    dolly = junk_mix.read_jsonl(junk_mix.SHARED / "instruct" / "dolly15k.jsonl")
                    junk_mix.write_jsonl(data, [dolly[i] for i in meta["dolly_index"]])
                description = "3,000 clean dolly records (the junk-mix sample, uncorrupted) -> 10% by SHED"
            run_dir = out / ("run-clean" if size["clean_records"] == "all" else "run-clean-sample")
            refine(data, mixes / "valid.jsonl", run_dir, 0.1)
            payload = shed("compare", run_dir, *compare_args(size, evals, args.model))
            results[part] = {"description": description, "compare": payload}
        elif part == "cost":
            results[part] = cost(out / "run-block", heldout, size, args.model)
        else:
            raise SystemExit(f"unknown part {part!r}")
        results[part]["seconds"] = time.perf_counter() - start
        results[part]["load"] = {"before": before, "after": load()}
        merged = json.loads(results_path.read_text()) if results_path.is_file() else {}
        merged[part] = results[part]  # other parts may have been written by another process meanwhile
        results_path.write_text(json.dumps(merged, indent=1))
        results = merged
        print(f"{part}: done in {results[part]['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(markdown(json.loads(results_path.read_text()) if results_path.is_file() else results))


if __name__ == "__main__":
    main()
