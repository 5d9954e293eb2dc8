"""Throughput of the Monte Carlo Shapley engine (shed_jax.shapley.monte_carlo).

Two measurements (JSON to stdout and bench/results/shapley.json):

1. bookkeeping: n = 1000 players, removal_step = 1, trivial jitted utilities: the additive game
   (``where(masks, w, 0).sum``, and ``masks.astype(f32) @ w``) and a near-free one (count of players,
   ``masks.sum``). Reports the engine's steady-state coalitions/s next to the raw rate of the same utility on
   prebuilt ``(batch_size, n)`` masks.
2. logistic regression: 50 training points, utility = validation accuracy of an L2 logistic regression
   trained by full-batch gradient descent (300 steps) on the coalition's points, vmapped over the batch.
   Raw evaluations/s vs the engine's evaluations/s.

Process CPU time per coalition is reported too: it is far less sensitive than wall time to other jobs
sharing the machine (the load average before/after is recorded). Steady-state engine rates exclude compilation: they are measured between the first and the last chunk
(timestamps from the progress callback, which runs after each chunk's host sync).

Usage: python bench/shapley_bench.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from shed_jax import shapley


def time_raw(utility, masks, reps):
    """(evaluations/s, process CPU seconds per evaluation) of ``jit(utility)`` on a prebuilt batch
    (compile excluded)."""
    f = jax.jit(utility)
    jax.block_until_ready(f(masks))
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(reps):
        out = f(masks)
    jax.block_until_ready(out)
    n = reps * masks.shape[0]
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n


def time_engine(utility, n_players, n_permutations, batch_size, **kwargs):
    """(steady-state evaluations/s, CPU seconds per evaluation, end-to-end seconds, result) of monte_carlo."""
    stamps = []

    def progress(status):
        stamps.append((time.perf_counter(), status.n_evaluations, time.process_time()))

    start = time.perf_counter()
    res = shapley.monte_carlo(utility, n_players, n_permutations=n_permutations, batch_size=batch_size,
                              progress=progress, **kwargs)
    total = time.perf_counter() - start
    if len(stamps) < 3:
        raise RuntimeError("need at least 3 chunks for a steady-state rate; raise n_permutations")
    (t0, e0, c0), (t1, e1, c1) = stamps[0], stamps[-1]
    return (e1 - e0) / (t1 - t0), (c1 - c0) / (e1 - e0), total, res


class LogisticRegressionUtility:
    """Validation accuracy of L2 logistic regression trained by gradient descent on a coalition of points.

    ``__call__(masks (B, n_train) bool) -> (B,) float32``; every coalition is trained independently (vmap).
    """

    def __init__(self, n_train=50, n_val=200, n_features=8, steps=300, learning_rate=0.5, l2=1e-3, seed=0,
                 preferred_batch_size=2048):
        rng = np.random.default_rng(seed)
        w_true = rng.normal(size=n_features)
        x = rng.normal(size=(n_train + n_val, n_features))
        y = (x @ w_true + 0.5 * rng.normal(size=n_train + n_val) > 0).astype(np.float32)
        flip = rng.random(n_train) < 0.2           # label noise in the training points: some are harmful
        y[:n_train] = np.where(flip, 1 - y[:n_train], y[:n_train])
        self.x_train, self.y_train = jnp.asarray(x[:n_train], jnp.float32), jnp.asarray(y[:n_train])
        self.x_val, self.y_val = jnp.asarray(x[n_train:], jnp.float32), jnp.asarray(y[n_train:])
        self.n_players = n_train
        self.steps, self.learning_rate, self.l2 = steps, learning_rate, l2
        self.preferred_batch_size = preferred_batch_size

    def one(self, mask):
        weight = mask.astype(jnp.float32)
        weight = weight / jnp.maximum(weight.sum(), 1.0)

        def step(params, _):
            w, b = params
            p = jax.nn.sigmoid(self.x_train @ w + b)
            g = (p - self.y_train) * weight
            return (w - self.learning_rate * (self.x_train.T @ g + self.l2 * w),
                    b - self.learning_rate * g.sum()), None

        d = self.x_train.shape[1]
        (w, b), _ = jax.lax.scan(step, (jnp.zeros((d,), jnp.float32), jnp.float32(0)), None, length=self.steps)
        predicted = (self.x_val @ w + b) > 0
        return jnp.mean((predicted == (self.y_val > 0.5)).astype(jnp.float32))

    def __call__(self, masks):
        return jax.vmap(self.one)(masks)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    rng = np.random.default_rng(0)
    results = {"jax": jax.__version__, "devices": [str(d) for d in jax.local_devices()],
               "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "load_average_before": list(os.getloadavg())}

    n = 1000
    batch = 4096
    w = jnp.asarray(rng.normal(size=n), jnp.float32)
    masks = jnp.asarray(rng.random((batch, n)) < 0.5)
    utilities = {
        "additive_where_sum": lambda m: jnp.where(m, w[None, :], jnp.float32(0)).sum(axis=1),
        "additive_matmul": lambda m: m.astype(jnp.float32) @ w,
        "count": lambda m: m.sum(axis=1).astype(jnp.float32),
    }
    book = {"n_players": n, "removal_step": 1, "batch_size": batch}
    for name, utility in utilities.items():
        raw, raw_cpu = time_raw(utility, masks, reps=20)
        rate, cpu, total, res = time_engine(utility, n, int(600 * scale), batch)
        book[name] = {"raw_coalitions_per_s": raw, "engine_coalitions_per_s": rate,
                      "engine_over_raw": rate / raw,
                      "raw_cpu_us_per_coalition": raw_cpu * 1e6, "engine_cpu_us_per_coalition": cpu * 1e6,
                      "n_evaluations": res.n_evaluations, "end_to_end_seconds": total}
    results["bookkeeping_n1000"] = book

    lr = LogisticRegressionUtility()
    lr_batch = lr.preferred_batch_size
    lr_masks = jnp.asarray(rng.random((lr_batch, lr.n_players)) < 0.5)
    raw, raw_cpu = time_raw(lr, lr_masks, reps=max(2, int(10 * scale)))
    rate, cpu, total, res = time_engine(lr, lr.n_players, int(4000 * scale), None,
                                   permutations_per_chunk=8 * lr_batch // (lr.n_players - 1))
    results["logistic_regression"] = {
        "n_players": lr.n_players, "steps": lr.steps, "batch_size": lr_batch,
        "raw_evals_per_s": raw, "engine_evals_per_s": rate, "raw_over_engine": raw / rate,
        "raw_cpu_us_per_eval": raw_cpu * 1e6, "engine_cpu_us_per_eval": cpu * 1e6,
        "n_evaluations": res.n_evaluations, "end_to_end_seconds": total}
    results["load_average_after"] = list(os.getloadavg())

    text = json.dumps(results, indent=2)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "shapley.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
