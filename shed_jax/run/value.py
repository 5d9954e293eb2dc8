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

import json
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from shed_jax.io import finite_or_none
from shed_jax.progress import bar as progress_bar
from shed_jax.progress import format_duration
from shed_jax.run.artifacts import Clusters, Convergence, MemberValues, Values
from shed_jax.run.stage import Computed, Run, Stage, Started

__all__ = ["CHECKPOINT_DIR", "ValuePlan", "check_checkpoint", "cluster_means", "expected_evaluations", "plan_value",
           "players", "proxy_inputs", "STAGE", "valuation_key", "valuation_options"]

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
    embeddings = run.result("embed").embeddings if per_cluster > 1 else None
    return _players_of(clusters, per_cluster, embeddings)


def _players_of(clusters: Clusters, per_cluster: int, embeddings) -> tuple[np.ndarray, np.ndarray]:
    if per_cluster == 1:
        proxy_index = np.asarray(clusters.proxy_index, np.int64)
        return proxy_index, np.arange(proxy_index.shape[0], dtype=np.int64)
    from shed_jax import cluster as _cluster

    return _cluster.representatives(embeddings, clusters.centroids, clusters.labels, per_cluster,
                                    proxy_index=clusters.proxy_index)


def proxy_inputs(run: Run, member_index: np.ndarray):
    """The :class:`shed_jax.proxies.ProxyInputs` of the players ``member_index``. ``embeddings`` are always the
    players' rows of the embed stage's ``(N, d)`` embeddings (loaded from the cache when the embed stage ran in
    another command), so a proxy gets the same inputs under ``refine`` and ``value``."""
    from shed_jax.proxies import ProxyInputs
    from shed_jax.run.embed import embedder

    dataset = run.inputs.dataset
    index = np.asarray(member_index, np.int64)
    embeddings = np.asarray(run.result("embed").embeddings, np.float32)[index]
    return ProxyInputs(prompts=tuple(dataset.prompts[int(i)] for i in index),
                       responses=tuple(dataset.responses[int(i)] for i in index),
                       records=tuple(dataset.records[int(i)] for i in index),
                       record_index=index, embeddings=embeddings,
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
    """Utility evaluations of a run: :func:`shed_jax.shapley.expected_evaluations`, the count the engine uses
    (``ceil(n_players / removal_step) - 1`` per permutation, plus U(full) and U(empty))."""
    from shed_jax.shapley import expected_evaluations as _engine_count

    return _engine_count(n_players, removal_step, n_permutations)


# --------------------------------------------------------------------------------------------------
# the value plan: what the value stage will do, shared by the stage and --dry-run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ValuePlan:
    """What the value stage does, resolved: the one description that the stage runs and ``--dry-run`` prints.

    Attributes:
      proxies_per_cluster: M actually used (``auto`` resolved under the player budget, then lowered to fit
        ``--value-time-budget`` when the proxy estimates its cost).
      member_index, owners: ``(P,)`` int64 record index and cluster of each player (stand-ins from the first
        candidates, ``K x M`` of them, when the clusters are not known yet: a dry run before clustering).
      removal_step: the removal step for these players.
      n_permutations: permutations requested.
      n_evaluations: utility evaluations (:func:`shed_jax.shapley.expected_evaluations`; the engine's count).
      utility: the proxy's utility over the players, built from ``proxy_inputs``.
      seconds: the utility's own estimate of the stage's seconds (``estimate_seconds``), or None.
      calibration: how ``seconds`` was obtained.
      budget_proxies_per_cluster: M under the player budget alone (before the time budget).
      clusters_known: whether the players are the real ones.
    """

    proxies_per_cluster: int
    member_index: np.ndarray
    owners: np.ndarray
    n_clusters: int
    removal_step: int
    n_permutations: int
    n_evaluations: int
    utility: Any
    proxy_inputs: Any
    seconds: float | None
    calibration: dict
    budget_proxies_per_cluster: int
    clusters_known: bool

    @property
    def n_players(self) -> int:
        return int(self.member_index.shape[0])

    def to_dict(self) -> dict:
        return {"proxies_per_cluster": self.proxies_per_cluster, "n_players": self.n_players,
                "n_clusters": self.n_clusters, "removal_step": self.removal_step,
                "n_permutations": self.n_permutations, "n_evaluations": self.n_evaluations,
                "seconds": self.seconds, "budget_proxies_per_cluster": self.budget_proxies_per_cluster,
                "players_known": self.clusters_known}


def plan_value(config, inputs, clusters: Clusters | None, *, make_inputs: Callable[[np.ndarray], Any],
               embeddings=None, proxies_per_cluster: int | None = None, estimate: bool = True,
               log: Callable[[str], None] | None = None) -> ValuePlan:
    """The :class:`ValuePlan` of a run with ``config`` over ``inputs`` (:class:`~shed_jax.run.inputs.RunInputs`).

    Args:
      clusters: the run's clusters, or None before clustering (``--dry-run``): then each of the K clusters is
        assumed to hold at least M candidates (``K x M`` players, stand-ins from the first candidates).
      make_inputs: ``member_index -> ProxyInputs`` of those players.
      embeddings: ``(N, d)`` embeddings of every record (needed to choose M > 1 representatives).
      proxies_per_cluster: an M recorded by an earlier run of the same valuation (``--resume``): used as is.
      estimate: ask the utility for its own estimate (``estimate_seconds``) unless ``SHED_ESTIMATE=0``; needed
        for ``auto`` to fit the time budget.
      log: receives a line before the estimate.

    Raises :class:`shed_jax.errors.PipelineError` when the removal step exceeds the players.
    """
    from shed_jax.config import auto_proxies_per_cluster, check_removal_step
    from shed_jax.proxies import registry
    from shed_jax.run.inputs import estimate_enabled

    k = int(inputs.n_clusters if clusters is None else clusters.n_clusters)
    n_perm = int(config.n_permutations)
    if clusters is not None:
        labels = np.asarray(clusters.labels)
        sizes = np.maximum(np.bincount(labels[labels >= 0], minlength=k), 1)  # an empty cluster keeps its proxy
    else:
        sizes = None

    def members(per_cluster: int):
        if clusters is not None:
            return _players_of(clusters, per_cluster, embeddings)
        candidates = np.flatnonzero(inputs.candidate_mask)
        index = candidates[np.arange(k * per_cluster) % candidates.size].astype(np.int64)
        return index, np.repeat(np.arange(k, dtype=np.int64), per_cluster)

    def n_players(per_cluster: int) -> int:
        return k * per_cluster if sizes is None else int(np.minimum(sizes, per_cluster).sum())

    def build(per_cluster: int):
        member_index, owners = members(per_cluster)
        model_inputs = make_inputs(member_index)
        return member_index, owners, model_inputs, registry.get(config.proxy).factory(model_inputs,
                                                                                      inputs.proxy_config())

    budget_m = int(inputs.proxies_per_cluster)
    per_cluster = budget_m if proxies_per_cluster is None else int(proxies_per_cluster)
    member_index, owners, model_inputs, utility = build(per_cluster)
    step = config.resolved_removal_step(k, per_cluster)
    seconds, calibration = None, {}
    own_estimate = getattr(utility, "estimate_seconds", None)
    if estimate and callable(own_estimate) and estimate_enabled():
        if log is not None:
            log(f"value: estimating the {config.proxy} proxy's time on this machine")
        run_estimate = getattr(utility, "estimate_run_seconds", None)  # counts the rounds the engine makes it run
        if callable(run_estimate):
            seconds = float(run_estimate(n_perm, removal_step=step, seed=int(config.seed),
                                         batch_size=config.shapley_batch_size))
        else:
            seconds = float(own_estimate(expected_evaluations(len(member_index), step, n_perm)))
        calibration = {"source": "the utility's own estimate_" + ("run_seconds" if callable(run_estimate) else "seconds"),
                       "n_evaluations": expected_evaluations(len(member_index), step, n_perm)}
        seconds = _same_in_every_process(seconds)
    if config.proxies_per_cluster == "auto" and proxies_per_cluster is None and seconds is not None:
        per_evaluation = seconds / expected_evaluations(len(member_index), step, n_perm)

        def fits(m: int) -> bool:
            if m > per_cluster:
                return False
            evaluations = expected_evaluations(n_players(m), config.resolved_removal_step(k, m), n_perm)
            return per_evaluation * evaluations <= config.value_time_budget

        lowered = auto_proxies_per_cluster(k, inputs.n_candidates, max_players=config.value_player_budget, fits=fits)
        if lowered != per_cluster:
            per_cluster = lowered
            member_index, owners, model_inputs, utility = build(per_cluster)
            step = config.resolved_removal_step(k, per_cluster)
            # scaled, not measured again
            seconds = per_evaluation * expected_evaluations(len(member_index), step, n_perm)
    check_removal_step(step, len(member_index), detail=f": up to {per_cluster} per cluster, K={k}, smaller clusters "
                       "valued whole; give a smaller --removal-step or more --proxies-per-cluster")
    return ValuePlan(int(per_cluster), np.asarray(member_index, np.int64), np.asarray(owners, np.int64), k, int(step),
                     n_perm, expected_evaluations(len(member_index), step, n_perm), utility, model_inputs, seconds,
                     calibration, budget_m, clusters is not None)


def _same_in_every_process(seconds: float) -> float:
    """Process 0's estimate in every process of a ``--distributed`` run: the processes time their own steps, and
    the decisions made from the estimate (``auto`` M) must be the same everywhere. Unchanged in one process."""
    from shed_jax import distributed

    if not distributed.is_initialized():
        return seconds
    return float(distributed.broadcast_text("value-estimate", repr(float(seconds))))


def _log_estimate(run: Run, plan: ValuePlan) -> None:
    """Log the estimated time of the value stage before it starts (when the utility estimates its cost), and on a
    CPU suggest the embedding proxy when it is hours."""
    if plan.seconds is None:
        return
    run.log(f"value: about {plan.n_evaluations:,} utility evaluations, estimated {format_duration(plan.seconds)} "
            "on this machine")
    from shed_jax.budget_advice import over_budget_lines  # issue 21: settings that would fit the time budget

    advice = over_budget_lines(plan.utility, plan.seconds, plan.n_evaluations, plan.n_permutations, run.config)
    for line in advice:
        run.log(line)
    import jax

    if not advice and plan.seconds > 3600 and jax.default_backend() == "cpu" and run.config.proxy != "embedding":
        run.log("value: that is hours on a CPU; `--proxy embedding` values the same players in minutes, or use "
                "fewer permutations (--permutations), a larger --removal-step, or a GPU")


def _log_auto(run: Run, plan: ValuePlan) -> None:
    cfg = run.config
    within = f"the budget of {cfg.value_player_budget:,} players (--max-players)"
    if plan.seconds is not None:
        within += (f" and {format_duration(cfg.value_time_budget)} (--value-time-budget; estimated "
                   f"{format_duration(plan.seconds)})")
    run.log(f"value: proxies per cluster: auto -> {plan.proxies_per_cluster} (K={plan.n_clusters}, "
            f"{plan.n_players:,} players within {within})")


# --------------------------------------------------------------------------------------------------
# what a valuation depends on, and the checkpoint that holds it
# --------------------------------------------------------------------------------------------------


def valuation_options(run: Run) -> dict[str, Any]:
    """What the values depend on that is known before the players are chosen, resolved, by the option that
    sets it: the data and validation records (content hashes), the clustering options, the proxy and its full
    configuration, the seed, and the compute backend and dtype. Not the permutation count (a valuation
    extends), nor what the values do not depend on (batch sizes, budgets: their effect, M, is recorded by
    :func:`valuation_key`)."""
    import jax

    from shed_jax.run.inputs import resolved_proxy_options

    cfg, inputs = run.config, run.inputs
    backend = jax.default_backend()
    resolve_dtype = getattr(inputs.proxy_config(), "compute_dtype", None)
    dtype = resolve_dtype(backend) if callable(resolve_dtype) else "float32"
    return {"DATA": inputs.data_sha256, "--text": cfg.text, "--duplicates": cfg.duplicates, "--model": cfg.model,
            "--clusters": int(inputs.n_clusters), "--max-iter": int(cfg.kmeans_max_iter), "--seed": int(cfg.seed),
            "--valid": inputs.valid_sha256, "--valid-format": cfg.valid_format, "--proxy": cfg.proxy,
            "--proxy-option": [list(item) for item in resolved_proxy_options(cfg)],
            "compute (backend/dtype)": f"{backend}/{dtype}"}


def valuation_key(options: dict, plan: ValuePlan) -> dict[str, Any]:
    """:func:`valuation_options` plus what the plan resolved: M used, the players and the removal step."""
    import hashlib

    players = hashlib.sha256(plan.member_index.tobytes() + plan.owners.tobytes()).hexdigest()[:16]
    return {**options, "--proxies-per-cluster": plan.proxies_per_cluster, "players": players,
            "--removal-step": plan.removal_step}


def _recorded_proxies_per_cluster(run: Run, rec: dict, options: dict) -> int | None:
    """The M an earlier (interrupted or finished) run of the same valuation used, so that ``--resume`` does not
    estimate again and lands on the same players; None when there is none."""
    if rec.get("status") not in ("running", "done") or rec.get("proxies_per_cluster") is None:
        return None
    if rec.get("m_options", _m_options(run)) != _m_options(run):  # -p/--max-players/--value-time-budget changed
        return None
    stored = rec.get("valuation")
    same = (rec.get("fingerprint") == run.inputs.fingerprints["value"] if stored is None
            else not _differences(stored, options))
    return int(rec["proxies_per_cluster"]) if same else None


def _m_options(run: Run) -> list:
    """The options M is resolved from (an M recorded under other ones is resolved again)."""
    cfg = run.config
    return [str(cfg.proxies_per_cluster), int(cfg.value_player_budget), float(cfg.value_time_budget)]


def _differences(stored: dict, current: dict) -> list[str]:
    def shown(value):
        text = json.dumps(value, default=str)
        return text if len(text) <= 24 and not (isinstance(value, str) and len(value) >= 16) else None

    out = []
    for name, value in current.items():
        if name in stored and stored[name] != value:
            before, now = shown(stored[name]), shown(value)
            out.append(f"{name} ({before} there, {now} now)" if before and now else name)
    return out


def _progress_text(done: int, rec: dict) -> str:
    target = rec.get("target_permutations")
    if rec.get("status") == "done":
        return f"a finished valuation of {done} permutations"
    return f"a partial valuation ({done} of {target} permutations)" if target else \
        f"a partial valuation ({done} permutations)"


def check_checkpoint(run: Run, *, key: dict | None = None) -> bool:
    """Refuse (exit 2, one line) to touch a valuation in ``RUN_DIR/shapley_ckpt`` that this command would lose;
    discard it only with ``--restart``. Returns True when the checkpoint is continued (or extended).

    Compared before any stage runs on :func:`valuation_options` (``key=None``), and again once the plan is
    resolved on the full :func:`valuation_key`:

    - other options: refused, naming the options that differ;
    - fewer ``--permutations`` than the checkpoint holds: refused (the values cannot be shortened);
    - a partial valuation without ``--resume``: refused (``--resume`` continues it);
    - a finished valuation asked for more permutations without ``--resume``: refused (``--resume`` extends it).
    """
    from shed_jax.errors import PipelineError

    ckpt_dir = run.run_dir / CHECKPOINT_DIR
    done = checkpointed_samples(ckpt_dir)
    if done == 0:
        return False
    rec = run.stages.record("value")
    stored = rec.get("valuation")
    current = key if key is not None else valuation_options(run)
    what = _progress_text(done, rec)
    restart = "--restart discards it"
    if stored is None and rec.get("fingerprint") == run.inputs.fingerprints["value"]:
        differing = []  # recorded before the options were: the same stage fingerprint
    elif stored is None:
        differing = ["its options (not recorded: written by an older shed_jax)"]
    else:
        differing = _differences(stored, current)
    problem = None
    if differing:
        problem = f"{ckpt_dir} holds {what} with other options: {', '.join(differing)}; {restart}"
    elif key is None:
        return False  # the rest is decided on the full key
    elif run.config.n_permutations < done:
        problem = (f"{ckpt_dir} holds {what}, more than --permutations {run.config.n_permutations}; ask for "
                   f"{done} or more (--resume extends it), or {restart}")
    elif not run.resume and rec.get("status") != "done":
        problem = f"{ckpt_dir} holds {what}: --resume continues it, {restart}"
    elif not run.resume and run.config.n_permutations > done:
        problem = (f"{ckpt_dir} holds {what}: --resume extends it to {run.config.n_permutations}, {restart}")
    if problem is None:
        return True
    if not run.restart:
        raise PipelineError(problem)
    run.log(f"value: --restart: discarding {what} in {ckpt_dir}")
    shutil.rmtree(ckpt_dir)
    return False


def _number(value) -> float | None:
    return None if value is None else finite_or_none(float(value))


def _load(run: Run) -> tuple[Values, str]:
    values = Values.load(run.dir)
    return values, f"{values.n_permutations} permutations"


@dataclass(frozen=True, eq=False)
class _Valuation:
    """What :func:`_prepare` resolved for :func:`_compute`."""

    clusters: Clusters
    plan: ValuePlan
    resumed_from: int
    event: str
    history_every: int


def _prepare(run: Run) -> Started:
    """Refuse a checkpoint the command would lose, resolve the :class:`ValuePlan`, and record the M used."""
    ckpt_dir = run.run_dir / CHECKPOINT_DIR
    clusters = run.result("cluster").artifact
    rec = run.stages.record("value")
    options = valuation_options(run)
    check_checkpoint(run)  # other options: refused (or discarded with --restart) before anything is built
    recorded = _recorded_proxies_per_cluster(run, rec, options)
    since = time.perf_counter()
    embeddings = run.result("embed").embeddings
    plan = plan_value(run.config, run.inputs, clusters, make_inputs=lambda index: proxy_inputs(run, index),
                      embeddings=embeddings, proxies_per_cluster=recorded, log=run.log)
    key = valuation_key(options, plan)
    continuing = check_checkpoint(run, key=key)
    if ckpt_dir.exists() and not continuing and checkpointed_samples(ckpt_dir) > 0:  # never: refused above
        raise AssertionError("a checkpoint with work would be overwritten")
    if run.config.proxies_per_cluster == "auto" and recorded is None:
        _log_auto(run, plan)
    n_perm = plan.n_permutations
    history_every = (int(rec.get("history_every") or 0) if continuing else 0) or max(1, n_perm // 100)
    resumed_from = checkpointed_samples(ckpt_dir) if continuing else 0
    event = "started" if not continuing else ("extended" if resumed_from >= int(rec.get("target_permutations") or 0)
                                               else "resumed")
    resolved = {**run.inputs.resolved(run.run_dir), "proxies_per_cluster": plan.proxies_per_cluster,
                "removal_step": plan.removal_step, "n_players": plan.n_players}
    run.dir.write_config(run.config, resolved)  # the M used
    notes = dict(proxies_per_cluster=plan.proxies_per_cluster, valuation=key, target_permutations=n_perm,
                 history_every=history_every, m_options=_m_options(run))
    return Started(_Valuation(clusters, plan, resumed_from, event, history_every), event=event, notes=notes,
                   since=since)


def _compute(run: Run, valuation: _Valuation) -> Computed:
    ckpt_dir = run.run_dir / CHECKPOINT_DIR
    plan, clusters, resumed_from = valuation.plan, valuation.clusters, valuation.resumed_from
    k, n_perm, per_cluster, step = plan.n_clusters, plan.n_permutations, plan.proxies_per_cluster, plan.removal_step
    owners, member_index, utility, n_players = plan.owners, plan.member_index, plan.utility, plan.n_players
    who = (f"K={k} proxies" if n_players == k
           else f"{n_players} proxies (up to {per_cluster} per cluster, K={k})")
    if valuation.event != "started":  # a checkpoint continued or extended
        verb = "extending" if valuation.event == "extended" else "resuming"
        resume_note = f" ({verb} the checkpoint in shapley_ckpt/: {resumed_from} permutations done)"
    else:
        resume_note = ""
    run.log(f"value: Monte Carlo Shapley over {who}, {n_perm} permutations, removal step {step}{resume_note}")
    _log_estimate(run, plan)
    from shed_jax import shapley as _shapley

    grouped = n_players != k
    shapley_bar = progress_bar(n_perm, f"Shapley: {n_perm:,} permutations", unit="perm", enabled=run.progress)
    first_report = []

    def report(status) -> None:
        shapley_bar.set(status.n_permutations)
        if not first_report and status.n_permutations > resumed_from:  # the run times its own first chunk
            first_report.append(status)
            new = status.n_permutations - resumed_from
            rest = n_perm - status.n_permutations
            if rest > 0:
                run.log(f"value: {new} permutation(s) in {format_duration(status.elapsed_seconds)}; about "
                        f"{format_duration(status.elapsed_seconds / new * rest)} for the remaining {rest:,}")

    kwargs = dict(n_permutations=n_perm, removal_step=step, seed=run.config.seed, checkpoint_dir=str(ckpt_dir),
                  progress=report, history_every=valuation.history_every)
    if grouped:
        kwargs.update(groups=owners, n_groups=k)
    if run.config.shapley_batch_size is not None:
        kwargs["batch_size"] = run.config.shapley_batch_size
    try:
        estimate = _shapley.monte_carlo(utility, n_players, **kwargs)
    except _shapley.MissingGroupStateError:  # cannot be continued by this version at all: nothing to keep
        run.log("value: the checkpoint in shapley_ckpt/ was written without per-cluster state (an older shed_jax); "
                "it cannot be continued: discarding it and starting from permutation 0")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
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
    outputs = ()
    history = getattr(estimate, "history", None)
    if history and grouped:
        outputs = (Convergence(np.asarray(history["n_permutations"]), np.asarray(history["group_values"], np.float64),
                               np.asarray(history["group_stderr"], np.float64)),)
    elif history:
        history_values, history_stderr = cluster_means(np.asarray(history["values"], np.float64),
                                                       np.asarray(history["stderr"], np.float64), owners, k)
        outputs = (Convergence(np.asarray(history["n_permutations"]), history_values, history_stderr),)
    return Computed(values, outputs=(*outputs, values),
                    record={"n_permutations": values.n_permutations, "n_evaluations": values.n_evaluations,
                            "proxies_per_cluster": int(per_cluster)},
                    done=f" ({values.n_evaluations:,} utility evaluations)")


STAGE = Stage("value", load=_load, prepare=_prepare, compute=_compute, files=(Values.FILENAME,),
              check=check_checkpoint)
