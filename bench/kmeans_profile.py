"""Where the time of one k-means run goes: shed_jax's Lloyd phases, per row-chunk size, next to scikit-learn.

For each ``--chunk-sizes`` value, in one process and alternating with scikit-learn's Lloyd (same data, same
initial centroids, ``--iters`` iterations, tol = 0) every repeat:

* ``gemm_s``: the chunked assignment GEMM alone (``x_block @ centroids.T`` over the ``N // chunk`` whole row
  chunks, no argmin);
* ``assign_s``: one full assignment (``kernels.kmeans.assign_labels``: GEMM + nearest-centroid reduction);
* ``update_s``: one centroid update (``cluster._update_centroids``: segment sums, counts, empty-cluster check);
* ``lloyd_s``: the whole jitted Lloyd loop (``cluster._lloyd``), and ``sklearn_s`` for scikit-learn's.

Also per-thread CPU seconds of one Lloyd run and of one scikit-learn run (``/proc/self/task``), which shows
how many cores each side keeps busy. Minimum over repeats per phase; every repeat is in the JSON.
Compilation happens before timing (a warm-up call per function).

    python bench/kmeans_profile.py                            # 50_000 x 384, K = 1000, 20 iterations
    python bench/kmeans_profile.py --chunk-sizes 256 1024 --repeats 3
    python bench/kmeans_profile.py --chunk-sizes 512 1024 --xla-option \
        xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE

``--xla-option KEY=VALUE`` (repeatable) compiles shed_jax's phases with that XLA compiler option (per ``jit``, as
``jax.jit(..., compiler_options=...)`` would; scikit-learn is unaffected): run once with and once without it to
compare on a quiet machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "kmeans_profile.json"


def thread_cpu() -> dict:
    """{thread id: (CPU seconds, name)} of this process's threads (Linux /proc; empty elsewhere)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        out[tid] = ((int(fields[11]) + int(fields[12])) / tick, name)
    return out


def busy_threads(before: dict, after: dict, floor: float = 0.05) -> list:
    """[(CPU seconds, thread name)] of the threads that used more than ``floor`` seconds in between."""
    used = [(round(after[t][0] - before.get(t, (0.0,))[0], 3), after[t][1]) for t in after]
    return sorted((u for u in used if u[0] > floor), reverse=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--components", type=int, default=1000)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                        help="XLA compiler option for shed_jax's phases (repeatable)")
    args = parser.parse_args(argv)
    xla_options = {}
    for item in args.xla_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--xla-option must be KEY=VALUE, got {item!r}")
        xla_options[key] = value

    import jax
    import jax.numpy as jnp
    from jax import lax
    from sklearn.cluster import KMeans

    from bench.kmeans_bench import _write_json_atomic, make_embeddings
    from shed_jax import cluster
    from shed_jax.kernels import kmeans as kernel

    load_before = os.getloadavg()
    x = make_embeddings(args.n, args.d, args.components, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    init = x[rng.choice(args.n, args.k, replace=False)].copy()
    x_dev, init_dev = jnp.asarray(x), jnp.asarray(init)

    def gemm_only(x, centroids, chunk):
        centroids_t = centroids.T
        n_chunks = x.shape[0] // chunk

        def body(i, acc):
            block = lax.dynamic_slice_in_dim(x, i * chunk, chunk, 0)
            return acc + jnp.dot(block, centroids_t, precision=lax.Precision.HIGHEST)[:, 0].sum()
        return lax.fori_loop(0, n_chunks, body, jnp.float32(0))

    labels0 = kernel.assign_labels(x_dev, init_dev)
    update = jax.jit(lambda x, labels, c: cluster._update_centroids(x, labels, c, args.k))
    phases = {}
    for chunk in args.chunk_sizes:
        phases[chunk] = {
            "gemm_s": (jax.jit(functools.partial(gemm_only, chunk=min(chunk, args.n))), (x_dev, init_dev)),
            "assign_s": (jax.jit(kernel.assign_labels, static_argnames="chunk_size"), (x_dev, init_dev),
                         {"chunk_size": chunk}),
            "update_s": (update, (x_dev, labels0, init_dev)),
            "lloyd_s": (cluster._lloyd, (x_dev, init_dev, jnp.int32(args.iters), jnp.float32(0.0)),
                        {"chunk_size": chunk}),
        }

    compiled = {}

    def call(spec):
        fn, fn_args, kwargs = spec if len(spec) == 3 else (*spec, {})
        if not xla_options:
            return jax.block_until_ready(fn(*fn_args, **kwargs))
        key = (id(fn), tuple(sorted(kwargs.items())), len(fn_args))
        if key not in compiled:  # ahead-of-time compile with the options (static kwargs bound at lowering)
            compiled[key] = fn.lower(*fn_args, **kwargs).compile(compiler_options=xla_options)
        return jax.block_until_ready(compiled[key](*fn_args))

    def run_sklearn():
        return KMeans(n_clusters=args.k, init=init, n_init=1, max_iter=args.iters, tol=0.0,
                      algorithm="lloyd").fit(x)

    for specs in phases.values():  # compile + warm up
        for spec in specs.values():
            call(spec)
    run_sklearn()

    times = {chunk: {name: [] for name in specs} for chunk, specs in phases.items()}
    sklearn_times, threads = [], {}
    for repeat in range(args.repeats):
        for chunk, specs in phases.items():
            for name, spec in specs.items():
                before = thread_cpu()
                start = time.perf_counter()
                call(spec)
                times[chunk][name].append(time.perf_counter() - start)
                if name == "lloyd_s" and repeat == 0:
                    threads[f"jax_lloyd_chunk{chunk}"] = busy_threads(before, thread_cpu())
        before = thread_cpu()
        start = time.perf_counter()
        model = run_sklearn()
        sklearn_times.append(time.perf_counter() - start)
        if repeat == 0:
            threads["sklearn"] = busy_threads(before, thread_cpu())

    lloyd_labels = {chunk: np.asarray(call(phases[chunk]["lloyd_s"])[1]) for chunk in args.chunk_sizes}
    first = lloyd_labels[args.chunk_sizes[0]]
    sk_min = min(sklearn_times)
    report = {
        "benchmark": "kmeans_profile",
        "config": {**{k: getattr(args, k) for k in ("n", "d", "k", "iters", "components", "chunk_sizes", "repeats",
                                                     "seed")}, "xla_options": xla_options},
        "per_chunk_size": {
            str(chunk): {**{name: {"min": min(v), "times": v} for name, v in times[chunk].items()},
                         "lloyd_over_sklearn_min": min(times[chunk]["lloyd_s"]) / sk_min,
                         "labels_equal_first_chunk_size": bool(np.array_equal(lloyd_labels[chunk], first))}
            for chunk in args.chunk_sizes},
        "sklearn_s": {"min": sk_min, "times": sklearn_times, "n_iter": int(model.n_iter_)},
        "busy_threads_cpu_s": threads,
        "jax": jax.__version__, "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS"),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))
    _write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()
