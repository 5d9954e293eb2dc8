"""Proxies per cluster M = 1, 2, 4, 8, 16: junk kept by QOCS and the value stage's wall time (issue 12).

Parts (``--part``, each appends one JSON line per run to ``bench/results/proxies_per_cluster.jsonl``):

* ``demo``       the generated demo data (``shed_jax.demo.synthetic.make_demo`` with the ``shed demo`` sizes,
                 ``--demo-size small|default``, data seeds ``--seeds``), QOCS at ratio 0.2, the demo's K and
                 default permutations: junk kept and value-stage time.
* ``block`` / ``scattered``  the dolly junk mixes of ``bench/junk_mix.py`` (run it first): 3,000 records
                 (600 junk), validation 400 MMLU-val questions, ``--ratio 0.2 --clusters 150 --seed 0``,
                 embedding proxy, default permutations (50).
* ``cost``       value-stage wall time on all of dolly15k (15,011 records) with the same validation at
                 ``--clusters`` K (e.g. 1000). ``--permutations P`` times P permutations; the 50-permutation
                 time is then extrapolated linearly (``value_seconds * 50 / P``, which also scales the one-off
                 compile time, so it errs high) and the line says ``"extrapolated": true``.

Every line records ``os.getloadavg()`` before and after the run: the CPU is shared, timings are noisy.
Embeddings come from the shared embedding cache (embedded once). Fixed seeds throughout.

    .venv/bin/python bench/proxies_per_cluster_bench.py --part block --m 1,4,16
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MIX = RESULTS / "junk_mix"
DEFAULT_PERMUTATIONS = 50


def stage_seconds(run_dir: Path) -> dict:
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    return {name: rec.get("seconds") for name, rec in stages.items()}


def refine_once(data: Path, valid: Path, run_dir: Path, *, n_clusters: int, m: int, ratio: float = 0.2,
                seed: int = 0, n_permutations: int | None = None) -> tuple[dict, object]:
    from shed_jax.config import RefineConfig
    from shed_jax.run.refine import refine

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    extra = {"n_permutations": n_permutations} if n_permutations is not None else {}
    config = RefineConfig(data=str(data), valid=str(valid), output=str(run_dir / "selected.jsonl"),
                          run_dir=str(run_dir), n_clusters=n_clusters, ratio=ratio, sampler="qocs", seed=seed,
                          proxies_per_cluster=m, **extra)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = refine(config, progress=False, log=lambda *a, **k: None, report=False)
    total = time.perf_counter() - start
    load_after = os.getloadavg()
    seconds = stage_seconds(run_dir)
    values = json.loads((run_dir / "values.json").read_text())
    members = values.get("members")
    record = {"m": m, "n_clusters": n_clusters, "n_players": len(members["index"]) if members else n_clusters,
              "n_permutations": values["n_permutations"], "n_evaluations": values["n_evaluations"],
              "removal_step": values["removal_step"], "value_seconds": seconds.get("value"),
              "stage_seconds": seconds, "total_seconds": round(total, 2),
              "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after]}
    return record, result


def emit(record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    with open(RESULTS / "proxies_per_cluster.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def part_demo(ms, seeds, size, work: Path) -> None:
    from shed_jax.demo import DEMO_SIZES, synthetic

    spec = DEMO_SIZES[size]
    for seed in seeds:
        data_dir = work / f"demo-{size}-{seed}-data"
        paths = synthetic.make_demo(data_dir, n_examples=spec["n_examples"], n_topics=spec["n_topics"],
                                    n_validation=spec["n_validation"], seed=seed)
        junk = np.zeros(spec["n_examples"], bool)
        junk[np.asarray(paths.junk_indices, np.int64)] = True
        for m in ms:
            record, result = refine_once(paths.train, paths.valid, work / f"demo-{size}-{seed}-m{m}",
                                         n_clusters=spec["n_clusters"], m=m, seed=seed)
            emit({"part": "demo", "demo_size": size, "data_seed": seed, **record,
                  "junk_input": float(junk[result.labels >= 0].mean()), "junk_kept": float(junk[result.indices].mean())})


def part_mix(name, ms, work: Path) -> None:
    junk = np.load(MIX / f"{name}.junk.npy")
    for m in ms:
        record, result = refine_once(MIX / f"{name}.jsonl", MIX / "valid.jsonl", work / f"{name}-m{m}",
                                     n_clusters=150, m=m)
        emit({"part": name, **record, "junk_input": float(junk[result.labels >= 0].mean()),
              "junk_kept": float(junk[result.indices].mean())})


def part_cost(ms, n_clusters, n_permutations, work: Path) -> None:
    from bench.junk_mix import SHARED

    for m in ms:
        record, _ = refine_once(SHARED / "instruct" / "dolly15k.jsonl", MIX / "valid.jsonl", work / f"cost-k{n_clusters}-m{m}",
                                n_clusters=n_clusters, m=m, n_permutations=n_permutations)
        extrapolated = n_permutations != DEFAULT_PERMUTATIONS
        record["value_seconds_at_50"] = (round(record["value_seconds"] * DEFAULT_PERMUTATIONS / n_permutations, 1)
                                         if extrapolated else record["value_seconds"])
        emit({"part": "cost", **record, "extrapolated": extrapolated})


def print_tables() -> None:
    """Markdown tables of ``proxies_per_cluster.jsonl`` and ``value_cost.jsonl`` (the last line per setting)."""
    def rows(name):
        path = RESULTS / name
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    last = {}
    for r in rows("proxies_per_cluster.jsonl"):
        last[(r["part"], r.get("data_seed"), r["m"])] = r
    print("| data | M | players | junk kept (input) | value stage | load avg (1 min, before/after) |")
    print("|---|---|---|---|---|---|")
    for (part, seed, m), r in sorted(last.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
        name = f"demo small, seed {seed}" if part == "demo" else f"dolly {part}"
        print(f"| {name} | {m} | {r['n_players']:,} | {100 * r['junk_kept']:.1f}% ({100 * r['junk_input']:.0f}%) "
              f"| {r['value_seconds']:.0f} s | {r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |")
    cost = {}
    for r in rows("value_cost.jsonl"):
        cost[(r["n_clusters"], r["m"])] = r
    if cost:
        print()
        print("| K | M | players | s / permutation | 50 permutations (extrapolated) | load avg (1 min, before/after) |")
        print("|---|---|---|---|---|---|")
        for (k, m), r in sorted(cost.items()):
            print(f"| {k:,} | {m} | {r['n_players']:,} | {r['seconds_per_permutation']:.2f} | "
                  f"{r['value_seconds_at_50']:.0f} s* | {r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", required=True, choices=("demo", "block", "scattered", "cost", "table"))
    parser.add_argument("--m", default="1,2,4,8,16", help="comma list of proxies per cluster")
    parser.add_argument("--seeds", default="0,1,2", help="demo data seeds")
    parser.add_argument("--demo-size", default="small", choices=("small", "default"))
    parser.add_argument("--clusters", type=int, default=1000, help="K for --part cost")
    parser.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS, help="for --part cost")
    parser.add_argument("--work", default=str(RESULTS / "ppc_runs"), help="run directories (deleted per run)")
    args = parser.parse_args()
    ms = [int(v) for v in args.m.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.part == "table":
        print_tables()
    elif args.part == "demo":
        part_demo(ms, [int(s) for s in args.seeds.split(",")], args.demo_size, work)
    elif args.part == "cost":
        part_cost(ms, args.clusters, args.permutations, work)
    else:
        part_mix(args.part, ms, work)


if __name__ == "__main__":
    main()
