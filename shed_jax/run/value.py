"""Value stage: Monte Carlo Shapley values of the Shapley players (each cluster's proxy, or its
``proxies_per_cluster`` members nearest the centroid) under the chosen proxy's utility.

The proxy is looked up in :mod:`shed_jax.proxies.registry` and built from :class:`ProxyInputs`; this module
names no proxy. With several players per cluster the engine is given each player's cluster (``groups``), so a
cluster's value and standard error come from the per-permutation mean of its members' marginals (exact; the
members share permutations, so their errors are correlated).

``--proxies-per-cluster auto``: M is resolved from the player budget before any stage runs
(:meth:`shed_jax.run.inputs.RunInputs.proxies_per_cluster`); when the proxy can estimate its cost
(``utility.estimate_seconds(n_evaluations)``, assumed proportional to the evaluations), it is lowered here to
the largest M whose estimated time fits ``--value-time-budget``. The M used is printed and recorded in
``stages.json`` (``value.proxies_per_cluster``) and ``values.json``; ``--resume`` of an interrupted valuation
reuses it instead of estimating again.

The estimator state is checkpointed in ``RUN_DIR/shapley_ckpt`` (orbax), so ``--resume``
continues an interrupted valuation. Writes :class:`~shed_jax.run.artifacts.Values` and
:class:`~shed_jax.run.artifacts.Convergence`.
"""
from __future__ import annotations

import shutil
import time

import numpy as np

from shed_jax.io import finite_or_none
from shed_jax.progress import bar as progress_bar
from shed_jax.progress import format_duration
from shed_jax.run.artifacts import Clusters, Convergence, MemberValues, Values
from shed_jax.run.stage import Run, StageResult

__all__ = ["CHECKPOINT_DIR", "cluster_means", "players", "proxy_inputs", "run_stage"]

CHECKPOINT_DIR = "shapley_ckpt"


def cluster_means(member_values: np.ndarray, member_stderr: np.ndarray, owners: np.ndarray, n_clusters: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster mean of the players' values (last axis) and its standard error.

    The standard error combines the players' standard errors as if independent,
    ``sqrt(sum se_i^2) / n_k``: the players' estimates share permutations, so it is approximate. With one
    player per cluster both are the players' own, reordered by cluster, and that is all the value stage uses it
    for: with several players per cluster it takes the engine's exact group estimates
    (``monte_carlo(..., groups=...)``).
    """
    owners = np.asarray(owners, np.int64)
    if owners.size and (owners.min() < 0 or owners.max() >= n_clusters):
        raise ValueError(f"owners must lie in [0, {n_clusters})")
    counts = np.bincount(owners, minlength=n_clusters).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError(f"clusters without a valued member: {np.flatnonzero(counts == 0)[:10].tolist()}")
    order = np.argsort(owners, kind="stable")
    starts = np.searchsorted(owners[order], np.arange(n_clusters))  # every cluster has >= 1 member
    with np.errstate(invalid="ignore"):  # NaN standard errors (too few permutations yet) stay NaN
        values = np.add.reduceat(np.asarray(member_values, np.float64)[..., order], starts, axis=-1) / counts
        variance = np.add.reduceat(np.asarray(member_stderr, np.float64)[..., order] ** 2, starts, axis=-1)
        stderr = np.sqrt(variance) / counts
    return values, stderr


def players(run: Run, clusters: Clusters, per_cluster: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(index, cluster)`` of the Shapley players: each cluster's proxy, then (with
    ``per_cluster > 1``; default the run's resolved proxies per cluster) its next members nearest the centroid."""
    per_cluster = int(run.inputs.proxies_per_cluster if per_cluster is None else per_cluster)
    if per_cluster == 1:
        proxy_index = np.asarray(clusters.proxy_index, np.int64)
        return proxy_index, np.arange(proxy_index.shape[0], dtype=np.int64)
    from shed_jax import cluster as _cluster

    embeddings = run.result("embed").embeddings
    return _cluster.representatives(embeddings, clusters.centroids, clusters.labels, per_cluster,
                                    proxy_index=clusters.proxy_index)


def proxy_inputs(run: Run, member_index: np.ndarray):
    """The :class:`shed_jax.proxies.ProxyInputs` of the players ``member_index``."""
    from shed_jax.proxies import ProxyInputs
    from shed_jax.run.embed import embedder

    dataset = run.inputs.dataset
    index = [int(i) for i in member_index]
    embed_result = run._results.get("embed")
    embeddings = (embed_result.embeddings[np.asarray(index, np.int64)] if embed_result is not None
                  else np.zeros((len(index), 0), np.float32))
    return ProxyInputs(prompts=tuple(dataset.prompts[i] for i in index),
                       responses=tuple(dataset.responses[i] for i in index),
                       records=tuple(dataset.records[i] for i in index),
                       record_index=np.asarray(index, np.int64), embeddings=embeddings,
                       validation=run.inputs.validation, embed=embedder(run), seed=int(run.config.seed),
                       progress=run.progress)


def checkpointed_samples(ckpt_dir) -> int:
    """Samples (permutations, or antithetic pairs) in the newest complete checkpoint step, 0 if none.

    Orbax names a finished step's directory by its step number and writes unfinished ones under temporary
    names, so only complete steps count.
    """
    steps = [int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit()] if ckpt_dir.is_dir() else []
    return max(steps, default=0)


def expected_evaluations(n_players: int, removal_step: int, n_permutations: int) -> int:
    """Utility evaluations of a run: ``n_players // removal_step`` per permutation, plus U(full) and U(empty)."""
    return n_permutations * max(1, n_players // removal_step) + 2


def _estimate_seconds(utility, n_players: int, removal_step: int, n_permutations: int) -> float | None:
    """The utility's own estimate of the value stage's seconds, or None when it cannot estimate its cost."""
    estimate = getattr(utility, "estimate_seconds", None)
    if not callable(estimate):
        return None
    return float(estimate(expected_evaluations(n_players, removal_step, n_permutations)))


def _log_estimate(run: Run, utility, seconds: float | None, n_players: int, removal_step: int,
                  n_permutations: int) -> None:
    """Log the estimated time of the value stage before it starts, and on a CPU suggest the embedding proxy
    when it is hours. ``seconds`` is the utility's own estimate (``estimate_seconds(n_evaluations)``) when it
    has one; otherwise the utility is timed through the Shapley engine for one chunk after a compiling call
    (:func:`shed_jax.run.estimate.time_shapley`) unless ``SHED_ESTIMATE=0``."""
    from shed_jax.run import estimate as _estimate

    n_evaluations = expected_evaluations(n_players, removal_step, n_permutations)
    if seconds is None:
        if not _estimate.estimate_enabled():
            return
        seconds = _estimate.time_shapley(utility, n_players, removal_step=removal_step, n_permutations=n_permutations,
                                         batch_size=run.config.shapley_batch_size, seed=int(run.config.seed))["seconds"]
    run.log(f"value: about {n_evaluations:,} utility evaluations, estimated {format_duration(seconds)} on this machine")
    from shed_jax.budget_advice import over_budget_lines  # issue 21: settings that would fit the time budget

    advice = over_budget_lines(utility, seconds, n_evaluations, n_permutations, run.config)
    for line in advice:
        run.log(line)
    import jax

    if not advice and seconds > 3600 and jax.default_backend() == "cpu" and run.config.proxy != "embedding":
        run.log("value: that is hours on a CPU; `--proxy embedding` values the same players in minutes, or use "
                "fewer permutations (--permutations), a larger --removal-step, or a GPU")


def _fit_time_budget(run: Run, clusters: Clusters, per_cluster: int, n_players: int, removal_step: int,
                     seconds: float | None) -> int:
    """``auto``: the largest M <= ``per_cluster`` whose estimated time fits ``--value-time-budget`` (scaling the
    estimate for ``n_players`` by the evaluations), or ``per_cluster`` when the utility cannot estimate."""
    if seconds is None:
        return per_cluster
    from shed_jax.config import auto_proxies_per_cluster

    cfg, k = run.config, clusters.n_clusters
    per_evaluation = seconds / expected_evaluations(n_players, removal_step, cfg.n_permutations)

    labels = np.asarray(clusters.labels)
    sizes = np.maximum(np.bincount(labels[labels >= 0], minlength=k), 1)  # an empty cluster keeps its proxy

    def fits(m: int) -> bool:
        if m > per_cluster:
            return False
        players_m = int(np.minimum(sizes, m).sum())  # representatives(): all members of a smaller cluster
        evaluations = expected_evaluations(players_m, cfg.resolved_removal_step(k, m), cfg.n_permutations)
        return per_evaluation * evaluations <= cfg.value_time_budget

    return auto_proxies_per_cluster(k, run.inputs.n_candidates, max_players=cfg.value_player_budget, fits=fits)


def _log_auto(run: Run, k: int, per_cluster: int, n_players: int, seconds: float | None) -> None:
    cfg = run.config
    within = f"the budget of {cfg.value_player_budget:,} players (--max-players)"
    if seconds is not None:
        within += f" and {format_duration(cfg.value_time_budget)} (--value-time-budget; estimated {format_duration(seconds)})"
    run.log(f"value: proxies per cluster: auto -> {per_cluster} (K={k}, {n_players:,} players within {within})")


def _number(value) -> float | None:
    return None if value is None else finite_or_none(float(value))


def run_stage(run: Run) -> StageResult:
    fp = run.inputs.fingerprints["value"]
    ckpt_dir = run.run_dir / CHECKPOINT_DIR
    if run.is_up_to_date("value", Values.FILENAME):
        values = Values.load(run.dir)
        run.log(f"value: up to date ({values.n_permutations} permutations); loaded {Values.FILENAME}")
        run.stages.skipped("value", fp)
        return StageResult("value", values, fp, True, 0.0)

    clusters = run.result("cluster").artifact
    rec = run.stages.record("value")
    continuing = run.resume and rec.get("status") == "running" and rec.get("fingerprint") == fp and ckpt_dir.is_dir()
    if ckpt_dir.exists() and not continuing:
        if rec.get("status") == "running" and rec.get("fingerprint") == fp:
            run.log("value: discarding the partial Shapley run in shapley_ckpt/ (pass --resume to continue it)")
        shutil.rmtree(ckpt_dir)
    run.stages.started("value", fp, event="resumed" if continuing else "started")
    start = time.perf_counter()
    from shed_jax.proxies import registry

    def build(per_cluster):
        member_index, owners = players(run, clusters, per_cluster)
        return member_index, owners, registry.get(run.config.proxy).factory(proxy_inputs(run, member_index),
                                                                            run.inputs.proxy_config())

    k, n_perm = clusters.n_clusters, run.config.n_permutations
    recorded = rec.get("proxies_per_cluster") if continuing else None
    per_cluster = int(recorded) if recorded else run.inputs.proxies_per_cluster
    member_index, owners, utility = build(per_cluster)
    step = run.config.resolved_removal_step(k, per_cluster)
    seconds_estimate = _estimate_seconds(utility, int(member_index.shape[0]), step, n_perm)
    if run.config.proxies_per_cluster == "auto" and not recorded:
        lowered = _fit_time_budget(run, clusters, per_cluster, int(member_index.shape[0]), step, seconds_estimate)
        if lowered != per_cluster:
            before = expected_evaluations(int(member_index.shape[0]), step, n_perm)
            per_cluster = lowered
            member_index, owners, utility = build(per_cluster)
            step = run.config.resolved_removal_step(k, per_cluster)
            # scaled, not measured again (the LM proxy's estimate times a round of fine-tunes)
            seconds_estimate *= expected_evaluations(int(member_index.shape[0]), step, n_perm) / before
        _log_auto(run, k, per_cluster, int(member_index.shape[0]), seconds_estimate)
    run.stages.note("value", proxies_per_cluster=per_cluster)
    n_players = int(member_index.shape[0])
    if step > n_players:  # clusters smaller than M are valued whole: fewer players than K x M
        from shed_jax.errors import PipelineError

        raise PipelineError(f"{step} is larger than the number of players ({n_players:,}: up to {per_cluster} per "
                            f"cluster, K={k}, smaller clusters valued whole); give a smaller --removal-step or "
                            f"more --proxies-per-cluster", field="--removal-step")
    who = (f"K={k} proxies" if n_players == k
           else f"{n_players} proxies (up to {per_cluster} per cluster, K={k})")
    resumed_from = checkpointed_samples(ckpt_dir) if continuing else 0
    if continuing and resumed_from == 0:
        resume_note = " (--resume: shapley_ckpt/ holds no complete checkpoint; starting from permutation 0)"
    elif continuing:
        resume_note = f" (resuming from the checkpoint in shapley_ckpt/: {resumed_from} samples done)"
    else:
        resume_note = ""
    run.log(f"value: Monte Carlo Shapley over {who}, {n_perm} permutations, removal step {step}{resume_note}")
    _log_estimate(run, utility, seconds_estimate, n_players, step, n_perm)
    from shed_jax import shapley as _shapley

    grouped = n_players != k
    shapley_bar = progress_bar(n_perm, f"Shapley: {n_perm:,} permutations", unit="perm", enabled=run.progress)
    kwargs = dict(n_permutations=n_perm, removal_step=step, seed=run.config.seed, checkpoint_dir=str(ckpt_dir),
                  progress=lambda status: shapley_bar.set(status.n_permutations), history_every=max(1, n_perm // 100))
    if grouped:
        kwargs.update(groups=owners, n_groups=k)
    if run.config.shapley_batch_size is not None:
        kwargs["batch_size"] = run.config.shapley_batch_size
    try:
        estimate = _shapley.monte_carlo(utility, n_players, **kwargs)
    except _shapley.MissingGroupStateError:
        run.log("value: the checkpoint in shapley_ckpt/ was written without per-cluster state (an older shed_jax); "
                "discarding it and starting from permutation 0")
        shutil.rmtree(ckpt_dir)
        estimate = _shapley.monte_carlo(utility, n_players, **kwargs)
    finally:
        shapley_bar.close()
    member_values = np.asarray(estimate.values, dtype=np.float64)
    member_stderr = np.asarray(estimate.stderr, dtype=np.float64)
    if grouped:  # exact: the per-permutation cluster means, from the engine
        cluster_values = np.asarray(estimate.group_values, dtype=np.float64)
        stderr = np.asarray(estimate.group_stderr, dtype=np.float64)
    else:
        cluster_values, stderr = cluster_means(member_values, member_stderr, owners, k)
    description = {key: v for key, v in utility.describe().items() if key != "proxy"} \
        if callable(getattr(utility, "describe", None)) else {"class": type(utility).__name__}
    if description.get("diverged_fine_tunes"):
        run.log(f"value: {description['diverged_fine_tunes']} fine-tune(s) diverged and were retried at a tenth of "
                f"the learning rate; {description.get('diverged_counted_as_empty', 0)} counted as U(empty) "
                f"(recorded in values.json)")
    values = Values(cluster_values, stderr, int(estimate.n_permutations), int(estimate.n_evaluations), step,
                    run.config.seed, {"proxy": run.config.proxy, **description},
                    _number(getattr(estimate, "u_full", None)), _number(getattr(estimate, "u_empty", None)),
                    np.asarray(clusters.proxy_index, np.int64), int(per_cluster),
                    MemberValues(member_index, owners, member_values, member_stderr) if n_players != k else None)
    history = getattr(estimate, "history", None)
    if history and grouped:
        Convergence(np.asarray(history["n_permutations"]), np.asarray(history["group_values"], np.float64),
                    np.asarray(history["group_stderr"], np.float64)).save(run.dir)
    elif history:
        history_values, history_stderr = cluster_means(np.asarray(history["values"], np.float64),
                                                       np.asarray(history["stderr"], np.float64), owners, k)
        Convergence(np.asarray(history["n_permutations"]), history_values, history_stderr).save(run.dir)
    values.save(run.dir)
    seconds = time.perf_counter() - start
    run.log(f"value: done in {format_duration(seconds)} ({values.n_evaluations:,} utility evaluations)")
    run.stages.finished("value", fp, seconds, n_permutations=values.n_permutations,
                        n_evaluations=values.n_evaluations, proxies_per_cluster=int(per_cluster))
    return StageResult("value", values, fp, False, seconds)
