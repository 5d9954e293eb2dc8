"""What a run will do, and how long each stage will take on this machine (``shed refine --dry-run``).

:func:`plan_run` reads and checks the inputs exactly as a run does (:meth:`RunInputs.preflight`), then
describes each stage (records, K, players, permutations, removal step, utility evaluations) and estimates
its time from a short calibration on this machine:

- **embed**: the sentence encoder's speed on a seeded sample of the records (``sample_size`` texts, default
  64, after a warm-up batch; the model's load time is reported separately), as characters read per second
  (each text capped at about the 256 word pieces the encoder reads), applied to the texts to embed. Texts whose
  embeddings are already in the shared embedding cache (:func:`shed_jax.embed.embedding_cache_dir`) cost
  nothing. The calibration never writes the cache.
- **cluster**: a timed k-means on random data of the real dimension (4,096 x 128 clusters): the time of a
  Lloyd iteration scales with ``N x K``, a k-means++ step with ``N``. The estimate assumes all ``--max-iter``
  iterations, so it is an upper bound (k-means usually stops sooner); compilation is reported separately.
- **value**: the real utility, built on the real validation set with random player embeddings of the right
  shape (its cost depends on shapes, not values), run through the Shapley engine for a short chunk of
  permutations after a warm-up call that compiles it (:func:`time_shapley`); seconds per evaluation x the
  run's evaluations, plus the compilation and the texts the proxy embeds (validation set, players) at the
  encoder's rate. A utility that can estimate its own cost is asked instead: ``estimate_run_seconds(n_permutations,
  removal_step=, seed=, batch_size=)`` when it has it (the LM proxy: the rounds of fine-tunes the engine makes it
  run, counted by the engine itself, times its timed per-round cost, plus compilation), else
  ``estimate_seconds(n_evaluations)``.
- **select** and the report: a fixed allowance of :data:`SELECT_AND_REPORT_SECONDS` (not calibrated; 0.5 s
  and 2.2 s measured for 6,000 records and K=1,000 on the loaded 2-core development machine).

Nothing is written: no run directory, no cache entries (tests/test_estimate.py checks it). The same plan is
logged when a real ``shed refine`` starts (``SHED_ESTIMATE=0`` turns that off).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shed_jax.config import RefineConfig
from shed_jax.progress import format_count, format_duration
from shed_jax.run.inputs import RunInputs, estimate_enabled, resolved_embed_dtype  # estimate_enabled: re-exported

__all__ = ["Plan", "StageEstimate", "calibrate_embedder", "calibrate_kmeans", "estimate_enabled", "plan_run",
           "time_shapley"]

_KMEANS_MEMO: dict[tuple, dict] = {}
SELECT_AND_REPORT_SECONDS = 3.0


@dataclass(frozen=True)
class StageEstimate:
    """One stage of a plan: what it will do and its estimated seconds (0 when its result is cached)."""

    stage: str
    description: str
    seconds: float | None
    cached: bool = False
    details: dict = field(default_factory=dict)

    def line(self) -> str:
        if self.cached:
            return f"{self.stage}: {self.description} [cached: free]"
        when = (self.details.get("note", "time unknown") if self.seconds is None
                else f"about {format_duration(self.seconds)}")
        return f"{self.stage}: {self.description}; {when}"


@dataclass(frozen=True)
class Plan:
    """The stages of a run with their estimates, and the calibration measurements they come from."""

    stages: tuple[StageEstimate, ...]
    calibration: dict

    @property
    def total_seconds(self) -> float | None:
        seconds = [s.seconds for s in self.stages if not s.cached]
        return None if any(s is None for s in seconds) else float(sum(seconds))

    def to_dict(self) -> dict:
        return {"stages": [asdict(s) for s in self.stages], "total_seconds": self.total_seconds,
                "calibration": self.calibration}

    def lines(self) -> list[str]:
        total = self.total_seconds
        return [s.line() for s in self.stages] + [
            f"estimated total: {'unknown' if total is None else format_duration(total)} on this machine"]




# --------------------------------------------------------------------------------------------------
# calibrations
# --------------------------------------------------------------------------------------------------


def calibrate_embedder(texts: list[str], *, model: str, batch_size: int, sample_size: int = 64,
                       seed: int = 0, dtype: str = "float32") -> dict:
    """Texts per second of the sentence encoder on ``sample_size`` texts drawn (seeded) from ``texts``.

    A warm-up call on 8 texts loads the model (its time, less the 8 texts' share, is ``load_seconds``);
    nothing is written to the embedding cache (``cache_dir=None``). Returns ``{"texts_per_second",
    "characters_per_second", "load_seconds", "dim", "sample_size"}``.
    """
    from shed_jax import embed as _embed

    # the run sorts all texts by length before batching (little padding); sub-batches of the sorted sample
    # come closer to that than one batch padded to the sample's longest text
    batch_size = min(int(batch_size), 16)
    rng = np.random.default_rng(seed)
    pool = list(dict.fromkeys(texts))
    sample = [pool[i] for i in rng.permutation(len(pool))[:sample_size + 8]]
    warm, timed = sample[:8], sample[8:] or sample[:8]
    start = time.perf_counter()
    first = np.asarray(_embed.embed_texts(warm, model=model, batch_size=batch_size, cache_dir=None, progress=False,
                                          dtype=dtype))
    warm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _embed.embed_texts(timed, model=model, batch_size=batch_size, cache_dir=None, progress=False, dtype=dtype)
    seconds = max(time.perf_counter() - start, 1e-9)
    rate = len(timed) / seconds
    return {"texts_per_second": rate, "characters_per_second": _characters(timed) / seconds,
            "load_seconds": max(0.0, warm_seconds - len(warm) / rate),
            "dim": int(first.shape[1]), "sample_size": len(timed)}


_CHARACTERS_CAP = 1200  # about the 256 word pieces the default encoder reads of a text; the rest is truncated


def _characters(texts) -> int:
    """Characters the encoder reads of ``texts`` (distinct texts, each capped at its truncation length)."""
    return sum(min(len(text), _CHARACTERS_CAP) for text in set(texts))


def _embedding_seconds(texts, calibration: dict) -> float:
    """Seconds to embed ``texts`` at the calibrated rate: encoder time scales with the characters read, so
    short validation questions cost less than long responses."""
    return _characters(texts) / calibration["characters_per_second"]


def calibrate_kmeans(dim: int, *, n_rows: int = 4096, n_clusters: int = 128, seed: int = 0) -> dict:
    """Seconds per Lloyd iteration and per k-means++ step on random ``(n_rows, dim)`` data with
    ``n_clusters`` clusters, and the compilation time (first call minus a second one). Memoised per process.

    Returns ``{"lloyd_seconds", "init_step_seconds", "compile_seconds", "n_rows", "n_clusters", "dim"}``.
    """
    import jax

    key = (int(dim), n_rows, n_clusters, jax.default_backend())
    if key in _KMEANS_MEMO:
        return _KMEANS_MEMO[key]
    from shed_jax import cluster as _cluster

    x = np.random.default_rng(seed).standard_normal((n_rows, int(dim))).astype(np.float32)
    init = x[:n_clusters]

    def lloyd():
        start = time.perf_counter()
        fit = _cluster.kmeans(x, n_clusters, init=init, max_iter=5, tol=0.0)
        return time.perf_counter() - start, max(1, int(fit.n_iter))

    def plusplus():
        start = time.perf_counter()
        _cluster.kmeans(x, n_clusters, seed=seed, max_iter=1, tol=0.0)
        return time.perf_counter() - start

    first_lloyd, _ = lloyd()
    lloyd_seconds, n_iter = lloyd()
    first_pp = plusplus()
    pp_seconds = plusplus()
    per_iteration = lloyd_seconds / n_iter
    result = {"lloyd_seconds": per_iteration,
              "init_step_seconds": max(pp_seconds - per_iteration, 0.0) / n_clusters,
              "compile_seconds": max(0.0, first_lloyd - lloyd_seconds) + max(0.0, first_pp - pp_seconds),
              "n_rows": n_rows, "n_clusters": n_clusters, "dim": int(dim)}
    _KMEANS_MEMO[key] = result
    return result


def time_shapley(utility, n_players: int, *, removal_step: int, n_permutations: int, batch_size: int | None = None,
                 seed: int = 0, batches: int = 2) -> dict:
    """Seconds of the Monte Carlo Shapley engine on ``utility`` for ``n_permutations`` permutations.

    The engine is run twice on a short chunk of about ``batches`` utility batches (the first call compiles);
    the second call gives the seconds per utility evaluation, and the estimate is the compilation plus the
    run's evaluations at that rate (the real run's chunks are larger, so its per-chunk overhead is smaller:
    the estimate errs long). Nothing is checkpointed.

    Returns ``{"compile_seconds", "seconds_per_evaluation", "calibration_evaluations", "batch_size",
    "seconds"}``.
    """
    from shed_jax import shapley as _shapley
    from shed_jax.run.value import expected_evaluations
    from shed_jax.shapley import DEFAULT_BATCH_SIZE

    from shed_jax import sharding as _sharding

    batch = int(batch_size or _sharding.default_batch_size(utility, None, DEFAULT_BATCH_SIZE,
                                                                       n_players=n_players))  # the engine's rule
    intermediate = max(1, -(-n_players // int(removal_step)) - 1)
    permutations = max(1, min(int(n_permutations), (batches * batch) // intermediate))
    kwargs = dict(n_permutations=permutations, removal_step=int(removal_step), seed=int(seed), progress=None,
                  permutations_per_chunk=permutations)
    if batch_size is not None:
        kwargs["batch_size"] = int(batch_size)
    start = time.perf_counter()
    _shapley.monte_carlo(utility, n_players, **kwargs)
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = _shapley.monte_carlo(utility, n_players, **kwargs)
    second = time.perf_counter() - start
    evaluations = max(1, int(getattr(result, "n_evaluations", permutations * intermediate)))
    per_evaluation = second / evaluations
    compile_seconds = max(0.0, first - second)
    return {"compile_seconds": compile_seconds, "seconds_per_evaluation": per_evaluation,
            "calibration_evaluations": evaluations, "batch_size": batch,
            "seconds": compile_seconds + per_evaluation * expected_evaluations(n_players, removal_step,
                                                                               n_permutations)}


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


def _cache_path(texts: list[str], model: str, dtype: str) -> Path:
    """Where the embedding cache keeps ``texts`` embedded by ``model`` in ``dtype`` (resolved here)."""
    from shed_jax import embed as _embed

    return _embed.embedding_cache_dir() / f"{_embed.embedding_cache_key(texts, model, _embed.resolve_dtype(dtype))}.npy"


def _cached_embeddings(texts: list[str], model: str, dtype: str = "auto") -> bool:
    from shed_jax import embed as _embed

    return _cache_path(texts, model, dtype).is_file()


def _cached_dim(texts: list[str], model: str, dtype: str = "auto") -> int | None:
    from shed_jax import embed as _embed

    path = _cache_path(texts, model, dtype)
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[1])
    except (OSError, ValueError, IndexError):
        return None


def _stage_done(config: RefineConfig, inputs: RunInputs, stage: str, *files: str) -> bool:
    """Whether the run directory already holds this stage's result for the same fingerprint (read only)."""
    from shed_jax.run.rundir import RunDir, StageLog

    run_dir = Path(config.run_dir) if config.run_dir else None
    if run_dir is None or not (run_dir / "stages.json").is_file():
        return False
    log = StageLog(RunDir(run_dir))
    return log.is_done(stage, inputs.fingerprints[stage]) and all((run_dir / f).is_file() for f in files)


class _RecordingEmbed:
    """A stand-in encoder for building the utility: random unit rows of the real dimension, and a record of
    which texts the proxy asks for (so that the plan knows what the value stage embeds)."""

    def __init__(self, dim: int, seed: int):
        self.dim, self.rng, self.calls = dim, np.random.default_rng(seed), []

    def __call__(self, texts, **_):
        texts = list(texts)
        self.calls.append(texts)
        rows = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _value_plan(config: RefineConfig, inputs: RunInputs, dim: int | None, *, estimate: bool, say):
    """The value stage's :class:`~shed_jax.run.value.ValuePlan` (the same function the stage calls) over the
    run's clusters when ``clusters.npz`` is up to date (the real players when their embeddings are in the cache),
    else over ``K x M`` stand-in players; the utility is built with a recording stand-in encoder and random
    player embeddings of the real dimension (its cost depends on shapes, not values). ``(plan, encoder)``."""
    from shed_jax.run.artifacts import Clusters
    from shed_jax.run.value import plan_value

    if dim is None:
        return None, None
    clusters, embeddings = None, None
    if _stage_done(config, inputs, "cluster", Clusters.FILENAME):
        from shed_jax.run.rundir import RunDir

        texts = inputs.dataset.texts(config.text)
        embeddings = _cached_array(texts, config.model, config.embed_dtype)
        if embeddings is not None or inputs.proxies_per_cluster == 1:
            clusters = Clusters.load(RunDir(config.run_dir))
    encoder = _RecordingEmbed(dim, int(config.seed))

    def make_inputs(member_index):
        return _stand_in_inputs(config, inputs, member_index, dim, encoder)

    plan = plan_value(config, inputs, clusters, make_inputs=make_inputs, embeddings=embeddings, estimate=estimate,
                      log=say)
    return plan, encoder


def _cached_array(texts: list[str], model: str, dtype: str = "auto"):
    from shed_jax import embed as _embed

    path = _cache_path(texts, model, dtype)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


def _stand_in_inputs(config: RefineConfig, inputs: RunInputs, index, dim: int, encoder):
    from shed_jax.proxies import ProxyInputs

    dataset = inputs.dataset
    index = np.asarray(index, np.int64)
    rng = np.random.default_rng(int(config.seed))
    embeddings = rng.standard_normal((index.shape[0], dim)).astype(np.float32)
    return ProxyInputs(prompts=tuple(dataset.prompts[int(i)] for i in index),
                       responses=tuple(dataset.responses[int(i)] for i in index),
                       records=tuple(dataset.records[int(i)] for i in index), record_index=index,
                       embeddings=embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True),
                       validation=inputs.validation, embed=encoder, seed=int(config.seed), progress=False)


def plan_run(config: RefineConfig, inputs: RunInputs | None = None, *, calibrate: bool = True,
             calibrate_value: bool = True, sample_size: int = 64, need_budget: bool = True,
             log: Callable[[str], None] | None = None) -> Plan:
    """What each stage of a run with ``config`` will do and its estimated time on this machine.

    Runs every check a run runs first (:class:`shed_jax.errors.UserError` on bad input) and writes nothing.

    Args:
      config: the run's options (``valid`` required).
      inputs: the run's :class:`RunInputs` when already read (a real run passes its own).
      calibrate: time the encoder and k-means on this machine; without it only the counts are given.
      calibrate_value: also build and time the utility (compiles it: seconds to minutes for the LM proxy).
      sample_size: texts in the encoder calibration.
      need_budget: check the budget options too (``refine``).
      log: receives a line before each calibration step.
    """
    from shed_jax.run.artifacts import Clusters, Selection, Values
    from shed_jax.run.rundir import RunDir
    from shed_jax.run.value import expected_evaluations

    say = log or (lambda _message: None)
    if inputs is None:
        RunDir(config.run_dir).check_schema() if config.run_dir else None
        inputs = RunInputs(config)
        inputs.preflight(need_valid=True, need_budget=need_budget)
    dataset = inputs.dataset
    texts = dataset.texts(config.text)
    n_records, n_distinct = len(texts), len(set(texts))
    n_candidates, k = inputs.n_candidates, inputs.n_clusters
    n_perm = int(config.n_permutations)
    calibration: dict[str, Any] = {"backend": None}

    cluster_done = _stage_done(config, inputs, "cluster", Clusters.FILENAME)
    value_done = _stage_done(config, inputs, "value", Values.FILENAME)
    embed_cached = cluster_done or _cached_embeddings(texts, config.model, config.embed_dtype)

    dim = _cached_dim(texts, config.model, config.embed_dtype) if embed_cached else None
    if dim is None and cluster_done:
        with np.load(Path(config.run_dir) / Clusters.FILENAME, allow_pickle=False) as stored:
            dim = int(stored["centroids"].shape[1])
    embed_seconds = None
    if calibrate:
        import jax

        calibration["backend"] = jax.default_backend()
        if not embed_cached or (not value_done and dim is None):
            say(f"estimate: timing the encoder on {sample_size} texts (not written to the embedding cache)")
            calibration["embed"] = calibrate_embedder(texts, model=config.model, batch_size=config.batch_size,
                                                      sample_size=sample_size, seed=int(config.seed),
                                                      dtype=config.embed_dtype)
            dim = calibration["embed"]["dim"]
            embed_seconds = calibration["embed"]["load_seconds"] + _embedding_seconds(texts, calibration["embed"])
    load_note = ""
    if "embed" in calibration and not embed_cached:
        load_note = f" (of which {format_duration(calibration['embed']['load_seconds'])} to load the model)"
    embed_dtype = resolved_embed_dtype(config)  # what the estimate timed and the stage will run
    stages = [StageEstimate(
        "embed", f"{format_count(n_records)} records ({format_count(n_distinct)} distinct texts) with "
                 f"{config.model} in {embed_dtype}{load_note}",
        0.0 if embed_cached else embed_seconds, embed_cached,
        {"n_records": n_records, "n_distinct_texts": n_distinct, "model": config.model, "dtype": embed_dtype,
         "cache_dir": str(_embed_cache_dir())})]

    cluster_seconds = None
    if calibrate and not cluster_done and dim is not None:
        say("estimate: timing k-means")
        km = calibrate_kmeans(dim, seed=int(config.seed))
        calibration["kmeans"] = km
        scale = n_candidates / km["n_rows"]
        cluster_seconds = (km["compile_seconds"] + k * km["init_step_seconds"] * scale
                           + config.kmeans_max_iter * km["lloyd_seconds"] * scale * k / km["n_clusters"])
    stages.append(StageEstimate(
        "cluster", f"k-means K={format_count(k)} on {format_count(n_candidates)} candidate records, at most "
                   f"{config.kmeans_max_iter} iterations (an upper bound)", 0.0 if cluster_done else cluster_seconds,
        cluster_done, {"n_clusters": k, "n_candidates": n_candidates, "max_iter": config.kmeans_max_iter}))

    value_seconds, value_details = None, {}
    value_plan = None
    if not value_done and calibrate and calibrate_value:
        say(f"estimate: building the {config.proxy} utility")
        value_plan, encoder = _value_plan(config, inputs, dim, estimate=True, say=say)
    if value_plan is not None:
        if value_plan.seconds is not None:
            value_seconds = value_plan.seconds
            calibration["value"] = value_plan.calibration
        else:
            say(f"estimate: timing the {config.proxy} utility through the Shapley engine")
            timing = time_shapley(value_plan.utility, value_plan.n_players, removal_step=value_plan.removal_step,
                                  n_permutations=n_perm, batch_size=config.shapley_batch_size, seed=int(config.seed))
            calibration["value"] = timing
            value_seconds = timing["seconds"]
        # what the proxy embeds: lists of the players' texts (never cached before clustering) and validation lists
        uncached = [text for call in encoder.calls
                    if not _cached_embeddings(call, config.model, config.embed_dtype) for text in call]
        to_embed = len(uncached)
        value_details["texts_to_embed"] = to_embed
        if to_embed and "embed" not in calibration:
            say(f"estimate: timing the encoder on {sample_size} texts (not written to the embedding cache)")
            calibration["embed"] = calibrate_embedder(texts, model=config.model, batch_size=config.batch_size,
                                                      sample_size=sample_size, seed=int(config.seed),
                                                      dtype=config.embed_dtype)
            value_seconds += calibration["embed"]["load_seconds"]
        if to_embed:
            value_seconds += _embedding_seconds(uncached, calibration["embed"])
    if calibrate and not calibrate_value and not value_done:
        value_details["note"] = "its time is estimated when the stage starts"
    if value_plan is not None:
        n_players, per_cluster = value_plan.n_players, value_plan.proxies_per_cluster
        step, n_evaluations = value_plan.removal_step, value_plan.n_evaluations
        players_known = value_plan.clusters_known
    else:
        per_cluster = inputs.proxies_per_cluster
        n_players, step = k * per_cluster, inputs.removal_step
        n_evaluations, players_known = expected_evaluations(n_players, step, n_perm), False
    stages.append(StageEstimate(
        "value", f"Shapley values of {'' if players_known else 'up to '}{format_count(n_players)} players "
                 f"({per_cluster} per cluster, {config.proxy} proxy), "
                 f"{format_count(n_perm)} permutations, removal step {step}: "
                 f"{'' if players_known else 'about '}{format_count(n_evaluations)} utility evaluations",
        0.0 if value_done else value_seconds,
        value_done, {"n_players": n_players, "players_known": players_known, "proxies_per_cluster": per_cluster,
                     "n_permutations": n_perm, "removal_step": step,
                     "n_evaluations": n_evaluations, "proxy": config.proxy, **value_details}))
    if need_budget:
        budget = inputs.budget()
        select_done = value_done and _stage_done(config, inputs, "select", Selection.FILENAME)
        stages.append(StageEstimate("select", f"{format_count(budget)} of {format_count(n_candidates)} records "
                                              f"with {config.sampler}, then the report (an allowance)",
                                    0.0 if select_done else SELECT_AND_REPORT_SECONDS,
                                    select_done, {"budget": budget, "sampler": config.sampler}))
    return Plan(tuple(stages), calibration)


def _embed_cache_dir() -> Path:
    from shed_jax import embed as _embed

    return _embed.embedding_cache_dir()
