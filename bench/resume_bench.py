"""What extending a valuation by ``--resume`` costs (issue 16): ``shed value --permutations 50`` then
``--resume --permutations 100`` against a fresh ``--permutations 100``, on a case big enough that the fixed costs
(start-up, utility build, compilation, U(full)/U(empty)) do not dominate.

One clustered run directory (``shed cluster``, first N dolly records, K clusters) is copied for each measured
command, so every command starts from the same clusters. A first ``--permutations 1`` run fills the embedding
cache (the players' texts and the validation set); then, side by side in one process (each command is a fresh
``python -m shed_jax.cli`` subprocess, so no compiled code is shared): fresh 100, fresh 50, resume 50 -> 100.
Reported per command: the subprocess wall time, its CPU time (user + system of all its threads: steadier than
wall time on a shared machine) and the value stage's own seconds (``stages.json``); the resume
line also checks that its ``values.json`` equals the fresh 100's bit for bit (values, stderr, n_evaluations).

    .venv/bin/python bench/resume_bench.py --records 2000 --clusters 200 --removal-step 2 \
        --json bench/results/resume_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHED_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shed(*args, env) -> dict:
    """Run ``shed ARGS`` in a subprocess (exit status checked): its wall seconds and its CPU seconds (user + system,
    every thread; on a shared, overloaded machine the CPU time is the steadier measure of the work done)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shed_jax.cli", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"shed {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": seconds, "cpu_seconds": cpu}


def stage_seconds(run: Path) -> float:
    return float(json.loads((run / "stages.json").read_text())["stages"]["value"]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000, help="first N records of dolly15k")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--proxies-per-cluster", default="1")
    parser.add_argument("--valid", default=str(DATA / "mmlu" / "mmlu_val.jsonl"))
    parser.add_argument("--permutations", type=int, default=100, help="the fresh count; the resumed run starts "
                                                                       "from half of it")
    parser.add_argument("--removal-step", default=None, help="--removal-step of shed value (default: its own)")
    parser.add_argument("--json", default=None, help="write the result here (JSON)")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHED_ESTIMATE": "0"}
    work = Path(tempfile.mkdtemp(prefix="resume_bench_"))
    try:
        data = work / "train.jsonl"
        with open(DATA / "instruct" / "dolly15k.jsonl", encoding="utf-8") as source:
            data.write_text("".join(line for _, line in zip(range(args.records), source)), encoding="utf-8")
        base = work / "base"
        cluster_seconds = shed("cluster", data, "--clusters", args.clusters, "--run-dir", base, "-q",
                               env=env)["wall_seconds"]
        value = ["--valid", args.valid, "--proxies-per-cluster", args.proxies_per_cluster, "-q"]
        if args.removal_step is not None:
            value += ["--removal-step", args.removal_step]

        def fresh_copy(name: str) -> Path:
            run = work / name
            shutil.copytree(base, run)
            return run

        warm = fresh_copy("warm")  # fills the embedding cache for the players and the validation set
        shed("value", "--run-dir", warm, "--permutations", 1, *value, env=env)

        full, half = args.permutations, args.permutations // 2
        load_before = os.getloadavg()
        runs = {}
        run = fresh_copy("fresh_full")
        runs[f"fresh_{full}"] = {**shed("value", "--run-dir", run, "--permutations", full, *value, env=env),
                                 "stage_seconds": stage_seconds(run)}
        fresh_full = json.loads((run / "values.json").read_text())
        run = fresh_copy("resumed")
        runs[f"fresh_{half}"] = {**shed("value", "--run-dir", run, "--permutations", half, *value, env=env),
                                 "stage_seconds": stage_seconds(run)}
        runs[f"resume_{half}_to_{full}"] = {
            **shed("value", "--run-dir", run, "--permutations", full, "--resume", *value, env=env),
            "stage_seconds": stage_seconds(run)}
        resumed = json.loads((run / "values.json").read_text())
        load_after = os.getloadavg()
        same = all(resumed[key] == fresh_full[key] for key in ("cluster_values", "stderr", "n_evaluations",
                                                                 "n_permutations"))
        fresh, extend = runs[f"fresh_{full}"], runs[f"resume_{half}_to_{full}"]
        result = {
            "case": {"records": args.records, "clusters": args.clusters, "proxy": "embedding",
                     "proxies_per_cluster": args.proxies_per_cluster, "valid": args.valid,
                     "n_evaluations": fresh_full["n_evaluations"], "removal_step": fresh_full.get("removal_step")},
            "cluster_seconds": round(cluster_seconds, 2),
            "runs": {name: {key: round(v, 3) for key, v in timing.items()} for name, timing in runs.items()},
            "resume_over_fresh_wall": round(extend["wall_seconds"] / fresh["wall_seconds"], 3),
            "resume_over_fresh_stage": round(extend["stage_seconds"] / fresh["stage_seconds"], 3),
            "resume_over_fresh_cpu": round(extend["cpu_seconds"] / fresh["cpu_seconds"], 3),
            "bit_equal": same,
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
            "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if not same:
        raise SystemExit("the resumed values differ from the fresh run's")


if __name__ == "__main__":
    main()
