"""Cluster stage: k-means over the candidates' embeddings; each cluster's proxy is its member nearest the
centroid (SHED's model-agnostic clustering). Writes :class:`~shed_jax.run.artifacts.Clusters` and the
:class:`~shed_jax.run.artifacts.Examples` a report shows."""
from __future__ import annotations

import time

import numpy as np

from shed_jax._faults import fault_point
from shed_jax.errors import PipelineError
from shed_jax.progress import format_duration
from shed_jax.run.artifacts import Clusters, Examples
from shed_jax.run.stage import Run, StageResult

__all__ = ["EXAMPLES_PER_CLUSTER", "TEXT_LIMIT", "examples_of", "run_stage"]

EXAMPLES_PER_CLUSTER = 3
TEXT_LIMIT = 400


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def examples_of(dataset, clusters: Clusters, per_cluster: int = EXAMPLES_PER_CLUSTER) -> Examples:
    """Each cluster's proxy, then its other members in record order (``per_cluster`` in all), and the
    records' categories when every record has a ``category`` field."""
    labels = np.asarray(clusters.labels)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(clusters.n_clusters + 1))
    members = []
    for k in range(clusters.n_clusters):  # K small lists, once per clustering (not a hot path)
        proxy = int(clusters.proxy_index[k])
        rest = [int(i) for i in order[starts[k]: starts[k + 1]][:per_cluster + 1] if int(i) != proxy]
        members.append([{"index": i, "prompt": _cut(dataset.prompts[i]), "response": _cut(dataset.responses[i])}
                        for i in ([proxy] + rest)[:per_cluster]])
    categories = dataset.category("category")
    if categories is None:
        return Examples(members)
    names, codes = np.unique(np.asarray(categories, dtype=object), return_inverse=True)
    return Examples(members, [str(n) for n in names], [int(c) for c in codes])


def run_stage(run: Run) -> StageResult:
    fp = run.inputs.fingerprints["cluster"]
    n = len(run.inputs.dataset)
    if run.is_up_to_date("cluster", Clusters.FILENAME):
        rec = run.stages.record("cluster")
        clusters = Clusters.load(run.dir, inertia=rec.get("inertia"))
        if clusters.labels.shape != (n,):
            raise PipelineError(f"{clusters.labels.shape[0]} labels for {n} records; delete it",
                                path=run.run_dir / Clusters.FILENAME)
        if not (run.run_dir / Examples.FILENAME).is_file():
            examples_of(run.inputs.dataset, clusters).save(run.dir)
        run.log(f"cluster: up to date ({clusters.n_clusters} clusters); loaded {Clusters.FILENAME}")
        run.stages.skipped("cluster", fp)
        return StageResult("cluster", clusters, fp, True, 0.0)

    from shed_jax import cluster as _cluster

    embeddings = run.result("embed").embeddings
    run.stages.started("cluster", fp)
    start = time.perf_counter()
    candidates = np.flatnonzero(run.inputs.candidate_mask)
    k = run.inputs.n_clusters
    run.log(f"cluster: k-means K={k:,} on {candidates.size:,} candidate records")
    fit = _cluster.kmeans(embeddings[candidates], k, seed=run.config.seed, max_iter=run.config.kmeans_max_iter)
    local_labels = np.asarray(fit.labels, dtype=np.int32)
    local_proxies = np.asarray(_cluster.proxies(embeddings[candidates], fit.centroids, local_labels), dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int32)
    labels[candidates] = local_labels
    clusters = Clusters(np.asarray(fit.centroids, dtype=np.float32), labels, candidates[local_proxies].astype(np.int64),
                        float(fit.inertia), int(fit.n_iter), bool(fit.converged))
    fault_point("kmeans")  # testing hook (shed_jax._faults)
    clusters.save(run.dir)
    examples_of(run.inputs.dataset, clusters).save(run.dir)
    seconds = time.perf_counter() - start
    if not fit.converged:
        run.log(f"cluster: k-means did not converge in {fit.n_iter} iterations (inertia {fit.inertia:.4g})")
    run.log(f"cluster: done in {format_duration(seconds)} ({fit.n_iter} iterations)")
    run.stages.finished("cluster", fp, seconds, n_clusters=k, inertia=float(fit.inertia), n_iter=int(fit.n_iter),
                        converged=bool(fit.converged))
    return StageResult("cluster", clusters, fp, False, seconds)
