"""Row 3 of issue 20: shed_jax k-means vs scikit-learn's Lloyd, wrapping ``bench/kmeans_bench.py``.

Same data, same initial centroids, same number of iterations (tol = 0); the two run alternately inside
every repeat (``kmeans_bench`` alternates them), so the per-repeat ratio sees the same load on both sides.
Full: 50,000 x 384, K = 1,000, 20 iterations (the issue's case).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from bench.runner import Result


def run(quick: bool, repeats: int) -> Result:
    from bench import kmeans_bench

    shape = ["--n", "2000", "--d", "32", "--k", "20", "--iters", "5", "--components", "20"] if quick else []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        report = kmeans_bench.main(shape + ["--repeats", str(repeats), "--out", str(Path(tmp) / "kmeans.json")])
    jax_times, sk_times = report["jax"]["times_s"], report["sklearn"]["times_s"]
    rows = [{"jax_s": j, "sklearn_s": s, "jax_over_sklearn_time": j / s, "jax_cpu_s": jc, "sklearn_cpu_s": sc}
            for j, s, jc, sc in zip(jax_times, sk_times, report["jax"]["cpu_s"], report["sklearn"]["cpu_s"])]
    info = {"compile_s": report["jax"]["compile_s"], "inertia_ratio": report["inertia_ratio_jax_over_sklearn"],
            "label_agreement": report["label_agreement"], "n_iter": {"jax": report["jax"]["n_iter"],
                                                                     "sklearn": report["sklearn"]["n_iter"]},
            "faiss": report["faiss"],
            "notes": [f"inertia ratio jax/sklearn {report['inertia_ratio_jax_over_sklearn']:.6f}, label agreement "
                      f"{report['label_agreement']:.4f}; faiss: "
                      f"{'not installed' if not report['faiss'].get('available') else report['faiss']}"]}
    return Result(config=report["config"], repeats=rows, info=info)
