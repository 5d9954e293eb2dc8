"""Row 1 of issue 20: the Shapley engine at its DEFAULT call (no batch_size) vs the raw utility at its best batch.

Utilities: the additive game (n = 1000, ``masks @ w``), the logistic-regression utility of
``bench/shapley_bench.py`` (n = 50, 300 gradient steps) and the embedding proxy (default configuration,
random unit embeddings, multiple-choice validation, the pipeline's removal step n / 50). The raw side calls
``jit(utility)`` on prebuilt coalition masks shaped like the engine's (rows drawn uniformly from whole random
permutations) at several batch sizes and keeps the best; the engine side is ``shapley.monte_carlo(utility, n,
...)`` with the default batch (``shed_jax.sharding.default_batch_size``: the utility's preference, else the
memory rule) and the default chunk, its steady-state rate between its first and last chunk (compilation
excluded). Both are measured in every repeat, one after the other.
"""
from __future__ import annotations

import numpy as np

from bench.runner import Result


def permutation_masks(n_players: int, batch: int, removal_step: int, seed: int) -> np.ndarray:
    """(batch, n) bool: coalitions of random permutations (full set down to empty, step ``m``), ``batch`` rows
    drawn uniformly without replacement from whole permutations' rows, so that every batch has the coalition
    sizes of the engine's (a batch of the first rows only would over-weight the large coalitions of the last,
    partial permutation: 14% more members on average at n = 256, m = 5, batch 64, and a proxy's cost grows
    with the members)."""
    rng = np.random.default_rng(seed)
    sizes = list(range(n_players, -1, -removal_step))
    if sizes[-1] != 0:
        sizes.append(0)
    rows = []
    for _ in range(-(-batch // len(sizes))):
        rank = np.empty(n_players, np.int64)
        rank[rng.permutation(n_players)] = np.arange(n_players)
        rows.extend(rank < s for s in sizes)
    rows = np.stack(rows)
    return rows[np.sort(rng.choice(len(rows), batch, replace=False))]


def _engine_rate(utility, n_players, removal_step, n_permutations, permutations_per_chunk=None):
    from bench.shapley_bench import time_engine

    for _ in range(4):
        try:
            rate, cpu, total, res = time_engine(utility, n_players, n_permutations, None,
                                                removal_step=removal_step,
                                                permutations_per_chunk=permutations_per_chunk)
            return rate, cpu, res
        except RuntimeError:  # fewer than 3 chunks: more permutations
            n_permutations *= 4
    raise RuntimeError("the engine never ran 3 chunks")


def _raw_best(utility, n_players, removal_step, batches, reps):
    import jax.numpy as jnp

    from bench.shapley_bench import time_raw

    rates, cpus = {}, {}
    for batch in batches:
        masks = jnp.asarray(permutation_masks(n_players, batch, removal_step, seed=batch))
        rates[batch], cpus[batch] = time_raw(utility, masks, reps=reps)
    best = max(rates, key=rates.get)
    return rates[best], best, rates, min(cpus.values())


def _cases(quick: bool):
    import jax.numpy as jnp

    from bench.shapley_bench import LogisticRegressionUtility
    from shed_jax.proxies import EmbeddingProxyConfig, EmbeddingProxyUtility, ValidationEmbeddings

    rng = np.random.default_rng(0)
    n_add = 64 if quick else 1000
    w = jnp.asarray(rng.normal(size=n_add), jnp.float32)

    def additive(masks):
        return masks.astype(jnp.float32) @ w

    logreg = LogisticRegressionUtility(n_train=10 if quick else 50, steps=5 if quick else 300)

    k, n_val, d = (12, 16, 16) if quick else (256, 400, 384)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    prompts = unit(rng.normal(size=(k, d)))
    responses = unit(prompts + rng.normal(size=(k, d)))
    questions = unit(rng.normal(size=(n_val, d)))
    choices = unit(rng.normal(size=(n_val, 4, d)) + 0.3 * questions[:, None, :])
    validation = ValidationEmbeddings.multiple_choice(questions, choices, rng.integers(0, 4, n_val))
    proxy = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, EmbeddingProxyConfig())
    return [
        # name, utility, n, removal step, raw batches, raw reps, engine permutations, permutations per chunk
        ("additive", additive, n_add, 1, (256, 1024, 4096) if not quick else (256,), 20 if not quick else 3,
         64 if not quick else 40, None),
        ("logreg", logreg, logreg.n_players, 1, (512, 2048, 4096) if not quick else (256,),
         3 if not quick else 2, 2600 if not quick else 200, None),
        # the default chunk (16 batches): a forced small chunk (the first run used 4 permutations = 204 rows)
        # pads its last batch with coalitions that are evaluated and thrown away (204 rows in 4 x 64)
        ("proxy", proxy, k, max(1, round(k / 50)), (64, 256) if not quick else (16,), 2 if not quick else 1,
         60 if not quick else 6, None if not quick else 2),
    ]


def run(quick: bool, repeats: int) -> Result:
    cases = _cases(quick)
    config = {name: {"n_players": n, "removal_step": step, "raw_batches": list(batches),
                     "engine_permutations": perms, "engine_batch_size": "default (None)",
                     "engine_permutations_per_chunk": ppc or "default"}
              for name, _, n, step, batches, _, perms, ppc in cases}
    out = []
    info = {"raw_rates_by_batch": [], "notes": [
        "engine rate: steady state between its first and last chunk (compilation excluded)",
        "raw masks: rows drawn uniformly from whole permutations (the coalition sizes of the engine's batches)",
        "proxy: the default call (default batch and chunk); --quick forces small chunks"]}
    for repeat in range(repeats):
        row, by_batch = {}, {}
        for name, utility, n, step, batches, reps, perms, ppc in cases:
            raw, best_batch, rates, raw_cpu = _raw_best(utility, n, step, batches, reps)
            engine, engine_cpu, res = _engine_rate(utility, n, step, perms, ppc)
            row[f"{name}_raw_best_evals_per_s"] = raw
            row[f"{name}_raw_best_batch"] = best_batch
            row[f"{name}_engine_evals_per_s"] = engine
            row[f"{name}_engine_over_raw"] = engine / raw
            # process CPU seconds per evaluation, raw (its cheapest batch) over the engine's: far less
            # sensitive than wall time to other jobs on a loaded machine
            row[f"{name}_engine_over_raw_cpu"] = raw_cpu / engine_cpu
            by_batch[name] = {str(b): r for b, r in rates.items()}
        out.append(row)
        info["raw_rates_by_batch"].append(by_batch)
    return Result(config=config, repeats=out, info=info)
