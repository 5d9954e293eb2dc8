"""Cluster stage: k-means over the candidates' embeddings; each cluster's proxy is its member nearest the
centroid (SHED's model-agnostic clustering). Writes :class:`~shed_jax.run.artifacts.Clusters` and the
:class:`~shed_jax.run.artifacts.Examples` a report shows."""
from __future__ import annotations

import numpy as np

from shed_jax._faults import fault_point
from shed_jax.errors import PipelineError
from shed_jax.run.artifacts import Clusters, Examples
from shed_jax.run.stage import Computed, Run, Stage, Started

__all__ = ["EXAMPLES_PER_CLUSTER", "TEXT_LIMIT", "STAGE", "examples_of"]

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


def _load(run: Run) -> tuple[Clusters, str]:
    n = len(run.inputs.dataset)
    rec = run.stages.record("cluster")
    clusters = Clusters.load(run.dir, inertia=rec.get("inertia"))
    if clusters.labels.shape != (n,):
        raise PipelineError(f"{clusters.labels.shape[0]} labels for {n} records; delete it",
                            path=run.run_dir / Clusters.FILENAME)
    if not (run.run_dir / Examples.FILENAME).is_file():  # derived from the clusters and the data: rebuilt
        examples_of(run.inputs.dataset, clusters).save(run.dir)
    return clusters, f"{clusters.n_clusters} clusters"


def _prepare(run: Run) -> Started:
    return Started(run.result("embed").embeddings)


def _compute(run: Run, embeddings: np.ndarray) -> Computed:
    from shed_jax import cluster as _cluster

    n = len(run.inputs.dataset)
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
    if not fit.converged:
        run.log(f"cluster: k-means did not converge in {fit.n_iter} iterations (inertia {fit.inertia:.4g})")
    return Computed(clusters, outputs=(clusters, examples_of(run.inputs.dataset, clusters)),
                    record={"n_clusters": k, "inertia": float(fit.inertia), "n_iter": int(fit.n_iter),
                            "converged": bool(fit.converged)},
                    done=f" ({fit.n_iter} iterations)")


STAGE = Stage("cluster", load=_load, prepare=_prepare, compute=_compute, files=(Clusters.FILENAME,))
