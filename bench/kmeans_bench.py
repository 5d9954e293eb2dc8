"""Benchmark: shed_jax.cluster.kmeans vs scikit-learn KMeans(algorithm="lloyd") (and faiss if importable).

Data: a random mixture of ``--components`` Gaussians in ``--d`` dimensions with a decaying spectrum, rows
L2-normalised like sentence embeddings (see ``make_embeddings``). Both libraries start from the same initial
centroids (``--k`` distinct rows drawn uniformly with a fixed numpy seed) and run exactly ``--iters`` Lloyd
iterations (``max_iter=iters, tol=0``; either may stop earlier only on strict convergence, reported as
``n_iter``). Runs alternate jax / sklearn ``--repeats`` times so that load from other processes hits both
alike; min and median wall times (and process CPU seconds) are reported. JAX compile time is measured
separately (ahead-of-time ``lower().compile()`` of the jitted Lloyd loop) and a warm-up call is made before
timing, so the jax times exclude compilation.

Prints one JSON object to stdout and writes it to bench/results/kmeans.json.

    python bench/kmeans_bench.py                       # 50_000 x 384, K = 1000, 20 iterations
    python bench/kmeans_bench.py --n 5000 --k 100 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "kmeans.json"


def make_embeddings(n_rows: int, n_features: int, n_components: int, seed: int) -> np.ndarray:
    """(n_rows, n_features) float32 unit rows: a mixture of Gaussians with a decaying (power-law) spectrum.

    Feature j of the component means and of the within-component noise has scale 1 / (1 + j), like the
    decaying spectrum of sentence embeddings; noise as large as the means makes components overlap, so that
    Lloyd's algorithm is still moving after 20 iterations (isotropic mixtures converge in ~6-14 here, which
    would end both runs early).
    """
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / (1.0 + np.arange(n_features))
    means = rng.standard_normal((n_components, n_features)) * spectrum
    component = rng.integers(0, n_components, n_rows)
    x = means[component] + rng.standard_normal((n_rows, n_features)) * spectrum
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows")
    parser.add_argument("--d", type=int, default=384, help="features")
    parser.add_argument("--k", type=int, default=1000, help="clusters")
    parser.add_argument("--iters", type=int, default=20, help="Lloyd iterations (max_iter, tol=0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (alternating)")
    parser.add_argument("--components", type=int, default=1000, help="Gaussians in the data mixture")
    parser.add_argument("--chunk-size", type=int, default=None, help="jax rows per distance block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import sklearn
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    from shed_jax import cluster
    from shed_jax.kernels import kmeans as kernel

    chunk_size = args.chunk_size or kernel.DEFAULT_CHUNK_SIZE
    load_before = os.getloadavg()
    x = make_embeddings(args.n, args.d, args.components, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    init = x[rng.choice(args.n, args.k, replace=False)].copy()

    # Compile time, measured on its own (ahead-of-time lowering of the jitted Lloyd loop).
    start = time.perf_counter()
    cluster._lloyd.lower(
        jnp.asarray(x), jnp.asarray(init), jnp.int32(args.iters), jnp.float32(0.0), chunk_size=chunk_size
    ).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    cluster.kmeans(x, args.k, max_iter=args.iters, tol=0.0, init=init, chunk_size=chunk_size)  # warm-up
    jax_first_call_s = time.perf_counter() - start

    def timed(fn):
        """(wall seconds, process CPU seconds (user + system, all threads), fn())."""
        cpu_start, start = os.times(), time.perf_counter()
        value = fn()
        wall, cpu_end = time.perf_counter() - start, os.times()
        return wall, (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system), value

    def run_jax():
        return cluster.kmeans(x, args.k, max_iter=args.iters, tol=0.0, init=init, chunk_size=chunk_size)

    def run_sklearn():
        model = KMeans(n_clusters=args.k, init=init, n_init=1, max_iter=args.iters, tol=0.0, algorithm="lloyd")
        return model.fit(x)

    jax_times, sklearn_times, jax_cpu, sklearn_cpu = [], [], [], []
    for _ in range(args.repeats):
        seconds, cpu_seconds, jax_result = timed(run_jax)
        jax_times.append(seconds)
        jax_cpu.append(cpu_seconds)
        seconds, cpu_seconds, sk_model = timed(run_sklearn)
        sklearn_times.append(seconds)
        sklearn_cpu.append(cpu_seconds)

    faiss_report = None
    try:
        import faiss  # noqa: F401
    except ImportError:
        faiss_report = {"available": False}
    else:
        index_kmeans = faiss.Kmeans(args.d, args.k, niter=args.iters, seed=args.seed, verbose=False)
        start = time.perf_counter()
        index_kmeans.train(x, init_centroids=init)
        faiss_seconds = time.perf_counter() - start
        faiss_inertia = float(index_kmeans.index.search(x, 1)[0].sum())
        faiss_report = {"available": True, "time_s": faiss_seconds, "inertia": faiss_inertia,
                        "version": faiss.__version__}

    jax_min, sk_min = min(jax_times), min(sklearn_times)
    report = {
        "benchmark": "kmeans",
        "config": {"n": args.n, "d": args.d, "k": args.k, "iters": args.iters, "repeats": args.repeats,
                   "components": args.components, "chunk_size": chunk_size, "seed": args.seed,
                   "init": "k distinct data rows (numpy seed+1), shared", "tol": 0.0},
        "jax": {
            "time_s_min": jax_min,
            "time_s_median": statistics.median(jax_times),
            "times_s": jax_times,
            "cpu_s": jax_cpu,
            "compile_s": compile_s,
            "first_call_s": jax_first_call_s,
            "inertia": jax_result.inertia,
            "n_iter": jax_result.n_iter,
            "version": jax.__version__,
            "devices": [str(device) for device in jax.devices()],
        },
        "sklearn": {
            "time_s_min": sk_min,
            "time_s_median": statistics.median(sklearn_times),
            "times_s": sklearn_times,
            "cpu_s": sklearn_cpu,
            "inertia": float(sk_model.inertia_),
            "n_iter": int(sk_model.n_iter_),
            "version": sklearn.__version__,
            "threadpoolctl": threadpool_info(),
        },
        "faiss": faiss_report,
        "time_ratio_jax_over_sklearn": jax_min / sk_min,
        "time_ratio_median": statistics.median(jax_times) / statistics.median(sklearn_times),
        "inertia_ratio_jax_over_sklearn": jax_result.inertia / float(sk_model.inertia_),
        "label_agreement": float(np.mean(jax_result.labels == sk_model.labels_)),
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            **{name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "XLA_FLAGS")},
        },
    }
    print(json.dumps(report, indent=2))
    _write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()
