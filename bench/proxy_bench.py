"""Benchmark of the embedding-space proxy utility (shed_jax.proxies.embedding).

Measures utility evaluations per second at K = 256 and K = 1000 proxies (d = 384) against a realistic
validation set (1,500 four-choice questions, MMLU-val sized), on the coalition sizes the Shapley engine
sends (one permutation, from the full set down to the empty set in steps of ``removal_step``), for:

* ``batched``: one jitted call ``utility(masks)`` on the whole batch (sort by size, ``lax.map`` over
  chunks, bucket picked by ``lax.switch``, ``vmap`` inside a chunk);
* ``loop``: a Python loop of ``utility.evaluate_one(mask)`` (one jitted call per coalition, bucket picked
  on the host).

It also measures the machine's f32 matmul rate with ``jnp.dot`` on the scorer's own shapes and reports the
achieved GFLOP/s (analytic FLOPs of :func:`shed_jax.proxies.embedding.training_flops` over wall time).
Compilation is excluded (one warm-up call each). Prints JSON and writes ``bench/results/proxy.json``.

Usage: ``python bench/proxy_bench.py [--quick] [--objectives spectral,infonce] [--sizes 256,1000]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from shed_jax.proxies import EmbeddingProxyConfig, EmbeddingProxyUtility, ValidationEmbeddings
from shed_jax.proxies.embedding import training_flops, validation_flops

DIM = 384


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def best_time(fn, repeats: int) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (after one warm-up), seconds."""
    return timings(fn, repeats)[0]


def timings(fn, repeats: int) -> tuple[float, float]:
    """``(min wall seconds, min process CPU seconds)`` of ``fn()`` over ``repeats`` runs after a warm-up.

    CPU time (all threads of this process) is reported besides wall time because a shared machine's load
    inflates wall time; on an idle ``c``-core machine wall ~ CPU / c when the work keeps all cores busy.
    """
    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def matmul_rates(n_members: int, rank: int) -> dict[str, float]:
    """GFLOP/s of ``jnp.dot`` (jitted) on the scorer's shapes and on a large square GEMM (wall and per
    CPU-second of this process)."""
    rng = np.random.default_rng(0)
    shapes = {
        "stats_dxn_nxd": (DIM, n_members, DIM),       # spectral statistics
        "step_dxd_dxr": (DIM, DIM, rank),             # spectral step
        "proj_nxd_dxr": (n_members, DIM, rank),       # infonce projections / validation
        "scores_nxr_rxn": (n_members, rank, n_members),  # infonce low-rank scores
        "square_1024": (1024, 1024, 1024),
    }
    dot = jax.jit(jnp.dot)
    rates = {}
    for name, (m, k, n) in shapes.items():
        a = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
        b = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
        repeats = 5 if m * k * n > 1e8 else 50
        seconds, cpu_seconds = timings(lambda: dot(a, b), repeats)
        rates[name] = 2.0 * m * k * n / seconds / 1e9
        rates[name + "_per_cpu_second"] = 2.0 * m * k * n / cpu_seconds / 1e9
    return rates


def shapley_like_masks(n_players: int, removal_step: int, seed: int) -> np.ndarray:
    """Coalitions of one permutation, full set first, ``removal_step`` players removed each time."""
    order = np.random.default_rng(seed).permutation(n_players)
    sizes = np.arange(n_players, -1, -removal_step)
    if sizes[-1] != 0:
        sizes = np.append(sizes, 0)
    masks = np.zeros((len(sizes), n_players), bool)
    for row, size in enumerate(sizes):
        masks[row, order[:size]] = True
    return masks


# The FLOP-rate target is about the low-rank bilinear scorer (rank 16), which was the default until
# 2026-11-29; the current default (rank 0: only the cosine weight is fine-tuned) does almost no matmul work.
BILINEAR = dict(rank=16, optimizer="adam", learning_rate=0.01, metric="accuracy", scale_learning_rate=0.0,
                max_grad_norm=None)


def run_case(n_players: int, objective: str, removal_step: int, n_validation: int, repeats: int,
             rates: dict[str, float]) -> dict:
    rng = np.random.default_rng(n_players)
    prompts = unit(rng.normal(size=(n_players, DIM)))
    responses = unit(prompts + rng.normal(size=(n_players, DIM)))
    questions = unit(rng.normal(size=(n_validation, DIM)))
    choices = unit(rng.normal(size=(n_validation, 4, DIM)) + 0.3 * questions[:, None, :])
    validation = ValidationEmbeddings.multiple_choice(questions, choices, rng.integers(0, 4, n_validation))
    config = EmbeddingProxyConfig(objective=objective, **BILINEAR)
    utility = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, config)
    masks = shapley_like_masks(n_players, removal_step, seed=1)
    masks_device = jnp.asarray(masks)

    start = time.perf_counter()
    jax.block_until_ready(utility(masks_device))
    compile_batched = time.perf_counter() - start
    start = time.perf_counter()
    for mask in masks:  # warm-up compiles one function per bucket
        utility.evaluate_one(mask)
    compile_loop = time.perf_counter() - start
    batched_seconds, batched_cpu = timings(lambda: utility(masks_device), repeats)
    loop_seconds, loop_cpu = timings(lambda: [utility.evaluate_one(mask) for mask in masks], repeats)

    flops = sum(utility.flops_per_evaluation(int(m.sum())) for m in masks)
    n_eval = len(masks)
    # FLOPs split by matmul shape, to build a shape-matched reference rate (what jnp.dot alone would reach)
    n_buckets = [next(b for b in utility.buckets if b >= int(m.sum())) for m in masks]
    val_flops = n_eval * validation_flops(n_validation, 4 * n_validation, 4, DIM, config.rank)
    if objective == "spectral":
        split = {"stats_dxn_nxd": sum(6.0 * n * DIM * DIM for n in n_buckets),
                 "step_dxd_dxr": sum(config.steps * 12.0 * DIM * DIM * config.rank for n in n_buckets if n)}
    else:
        split = {"proj_nxd_dxr": sum(config.steps * 8.0 * n * DIM * config.rank for n in n_buckets),
                 "scores_nxr_rxn": sum(config.steps * 6.0 * n * n * config.rank for n in n_buckets)}
    split["proj_nxd_dxr"] = split.get("proj_nxd_dxr", 0.0) + val_flops
    fit_flops = flops - val_flops
    ideal_wall = sum(f / (rates[k] * 1e9) for k, f in split.items())
    ideal_cpu = sum(f / (rates[k + "_per_cpu_second"] * 1e9) for k, f in split.items())
    achieved = flops / batched_seconds / 1e9
    return {
        "n_players": n_players, "objective": objective, "removal_step": removal_step,
        "n_evaluations_per_call": n_eval, "n_validation": n_validation, "n_choices": 4,
        "buckets": list(utility.buckets), "chunk_size": utility.chunk_size,
        "config": config.to_dict(),
        "batched_evals_per_s": n_eval / batched_seconds,
        "loop_evals_per_s": n_eval / loop_seconds,
        "batched_over_loop": loop_seconds / batched_seconds,
        "ms_per_eval_batched": 1e3 * batched_seconds / n_eval,
        "ms_per_eval_loop": 1e3 * loop_seconds / n_eval,
        "cpu_ms_per_eval_batched": 1e3 * batched_cpu / n_eval,
        "cpu_ms_per_eval_loop": 1e3 * loop_cpu / n_eval,
        "batched_over_loop_cpu": loop_cpu / batched_cpu,
        "compile_s_batched": compile_batched, "compile_s_loop": compile_loop,
        "analytic_gflop_per_call": flops / 1e9,
        "analytic_training_gflop_per_call": fit_flops / 1e9,
        "achieved_gflops_batched": achieved,
        "achieved_gflops_loop": flops / loop_seconds / 1e9,
        "achieved_gflops_per_cpu_second": flops / batched_cpu / 1e9,
        "flops_by_matmul_shape": split,
        "reference_gflops_shape_matched": flops / ideal_wall / 1e9,
        "fraction_of_shape_matched_matmul_rate": ideal_wall / batched_seconds,
        "fraction_of_shape_matched_matmul_rate_cpu_time": ideal_cpu / batched_cpu,
        "fraction_of_square_matmul_rate": achieved / rates["square_1024"],
        "projected_minutes_5000_evals": 5000 * batched_seconds / n_eval / 60.0,
        "validation_gflop_per_eval": validation_flops(n_validation, 4 * n_validation, 4, DIM, config.rank) / 1e9,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K=256 only, one repeat")
    parser.add_argument("--objectives", default="spectral,infonce")
    parser.add_argument("--sizes", default="256,1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-validation", type=int, default=1500)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "proxy.json"))
    args = parser.parse_args(argv)
    sizes = [256] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    load_before = os.getloadavg()
    rates = matmul_rates(1000, BILINEAR["rank"])
    cases = []
    for n_players in sizes:
        removal_step = max(1, round(n_players / 50))  # ~51 evaluations per permutation, as in the pipeline
        for objective in args.objectives.split(","):
            case = run_case(n_players, objective, removal_step, args.n_validation, repeats, rates)
            cases.append(case)
            print(f"K={n_players} {objective}: batched {case['batched_evals_per_s']:.1f} eval/s, loop "
                  f"{case['loop_evals_per_s']:.1f} eval/s, {case['achieved_gflops_batched']:.1f} GFLOP/s; CPU ms/eval "
                  f"batched {case['cpu_ms_per_eval_batched']:.1f} loop {case['cpu_ms_per_eval_loop']:.1f}",
                  file=sys.stderr, flush=True)
    result = {
        "benchmark": "proxy", "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "matmul_gflops": rates, "cases": cases,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
