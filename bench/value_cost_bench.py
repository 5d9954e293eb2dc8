"""Wall time of the value stage's Shapley computation for K clusters x M proxies per cluster (issue 12, part c).

The default embedding proxy (its default configuration) values ``K * M`` players against the 400 MMLU-val
questions of ``bench/junk_mix.py`` (their sentence embeddings from the shared cache). The players' prompt and
response embeddings are random unit vectors (seeded): the proxy's cost does not depend on their content, and
embedding 16,000 dolly records twice would dominate this shared CPU for an hour; so the sentence-embedding of
the players' texts (a few seconds per thousand texts, cached on a re-run) is *not* in these numbers.

For each (K, M): one call with 1 permutation (compiles, then runs), then one with ``--timed`` permutations on the
same utility (compiled code reused). ``per_permutation = t_timed / timed`` and the 50-permutation (default)
time is extrapolated as ``compile + 50 * per_permutation`` with ``compile = t_1 - per_permutation``; the line
says ``"extrapolated": true``. ``os.getloadavg()`` is recorded: the CPU is shared, timings are noisy.

    .venv/bin/python bench/value_cost_bench.py --clusters 150,1000 --m 1,4,16 --timed 2
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_PERMUTATIONS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", default="150,1000")
    parser.add_argument("--m", default="1,4,16")
    parser.add_argument("--timed", type=int, default=2, help="permutations of the timed call")
    parser.add_argument("--valid", default=str(RESULTS / "junk_mix" / "valid.jsonl"))
    args = parser.parse_args()

    from shed_jax import data as shed_data
    from shed_jax import shapley
    from shed_jax.config import default_removal_step
    from functools import partial

    from shed_jax.embed import embed_texts, embedding_cache_dir
    from shed_jax.proxies.embedding import EmbeddingProxyConfig, EmbeddingProxyUtility, embed_validation

    validation = embed_validation(shed_data.read_validation(args.valid), progress=False,
                                  embed=partial(embed_texts, cache_dir=embedding_cache_dir()))
    dim = int(validation.query_emb.shape[1])
    for k in [int(v) for v in args.clusters.split(",")]:
        for m in [int(v) for v in args.m.split(",")]:
            n = k * m
            rng = np.random.default_rng(np.random.SeedSequence([k, m]))
            prompts, responses = (unit(rng.normal(size=(n, dim))) for _ in range(2))
            utility = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, EmbeddingProxyConfig(), seed=0)
            step = default_removal_step(n)
            load_before = os.getloadavg()
            start = time.perf_counter()
            shapley.monte_carlo(utility, n, n_permutations=1, removal_step=step, seed=0)
            first = time.perf_counter() - start
            start = time.perf_counter()
            res = shapley.monte_carlo(utility, n, n_permutations=args.timed, removal_step=step, seed=1)
            timed = time.perf_counter() - start
            per_permutation = timed / args.timed
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "part": "value_cost",
                      "n_clusters": k, "m": m, "n_players": n, "removal_step": step,
                      "evaluations_per_permutation": (res.n_evaluations - 2) / args.timed,
                      "seconds_first_call_1_permutation": round(first, 2),
                      f"seconds_{args.timed}_permutations": round(timed, 2),
                      "seconds_per_permutation": round(per_permutation, 3),
                      "value_seconds_at_50": round(max(first - per_permutation, 0) + DEFAULT_PERMUTATIONS * per_permutation, 1),
                      "extrapolated": True,
                      "loadavg_before": [round(v, 2) for v in load_before],
                      "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
            RESULTS.mkdir(parents=True, exist_ok=True)
            with open(RESULTS / "value_cost.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


if __name__ == "__main__":
    main()
