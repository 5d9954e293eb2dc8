"""Row 6 of issue 20: the embedding proxy utility, one batched call vs a Python loop of single coalitions.

Wraps ``bench/proxy_bench.py``'s ``run_case`` (default proxy settings, rank-16 bilinear scorer there,
coalitions of one Shapley permutation at the pipeline's removal step), one call per repeat: both sides
are timed inside the call, after their warm-ups.
"""
from __future__ import annotations

import contextlib
import io

from bench.runner import Result


def run(quick: bool, repeats: int) -> Result:
    from bench import proxy_bench

    n_players, n_validation, objective = (16, 20, "infonce") if quick else (256, 1500, "infonce")
    removal_step = max(1, round(n_players / 50))
    with contextlib.redirect_stdout(io.StringIO()):
        rates = proxy_bench.matmul_rates(64 if quick else 1000, proxy_bench.BILINEAR["rank"])
    rows = []
    for _ in range(repeats):
        case = proxy_bench.run_case(n_players, objective, removal_step, n_validation, 1, rates)
        rows.append({"batched_over_loop": case["batched_over_loop"],
                     "batched_evals_per_s": case["batched_evals_per_s"],
                     "loop_evals_per_s": case["loop_evals_per_s"],
                     "achieved_gflops_batched": case["achieved_gflops_batched"]})
    config = {"n_players": n_players, "n_validation": n_validation, "objective": objective,
              "removal_step": removal_step, "scorer": proxy_bench.BILINEAR}
    return Result(config=config, repeats=rows,
                  info={"notes": ["useful FLOPs are analytic (real rows only): see bench/proxy_bench.py"]})
