"""The SHED pipeline: embed -> cluster -> value -> select, in a resumable run directory.

SHED (He et al., "SHED: Shapley-Based Automated Dataset Refinement for Instruction Fine-Tuning",
NeurIPS 2024) refines an instruction-tuning set in four stages:

1. **embed** every record with a sentence encoder (:func:`shed_jax.embed.embed_texts`);
2. **cluster** the embeddings with k-means and take, per cluster, the real example nearest to the
   centroid as the cluster's *proxy* (:mod:`shed_jax.cluster`);
3. **value** the K proxies with Monte Carlo Shapley values of a cheap utility (a model fitted on a
   coalition of proxies, scored on a validation set; :mod:`shed_jax.proxies`, :mod:`shed_jax.shapley`);
   a cluster's value is its proxy's value;
4. **select** a budget of records by sampling clusters according to their value: QOCS (quality-ordered
   cluster sampling) or QWCS (quality-weighted cluster sampling), or uniformly at random as a baseline
   (:mod:`shed_jax.select`).

Everything a run produces lives in one run directory (layout in CONTRACTS.md)::

    config.json  stages.json  cache/  clusters.npz  values.json  convergence.npz  shapley_ckpt/
    scores.jsonl  selection.json  summary.json  report.html

Resuming. Each stage has a *fingerprint*: the sha256 of its inputs (data file hash, the configuration
fields it reads, and the upstream stage's fingerprint). ``stages.json`` records the fingerprint of every
finished stage; a stage whose fingerprint matches is loaded from the run directory instead of being
recomputed, and changing an option recomputes exactly the stages downstream of it. The value stage,
the only long one, also checkpoints its estimator state (orbax, ``shapley_ckpt/``); ``resume=True``
continues an interrupted run from there. All files are written atomically.

This module is the only orchestrator; :mod:`shed_jax.cli` parses options, builds a :class:`RefineConfig`
and calls one function here.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shed_jax import data as _data

__all__ = [
    "DEFAULT_MODEL",
    "PROXIES",
    "SAMPLERS",
    "ClusterResult",
    "DemoResult",
    "EmbedResult",
    "PipelineError",
    "RefineConfig",
    "RefineResult",
    "SelectResult",
    "ValueResult",
    "default_n_clusters",
    "default_removal_step",
    "default_run_dir",
    "demo",
    "load_config",
    "refine",
    "run_cluster",
    "run_embed",
    "run_select",
    "run_value",
    "score_rows",
    "select_indices",
    "stage_fingerprints",
    "write_report",
]

logger = logging.getLogger("shed_jax.pipeline")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # == shed_jax.embed.DEFAULT_MODEL (not imported: heavy)
SAMPLERS = ("qocs", "qwcs", "random")
PROXIES = ("embedding",)
DUPLICATE_POLICIES = ("drop", "keep", "error")
STAGES = ("embed", "cluster", "value", "select")
CONFIG_VERSION = 1

Log = Callable[[str], None]


class PipelineError(ValueError):
    """A problem with the user's input to the pipeline (bad option, missing run directory, mismatch).

    A ``ValueError``, like :class:`shed_jax.data.DataError`, so that the CLI reports both the same way.
    """


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


def default_n_clusters(n_candidates: int) -> int:
    """Number of clusters used when none is given: ``clip(n_candidates // 20, 2, 64)`` (at most N).

    About 20 examples per cluster for small sets, capped at 64 so that the Shapley stage stays cheap on a
    CPU; pass ``n_clusters`` explicitly for large data sets (the SHED paper uses hundreds to thousands).
    """
    return int(max(1, min(n_candidates, max(2, min(64, n_candidates // 20)))))


def default_removal_step(n_clusters: int) -> int:
    """Players added per utility evaluation along a permutation when none is given: ``max(1, K // 32)``.

    One permutation then costs about ``K / removal_step <= 32..63`` utility evaluations.
    """
    return max(1, int(n_clusters) // 32)


@dataclass(frozen=True)
class RefineConfig:
    """Every option of a SHED run. Written to ``RUN_DIR/config.json`` and read back for ``--resume``.

    Paths are stored as given (the CLI makes them absolute). Options left ``None`` are resolved per run
    (``n_clusters`` by :func:`default_n_clusters`, ``removal_step`` by :func:`default_removal_step`,
    ``run_dir`` by :func:`default_run_dir`); the resolved values are recorded next to the config.

    Attributes:
      data: instruction data file (JSON array or JSONL; formats of :func:`shed_jax.data.read_instructions`).
      output: where :func:`refine` writes the selected records (JSONL), or None.
      valid: validation file for the utility (multiple-choice or instruction records).
      run_dir: run directory; None -> :func:`default_run_dir`.
      format, field_map, duplicates: passed to :func:`shed_jax.data.read_instructions`. With
        ``duplicates="drop"`` exact duplicates stay in the file but are never clustered or selected.
      valid_format: passed to :func:`shed_jax.data.read_validation`.
      text: what to embed for clustering: "all", "prompt", "response" or a comma list of record keys.
      model, batch_size: sentence encoder and its batch size.
      n_clusters, kmeans_max_iter: k-means.
      proxy: utility used for valuation ("embedding": :class:`shed_jax.proxies.EmbeddingProxyUtility`).
      proxy_options: overrides of the proxy's configuration dataclass, as ``((name, value), ...)``.
      proxies_per_cluster: members of each cluster valued as Shapley players (the ones nearest its centroid,
        :func:`shed_jax.cluster.representatives`); a cluster's value is their mean. 1 (default) is SHED's
        single proxy; more cost proportionally more utility evaluations but see clusters that mix good and
        bad examples.
      n_permutations, removal_step, shapley_batch_size: Monte Carlo Shapley estimator.
      sampler, beta: selection ("qocs", "qwcs" with temperature ``beta``, or "random").
      ratio, size: the budget, as a fraction of the candidate examples or a count (exactly one for selection).
      seed: seeds k-means, the proxy utility, the Shapley permutations and the sampler.
    """

    data: str
    output: str | None = None
    valid: str | None = None
    run_dir: str | None = None
    format: str = "auto"
    field_map: tuple[tuple[str, str], ...] = ()
    duplicates: str = "drop"
    valid_format: str = "auto"
    text: str = "all"
    model: str = DEFAULT_MODEL
    batch_size: int = 64
    n_clusters: int | None = None
    kmeans_max_iter: int = 100
    proxy: str = "embedding"
    proxy_options: tuple[tuple[str, Any], ...] = ()
    proxies_per_cluster: int = 1
    n_permutations: int = 50
    removal_step: int | None = None
    shapley_batch_size: int | None = None
    sampler: str = "qocs"
    beta: float = 1.0
    ratio: float | None = None
    size: int | None = None
    seed: int = 0

    def __post_init__(self):
        # Normalise mappings given as dicts (e.g. from JSON) into hashable tuples.
        if isinstance(self.field_map, Mapping):
            object.__setattr__(self, "field_map", tuple((str(k), str(v)) for k, v in self.field_map.items()))
        else:
            object.__setattr__(self, "field_map", tuple((str(k), str(v)) for k, v in self.field_map))
        if isinstance(self.proxy_options, Mapping):
            object.__setattr__(self, "proxy_options", tuple(sorted(self.proxy_options.items())))
        else:
            object.__setattr__(self, "proxy_options", tuple(sorted((str(k), v) for k, v in self.proxy_options)))
        if not self.data:
            raise PipelineError("no data file given")
        if self.sampler not in SAMPLERS:
            raise PipelineError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.proxy not in PROXIES:
            raise PipelineError(f"unknown proxy {self.proxy!r}; choose one of {', '.join(PROXIES)}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise PipelineError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {self.duplicates!r}")
        _positive("n_clusters", self.n_clusters, allow_none=True)
        _positive("n_permutations", self.n_permutations)
        _positive("removal_step", self.removal_step, allow_none=True)
        _positive("proxies_per_cluster", self.proxies_per_cluster)
        _positive("batch_size", self.batch_size)
        _positive("kmeans_max_iter", self.kmeans_max_iter)
        _positive("shapley_batch_size", self.shapley_batch_size, allow_none=True)
        if self.ratio is not None and self.size is not None:
            raise PipelineError("give either a ratio or a size for the budget, not both")
        if self.ratio is not None and not (0.0 < float(self.ratio) <= 1.0):
            raise PipelineError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.size is not None:
            _positive("size", self.size)
        if not math.isfinite(float(self.beta)) or float(self.beta) <= 0:
            raise PipelineError(f"beta must be a positive number, got {self.beta}")

    # -- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-compatible dict (``field_map``/``proxy_options`` as objects)."""
        out = dataclasses.asdict(self)
        out["field_map"] = dict(self.field_map)
        out["proxy_options"] = dict(self.proxy_options)
        return out

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> "RefineConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`PipelineError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise PipelineError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**dict(mapping))

    def replace(self, **changes) -> "RefineConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved_n_clusters(self, n_candidates: int) -> int:
        return int(self.n_clusters) if self.n_clusters is not None else default_n_clusters(n_candidates)

    def resolved_removal_step(self, n_clusters: int) -> int:
        """``removal_step``, or the default for ``n_clusters * proxies_per_cluster`` players."""
        if self.removal_step is not None:
            return int(self.removal_step)
        return default_removal_step(n_clusters * int(self.proxies_per_cluster))


def _positive(name, value, *, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise PipelineError(f"{name} must be a positive integer, got {value!r}")


def load_config(run_dir: str | os.PathLike) -> RefineConfig:
    """Read ``RUN_DIR/config.json`` (written by every stage). Raises :class:`PipelineError` if absent."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise PipelineError(f"{path}: no config.json in this run directory (is it a shed run directory?)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable config: {exc}") from None
    if not isinstance(payload, dict) or "config" not in payload:
        raise PipelineError(f"{path}: not a shed config (missing 'config')")
    return RefineConfig.from_dict(payload["config"])


def default_run_dir(data: str | os.PathLike, *, now: _dt.datetime | None = None) -> Path:
    """``$SHED_HOME/runs/<data stem>-<YYYYmmdd-HHMMSS>`` (``$SHED_HOME`` defaults to the current directory).

    A numeric suffix is added if that directory already exists.
    """
    base = Path(os.environ.get("SHED_HOME") or Path.cwd())
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = base / "runs" / f"{Path(data).stem}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = base / "runs" / f"{Path(data).stem}-{stamp}-{suffix}"
    return candidate


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of every record: ``embeddings`` (N, d) float32, rows L2-normalised."""

    embeddings: np.ndarray
    fingerprint: str
    skipped: bool
    seconds: float

    def summary(self) -> dict:
        return {"n_examples": int(self.embeddings.shape[0]), "dim": int(self.embeddings.shape[1]),
                "fingerprint": self.fingerprint, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class ClusterResult:
    """k-means over the candidate records.

    ``centroids`` (K, d) float32; ``labels`` (N,) int32 with -1 for records that are not candidates
    (dropped duplicates); ``proxy_index`` (K,) int64 global record index of each cluster's proxy.
    """

    centroids: np.ndarray
    labels: np.ndarray
    proxy_index: np.ndarray
    fingerprint: str
    skipped: bool
    seconds: float
    inertia: float | None = None

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def summary(self) -> dict:
        sizes = np.bincount(self.labels[self.labels >= 0], minlength=self.n_clusters)
        return {"n_clusters": self.n_clusters, "n_candidates": int((self.labels >= 0).sum()),
                "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()),
                "inertia": self.inertia, "fingerprint": self.fingerprint, "skipped": self.skipped,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class ValueResult:
    """Shapley values of the clusters' proxies: ``cluster_values`` (K,) and ``stderr`` (K,) float64."""

    cluster_values: np.ndarray
    stderr: np.ndarray
    n_permutations: int
    n_evaluations: int
    removal_step: int
    u_full: float | None
    u_empty: float | None
    fingerprint: str
    skipped: bool
    seconds: float

    def summary(self) -> dict:
        order = np.argsort(-self.cluster_values)
        return {"n_clusters": int(self.cluster_values.shape[0]), "n_permutations": self.n_permutations,
                "n_evaluations": self.n_evaluations, "removal_step": self.removal_step,
                "u_full": self.u_full, "u_empty": self.u_empty,
                "value_sum": float(self.cluster_values.sum()),
                "top_clusters": [int(k) for k in order[:5]], "bottom_clusters": [int(k) for k in order[::-1][:5]],
                "mean_stderr": _finite_or_none(float(np.mean(self.stderr))) if self.stderr.size else None,
                "fingerprint": self.fingerprint, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class SelectResult:
    """Selected record indices ``indices`` (budget,) int64, in the sampler's order."""

    indices: np.ndarray
    sampler: str
    budget: int
    n_candidates: int
    fingerprint: str
    skipped: bool
    seconds: float

    def summary(self) -> dict:
        return {"sampler": self.sampler, "budget": self.budget, "n_candidates": self.n_candidates,
                "fingerprint": self.fingerprint, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class RefineResult:
    """Outcome of :func:`refine`. ``summary`` is what ``RUN_DIR/summary.json`` holds."""

    run_dir: Path
    output: Path | None
    indices: np.ndarray
    labels: np.ndarray
    cluster_values: np.ndarray
    stderr: np.ndarray
    summary: dict
    report: Path | None = None
    stages: dict = field(default_factory=dict)  # stage -> "computed" | "skipped"


@dataclass(frozen=True)
class DemoResult:
    """Outcome of :func:`demo`: junk rates (fraction of known-junk records) per selection."""

    run_dir: Path
    train: Path
    valid: Path
    budget: int
    junk_rate_input: float
    junk_rate: dict  # sampler name -> junk rate of its selection at the same budget
    refine: RefineResult

    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "train": str(self.train), "valid": str(self.valid),
                "budget": self.budget, "junk_rate_input": self.junk_rate_input,
                "junk_rate_selected": dict(self.junk_rate)}


# --------------------------------------------------------------------------------------------------
# fingerprints and the stage log
# --------------------------------------------------------------------------------------------------


def _sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def stage_fingerprints(config: RefineConfig, *, data_sha256: str, n_candidates: int,
                       valid_sha256: str | None = None) -> dict[str, str]:
    """Fingerprint (hex sha256) of each stage's inputs; a stage's includes its upstream stage's.

    Args:
      config: the run's configuration.
      data_sha256: sha256 of the data file's bytes.
      n_candidates: number of candidate (non-dropped) records, to resolve the default ``n_clusters``.
      valid_sha256: sha256 of the validation file (None if there is none yet).

    Returns:
      ``{"embed": ..., "cluster": ..., "value": ..., "select": ...}``.
    """
    embed_fp = _hash({"stage": "embed", "data": data_sha256, "format": config.format,
                      "field_map": sorted(config.field_map), "duplicates": config.duplicates,
                      "text": config.text, "model": config.model})
    n_clusters = config.resolved_n_clusters(n_candidates)
    cluster_fp = _hash({"stage": "cluster", "up": embed_fp, "n_clusters": n_clusters,
                        "max_iter": config.kmeans_max_iter, "seed": config.seed})
    value_fp = _hash({"stage": "value", "up": cluster_fp, "valid": valid_sha256,
                      "valid_format": config.valid_format, "proxy": config.proxy,
                      "proxy_options": _resolved_proxy_options(config), "model": config.model,
                      "proxies_per_cluster": int(config.proxies_per_cluster),
                      "n_permutations": config.n_permutations,
                      "removal_step": config.resolved_removal_step(n_clusters),
                      "shapley_batch_size": config.shapley_batch_size, "seed": config.seed})
    select_fp = _hash({"stage": "select", "up": value_fp, "sampler": config.sampler,
                       "beta": float(config.beta), "ratio": config.ratio, "size": config.size,
                       "seed": config.seed})
    return {"embed": embed_fp, "cluster": cluster_fp, "value": value_fp, "select": select_fp}


def _resolved_proxy_options(config: RefineConfig) -> Any:
    """The proxy's full configuration (defaults filled in), so that a change of a default between versions
    invalidates stored values; the raw options where they are invalid (preflight reports those)."""
    if config.proxy == "embedding":
        from shed_jax.proxies.embedding import EmbeddingProxyConfig

        try:
            return sorted(EmbeddingProxyConfig(**dict(config.proxy_options)).to_dict().items())
        except (TypeError, ValueError):
            pass
    return list(config.proxy_options)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class _StageLog:
    """``RUN_DIR/stages.json``: per stage the fingerprint and status of its last run, plus an event list."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "stages.json"
        self.state = {"stages": {}, "events": []}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict) and isinstance(loaded.get("stages"), dict):
                    self.state = {"stages": loaded["stages"], "events": list(loaded.get("events", []))}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("%s is unreadable; every stage will be recomputed", self.path)

    def record(self, stage: str) -> dict:
        return self.state["stages"].get(stage, {})

    def is_done(self, stage: str, fingerprint: str) -> bool:
        rec = self.record(stage)
        return rec.get("status") == "done" and rec.get("fingerprint") == fingerprint

    def _event(self, stage, event, **extra):
        self.state["events"].append({"stage": stage, "event": event, "at": _now(), **extra})

    def started(self, stage: str, fingerprint: str, *, event: str = "started"):
        self.state["stages"][stage] = {"fingerprint": fingerprint, "status": "running", "started_at": _now()}
        self._event(stage, event, fingerprint=fingerprint)
        self._save()

    def finished(self, stage: str, fingerprint: str, seconds: float, **extra):
        rec = self.state["stages"].setdefault(stage, {"started_at": _now()})
        rec.update({"fingerprint": fingerprint, "status": "done", "finished_at": _now(),
                    "seconds": round(seconds, 3), **extra})
        self._event(stage, "computed", fingerprint=fingerprint, seconds=round(seconds, 3))
        self._save()

    def skipped(self, stage: str, fingerprint: str):
        self._event(stage, "skipped", fingerprint=fingerprint)
        self._save()

    def invalidate(self, stage: str):
        if stage in self.state["stages"]:
            self.state["stages"][stage]["status"] = "stale"
            self._event(stage, "invalidated")
            self._save()

    def _save(self):
        _data.atomic_write_json(self.path, self.state)


# --------------------------------------------------------------------------------------------------
# the session: one run directory, one config, memoised stage results
# --------------------------------------------------------------------------------------------------


def _default_log(message: str) -> None:
    logger.info(message)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class _Session:
    """Runs the stages of one configuration in one run directory; each stage at most once per session."""

    def __init__(self, config: RefineConfig, *, progress: bool = True, log: Log | None = None,
                 resume: bool = False):
        if config.run_dir is None:
            config = config.replace(run_dir=str(default_run_dir(config.data)))
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.progress = bool(progress)
        self.log = log or _default_log
        self.resume = bool(resume)
        self._memo: dict[str, Any] = {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "cache").mkdir(exist_ok=True)
        self.stages = _StageLog(self.run_dir)

    # -- paths --------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def cache_dir(self) -> Path:
        return self.run_dir / "cache"

    # -- inputs -------------------------------------------------------------------------------------
    @property
    def dataset(self):
        if "dataset" not in self._memo:
            cfg = self.config
            self._memo["dataset"] = _data.read_instructions(
                cfg.data, format=cfg.format, field_map=dict(cfg.field_map) or None, duplicates=cfg.duplicates)
        return self._memo["dataset"]

    @property
    def data_sha256(self) -> str:
        if "data_sha" not in self._memo:
            self._memo["data_sha"] = _sha256_file(self.config.data)
        return self._memo["data_sha"]

    @property
    def candidate_mask(self) -> np.ndarray:
        """(N,) bool: records that may be clustered and selected."""
        dup = np.asarray(self.dataset.duplicate_of, dtype=np.int64)
        if self.config.duplicates == "drop":
            return dup < 0
        return np.ones(len(self.dataset), dtype=bool)

    @property
    def n_candidates(self) -> int:
        return int(self.candidate_mask.sum())

    @property
    def validation(self):
        if "validation" not in self._memo:
            if not self.config.valid:
                raise PipelineError("the value stage needs a validation file (--valid)")
            self._memo["validation"] = _data.read_validation(self.config.valid, format=self.config.valid_format)
            if len(self._memo["validation"]) == 0:
                raise _data.DataError("validation set is empty", path=self.config.valid)
        return self._memo["validation"]

    @property
    def valid_sha256(self) -> str | None:
        if not self.config.valid:
            return None
        if "valid_sha" not in self._memo:
            self._memo["valid_sha"] = _sha256_file(self.config.valid)
        return self._memo["valid_sha"]

    @property
    def fingerprints(self) -> dict[str, str]:
        if "fingerprints" not in self._memo:
            self._memo["fingerprints"] = stage_fingerprints(
                self.config, data_sha256=self.data_sha256, n_candidates=self.n_candidates,
                valid_sha256=self.valid_sha256)
        return self._memo["fingerprints"]

    @property
    def n_clusters(self) -> int:
        return self.config.resolved_n_clusters(self.n_candidates)

    @property
    def removal_step(self) -> int:
        return self.config.resolved_removal_step(self.n_clusters)

    def budget(self) -> int:
        from shed_jax import select as _select

        if (self.config.ratio is None) == (self.config.size is None):
            raise PipelineError("give exactly one of a ratio or a size for the budget (--ratio R | --size N)")
        n = self.n_candidates
        if self.config.size is not None:
            _data.check_budget(n, self.config.size, path=self.config.data)
        return int(_select.budget(n, size=self.config.size, ratio=self.config.ratio))

    # -- checks before any heavy work ---------------------------------------------------------------
    def preflight(self, *, need_valid: bool, need_budget: bool, output: str | None = None) -> None:
        """Read and check every input; raise a user error before any stage starts."""
        cfg = self.config
        if not Path(cfg.data).exists():
            raise _data.DataError("file not found", path=cfg.data)
        n = self.n_candidates  # reads + validates the data
        if n == 0:
            raise _data.DataError("no candidate examples (every record is a duplicate?)", path=cfg.data)
        if cfg.n_clusters is not None:
            _data.check_clusters(n, cfg.n_clusters, path=cfg.data)
        k = self.n_clusters
        if self.removal_step > k:
            raise PipelineError(f"--removal-step {self.removal_step} is larger than the number of clusters ({k})")
        if cfg.text not in ("all", "prompt", "response") and len(self.dataset):
            self.dataset.texts(cfg.text)  # raises a DataError naming a record without the key
        if need_valid:
            if not cfg.valid:
                raise PipelineError("the value stage needs a validation file (--valid)")
            if not Path(cfg.valid).is_file():
                raise _data.DataError("validation file not found", path=cfg.valid)
            validation = self.validation
            proxy_config = self.proxy_config()
            if not hasattr(validation, "choices") and len(validation) <= proxy_config.n_distractors:
                raise _data.DataError(
                    f"an instruction-format validation set needs more than n_distractors="
                    f"{proxy_config.n_distractors} records, got {len(validation)}", path=cfg.valid)
        if need_budget:
            self.budget()
        if output is not None:
            out = Path(output)
            if out.resolve() == Path(cfg.data).resolve():
                raise PipelineError(f"{out}: the output would overwrite the input data")
            if not out.parent.is_dir():
                raise PipelineError(f"{out.parent}: output directory does not exist")

    def proxy_config(self):
        """The proxy utility's configuration (``config.proxy_options`` applied)."""
        from shed_jax import proxies as _proxies

        options = dict(self.config.proxy_options)
        fields = {f.name for f in dataclasses.fields(_proxies.EmbeddingProxyConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise PipelineError(f"unknown proxy option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        try:
            return _proxies.EmbeddingProxyConfig(**options)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"bad proxy option: {exc}") from None

    def write_config(self) -> None:
        payload = {"version": CONFIG_VERSION, "config": self.config.to_dict(),
                   "resolved": {"run_dir": str(self.run_dir), "n_examples": len(self.dataset),
                                "n_candidates": self.n_candidates, "n_clusters": self.n_clusters,
                                "removal_step": self.removal_step, "data_sha256": self.data_sha256,
                                "valid_sha256": self.valid_sha256},
                   "written_at": _now()}
        _data.atomic_write_json(self.path("config.json"), payload)

    # -- stages -------------------------------------------------------------------------------------
    def embed(self) -> EmbedResult:
        if "embed" in self._memo:
            return self._memo["embed"]
        from shed_jax import embed as _embed

        fp = self.fingerprints["embed"]
        skipped = self.stages.is_done("embed", fp)
        start = time.perf_counter()
        texts = self.dataset.texts(self.config.text)
        if skipped:
            self.log(f"embed: up to date ({len(texts)} records, cache {self.cache_dir}); loading")
        else:
            self.log(f"embed: {len(texts)} records with {self.config.model}")
            self.stages.started("embed", fp)
        embeddings = np.asarray(_embed.embed_texts(
            texts, model=self.config.model, batch_size=self.config.batch_size, cache_dir=self.cache_dir,
            progress=self.progress), dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise RuntimeError(f"embed_texts returned shape {embeddings.shape} for {len(texts)} texts")
        seconds = time.perf_counter() - start
        if skipped:
            self.stages.skipped("embed", fp)
        else:
            self.stages.finished("embed", fp, seconds, n_examples=len(texts), dim=int(embeddings.shape[1]),
                                 cache_key=_embed.embedding_cache_key(texts, self.config.model))
        result = EmbedResult(embeddings, fp, skipped, seconds)
        self._memo["embed"] = result
        return result

    def cluster(self) -> ClusterResult:
        if "cluster" in self._memo:
            return self._memo["cluster"]
        fp = self.fingerprints["cluster"]
        path = self.path("clusters.npz")
        n = len(self.dataset)
        if self.stages.is_done("cluster", fp) and path.is_file():
            arrays = _load_npz(path)
            rec = self.stages.record("cluster")
            result = ClusterResult(arrays["centroids"], arrays["labels"], arrays["proxy_index"], fp, True, 0.0,
                                   rec.get("inertia"))
            if result.labels.shape != (n,):
                raise PipelineError(f"{path}: {result.labels.shape[0]} labels for {n} records; delete it")
            self.log(f"cluster: up to date ({result.n_clusters} clusters); loaded {path.name}")
            self.stages.skipped("cluster", fp)
            self._memo["cluster"] = result
            return result

        from shed_jax import cluster as _cluster

        embeddings = self.embed().embeddings
        self.stages.started("cluster", fp)
        start = time.perf_counter()
        candidates = np.flatnonzero(self.candidate_mask)
        k = self.n_clusters
        self.log(f"cluster: k-means with K={k} on {candidates.size} candidate records")
        fit = _cluster.kmeans(embeddings[candidates], k, seed=self.config.seed, max_iter=self.config.kmeans_max_iter)
        local_labels = np.asarray(fit.labels, dtype=np.int32)
        local_proxies = np.asarray(_cluster.proxies(embeddings[candidates], fit.centroids, local_labels),
                                   dtype=np.int64)
        labels = np.full(n, -1, dtype=np.int32)
        labels[candidates] = local_labels
        proxy_index = candidates[local_proxies].astype(np.int64)
        centroids = np.asarray(fit.centroids, dtype=np.float32)
        _data.atomic_write_bytes(path, _npz_bytes(centroids=centroids, labels=labels, proxy_index=proxy_index))
        seconds = time.perf_counter() - start
        if not fit.converged:
            self.log(f"cluster: k-means did not converge in {fit.n_iter} iterations (inertia {fit.inertia:.4g})")
        self.stages.finished("cluster", fp, seconds, n_clusters=k, inertia=float(fit.inertia),
                             n_iter=int(fit.n_iter), converged=bool(fit.converged))
        result = ClusterResult(centroids, labels, proxy_index, fp, False, seconds, float(fit.inertia))
        self._memo["cluster"] = result
        return result

    def value(self) -> ValueResult:
        if "value" in self._memo:
            return self._memo["value"]
        fp = self.fingerprints["value"]
        values_path = self.path("values.json")
        ckpt_dir = self.path("shapley_ckpt")
        if self.stages.is_done("value", fp) and values_path.is_file():
            result = self._load_values(values_path, fp)
            self.log(f"value: up to date ({result.n_permutations} permutations); loaded {values_path.name}")
            self.stages.skipped("value", fp)
            self._memo["value"] = result
            return result

        clusters = self.cluster()
        rec = self.stages.record("value")
        continuing = (self.resume and rec.get("status") == "running" and rec.get("fingerprint") == fp
                      and ckpt_dir.is_dir())
        if ckpt_dir.exists() and not continuing:
            if rec.get("status") == "running" and rec.get("fingerprint") == fp:
                self.log("value: discarding the partial Shapley run in shapley_ckpt/ (pass --resume to continue it)")
            shutil.rmtree(ckpt_dir)
        self.stages.started("value", fp, event="resumed" if continuing else "started")
        start = time.perf_counter()
        members, owners = self.representatives(clusters)
        utility = self._build_utility(members)
        k = clusters.n_clusters
        n_players = int(members.shape[0])
        m = self.removal_step
        p = self.config.n_permutations
        players = (f"K={k} proxies" if n_players == k
                   else f"{n_players} proxies (up to {self.config.proxies_per_cluster} per cluster, K={k})")
        self.log(f"value: Monte Carlo Shapley over {players}, {p} permutations, removal step {m}"
                 + (" (resuming from shapley_ckpt/)" if continuing else ""))
        from shed_jax import shapley as _shapley

        kwargs = dict(n_permutations=p, removal_step=m, seed=self.config.seed,
                      checkpoint_dir=str(ckpt_dir), progress=self.progress, history_every=max(1, p // 100))
        if self.config.shapley_batch_size is not None:
            kwargs["batch_size"] = self.config.shapley_batch_size
        estimate = _shapley.monte_carlo(utility, n_players, **kwargs)
        u_full = _finite_or_none(estimate.u_full) if getattr(estimate, "u_full", None) is not None else None
        u_empty = _finite_or_none(estimate.u_empty) if getattr(estimate, "u_empty", None) is not None else None
        member_values = np.asarray(estimate.values, dtype=np.float64)
        member_stderr = np.asarray(estimate.stderr, dtype=np.float64)
        values, stderr = cluster_means(member_values, member_stderr, owners, k)
        payload = {"cluster_values": [float(v) for v in values],
                   "stderr": [_finite_or_none(s) for s in stderr],
                   "n_permutations": int(estimate.n_permutations), "n_evaluations": int(estimate.n_evaluations),
                   "removal_step": m, "seed": self.config.seed,
                   "utility": {"proxy": self.config.proxy, **self._utility_description(utility)},
                   "u_full": u_full, "u_empty": u_empty,
                   "proxy_index": [int(i) for i in clusters.proxy_index],
                   "proxies_per_cluster": int(self.config.proxies_per_cluster)}
        if n_players != k:
            payload["members"] = {"index": [int(i) for i in members], "cluster": [int(c) for c in owners],
                                  "value": [float(v) for v in member_values],
                                  "stderr": [_finite_or_none(x) for x in member_stderr]}
        history = getattr(estimate, "history", None)
        if history:
            history_values, history_stderr = cluster_means(np.asarray(history["values"], np.float64),
                                                           np.asarray(history["stderr"], np.float64), owners, k)
            _data.atomic_write_bytes(self.path("convergence.npz"), _npz_bytes(
                n_permutations=np.asarray(history["n_permutations"]),
                values=history_values, stderr=history_stderr))
        _data.atomic_write_json(values_path, payload)
        seconds = time.perf_counter() - start
        self.stages.finished("value", fp, seconds, n_permutations=int(estimate.n_permutations),
                             n_evaluations=int(estimate.n_evaluations))
        result = ValueResult(values, stderr, int(estimate.n_permutations), int(estimate.n_evaluations), m,
                             u_full, u_empty, fp, False, seconds)
        self._memo["value"] = result
        return result

    def _load_values(self, path: Path, fp: str) -> ValueResult:
        payload = _read_values_file(path)
        values = np.asarray(payload["cluster_values"], dtype=np.float64)
        stderr = np.asarray([np.nan if s is None else s for s in payload.get("stderr", [None] * len(values))],
                            dtype=np.float64)
        return ValueResult(values, stderr, int(payload.get("n_permutations", 0)),
                           int(payload.get("n_evaluations", 0)), int(payload.get("removal_step", 0)),
                           payload.get("u_full"), payload.get("u_empty"), fp, True, 0.0)

    def representatives(self, clusters: ClusterResult) -> tuple[np.ndarray, np.ndarray]:
        """``(index, cluster)`` of the Shapley players: each cluster's proxy, then (with
        ``proxies_per_cluster > 1``) its next members nearest the centroid."""
        if self.config.proxies_per_cluster == 1:
            proxy_index = np.asarray(clusters.proxy_index, np.int64)
            return proxy_index, np.arange(proxy_index.shape[0], dtype=np.int64)
        from shed_jax import cluster as _cluster

        embeddings = self.embed().embeddings
        return _cluster.representatives(embeddings, clusters.centroids, clusters.labels,
                                        int(self.config.proxies_per_cluster), proxy_index=clusters.proxy_index)

    def _build_utility(self, member_index: np.ndarray):
        from shed_jax import embed as _embed
        from shed_jax import proxies as _proxies

        dataset = self.dataset
        players = [int(i) for i in member_index]
        kw = dict(model=self.config.model, batch_size=self.config.batch_size, cache_dir=self.cache_dir,
                  progress=False)  # K short texts: no progress bar
        prompt_emb = np.asarray(_embed.embed_texts([dataset.prompts[i] for i in players], **kw), np.float32)
        response_emb = np.asarray(_embed.embed_texts([dataset.responses[i] for i in players], **kw),
                                  np.float32)
        validation = _proxies.embed_validation(self.validation, model=self.config.model, cache_dir=self.cache_dir,
                                               progress=self.progress, batch_size=self.config.batch_size)
        return _proxies.EmbeddingProxyUtility.from_arrays(prompt_emb, response_emb, validation,
                                                          config=self.proxy_config(), seed=self.config.seed)

    @staticmethod
    def _utility_description(utility) -> dict:
        describe = getattr(utility, "describe", None)
        if callable(describe):
            return {k: v for k, v in describe().items() if k != "proxy"}
        return {"class": type(utility).__name__}

    def select(self) -> SelectResult:
        if "select" in self._memo:
            return self._memo["select"]
        fp = self.fingerprints["select"]
        path = self.path("selection.json")
        budget = self.budget()
        if self.stages.is_done("select", fp) and path.is_file() and self.path("scores.jsonl").is_file():
            payload = json.loads(path.read_text(encoding="utf-8"))
            result = SelectResult(np.asarray(payload["indices"], dtype=np.int64), payload["sampler"],
                                  int(payload["budget"]), self.n_candidates, fp, True, 0.0)
            self.log(f"select: up to date ({result.budget} records, {result.sampler}); loaded {path.name}")
            self.stages.skipped("select", fp)
            self._memo["select"] = result
            return result
        clusters = self.cluster()
        values = self.value()
        self.stages.started("select", fp)
        start = time.perf_counter()
        indices = select_indices(clusters.labels, values.cluster_values, budget, sampler=self.config.sampler,
                                 beta=self.config.beta, seed=self.config.seed)
        self.log(f"select: {budget} of {self.n_candidates} candidate records with {self.config.sampler}")
        _data.atomic_write_json(path, {"sampler": self.config.sampler, "budget": budget,
                                       "beta": float(self.config.beta), "seed": self.config.seed,
                                       "ratio": self.config.ratio, "size": self.config.size,
                                       "indices": [int(i) for i in indices]})
        _data.write_jsonl(self.path("scores.jsonl"),
                          score_rows(self.dataset, clusters, values.cluster_values, values.stderr, indices))
        seconds = time.perf_counter() - start
        self.stages.finished("select", fp, seconds, budget=budget)
        result = SelectResult(indices, self.config.sampler, budget, self.n_candidates, fp, False, seconds)
        self._memo["select"] = result
        return result


# --------------------------------------------------------------------------------------------------
# helpers shared by the stages and the CLI
# --------------------------------------------------------------------------------------------------


def select_indices(labels: np.ndarray, cluster_values: np.ndarray, budget: int, *, sampler: str = "qocs",
                   beta: float = 1.0, seed: int = 0) -> np.ndarray:
    """Selected record indices, (budget,) int64, distinct, never a record with label -1.

    Args:
      labels: (N,) int cluster of each record, -1 for non-candidates.
      cluster_values: (K,) float value of each cluster.
      budget: number of records to select (<= number of candidates).
      sampler: "qocs", "qwcs" or "random" (uniform over the candidates).
    """
    from shed_jax import select as _select

    labels = np.asarray(labels)
    cluster_values = np.asarray(cluster_values, dtype=np.float64)
    n_clusters = int(cluster_values.shape[0])
    if sampler == "qocs":
        return np.asarray(_select.qocs(labels, cluster_values, budget, seed=seed, n_clusters=n_clusters),
                          dtype=np.int64)
    if sampler == "qwcs":
        return np.asarray(_select.qwcs(labels, cluster_values, budget, beta=beta, seed=seed, n_clusters=n_clusters),
                          dtype=np.int64)
    if sampler == "random":
        return np.asarray(_select.random(labels.shape[0], budget, seed=seed, candidates=labels >= 0),
                          dtype=np.int64)
    raise PipelineError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def cluster_means(member_values: np.ndarray, member_stderr: np.ndarray, owners: np.ndarray, n_clusters: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster mean of the players' values (last axis) and its standard error.

    The standard error combines the players' standard errors as if independent,
    ``sqrt(sum se_i^2) / n_k``: the players' estimates share permutations, so it is approximate. With one
    player per cluster both are the players' own, reordered by cluster.
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


def score_rows(dataset, clusters: ClusterResult, cluster_values: np.ndarray, stderr: np.ndarray,
               selected: Sequence[int]) -> list[dict]:
    """One dict per input record: index, cluster, is_proxy, value, stderr, selected (+ duplicate_of).

    ``value``/``stderr`` are the record's cluster's; dropped duplicates have cluster -1, value None and
    ``duplicate_of`` (index of the earlier identical record).
    """
    labels = np.asarray(clusters.labels)
    is_proxy = np.zeros(labels.shape[0], dtype=bool)
    is_proxy[np.asarray(clusters.proxy_index, dtype=np.int64)] = True
    chosen = np.zeros(labels.shape[0], dtype=bool)
    chosen[np.asarray(selected, dtype=np.int64)] = True
    duplicate_of = np.asarray(dataset.duplicate_of, dtype=np.int64)
    rows = []
    for i in range(labels.shape[0]):
        k = int(labels[i])
        row = {"index": i, "cluster": k, "is_proxy": bool(is_proxy[i]),
               "value": float(cluster_values[k]) if k >= 0 else None,
               "stderr": _finite_or_none(stderr[k]) if k >= 0 else None,
               "selected": bool(chosen[i])}
        if k < 0 and duplicate_of[i] >= 0:
            row["duplicate_of"] = int(duplicate_of[i])
        rows.append(row)
    return rows


def _read_values_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _data.DataError("values file not found", path=str(path)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _data.DataError(f"not a JSON values file: {exc}", path=str(path)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("cluster_values"), list):
        raise _data.DataError("expected an object with a 'cluster_values' list", path=str(path),
                              field="cluster_values")
    try:
        values = np.asarray(payload["cluster_values"], dtype=np.float64)
    except (TypeError, ValueError):
        raise _data.DataError("cluster_values must be numbers", path=str(path), field="cluster_values") from None
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise _data.DataError("cluster_values must be a flat list of finite numbers", path=str(path),
                              field="cluster_values")
    return payload


def write_report(run_dir: str | os.PathLike, *, log: Log | None = None) -> Path | None:
    """(Re)write ``RUN_DIR/report.html`` with :func:`shed_jax.report.write_report`.

    Returns the report path, or None when the report module is unavailable (logged).
    """
    log = log or _default_log
    try:
        from shed_jax import report as _report
    except ImportError as exc:
        log(f"report: not written (shed_jax.report unavailable: {exc})")
        return None
    result = _report.write_report(Path(run_dir))
    return Path(result) if result is not None else Path(run_dir) / "report.html"


# --------------------------------------------------------------------------------------------------
# public stage functions
# --------------------------------------------------------------------------------------------------


def _session(config, progress, log, resume=False) -> _Session:
    return _Session(config, progress=progress, log=log, resume=resume)


def run_embed(config: RefineConfig, *, progress: bool = True, log: Log | None = None) -> EmbedResult:
    """Embed every record of ``config.data`` into ``RUN_DIR/cache`` (skipped when up to date).

    Returns an :class:`EmbedResult` with ``embeddings`` (N, d) float32.
    """
    session = _session(config, progress, log)
    session.preflight(need_valid=False, need_budget=False)
    session.write_config()
    return session.embed()


def run_cluster(config: RefineConfig, *, progress: bool = True, log: Log | None = None) -> ClusterResult:
    """Embed (cached) and cluster the candidates; writes ``RUN_DIR/clusters.npz``.

    Returns a :class:`ClusterResult` (centroids (K, d), labels (N,) with -1 for dropped duplicates,
    proxy_index (K,)).
    """
    session = _session(config, progress, log)
    session.preflight(need_valid=False, need_budget=False)
    session.write_config()
    return session.cluster()


def run_value(config: RefineConfig, *, progress: bool = True, log: Log | None = None,
              resume: bool = False) -> ValueResult:
    """Shapley values of the cluster proxies; writes ``values.json`` and ``convergence.npz``.

    Runs the embed and cluster stages first when they are not up to date. With ``resume=True`` an
    interrupted valuation with the same fingerprint continues from ``RUN_DIR/shapley_ckpt``.
    """
    session = _session(config, progress, log, resume)
    session.preflight(need_valid=True, need_budget=False)
    session.write_config()
    return session.value()


def run_select(config: RefineConfig, *, progress: bool = True, log: Log | None = None,
               values_path: str | os.PathLike | None = None, output: str | os.PathLike | None = None
               ) -> SelectResult:
    """Select a budget of records from cluster values; writes ``selection.json`` and ``scores.jsonl``.

    Args:
      config: needs ``data``, ``run_dir`` (holding ``clusters.npz``), a budget and a sampler.
      values_path: a values file (``{"cluster_values": [K floats], "stderr": [...]}``) to use instead of
        the run's value stage. Its length must equal the number of clusters in ``clusters.npz``.
      output: if given, the selected records are written there exactly as in the data (with a
        ``.scores.jsonl`` sidecar).
    """
    session = _session(config, progress, log)
    session.preflight(need_valid=values_path is None, need_budget=True, output=None if output is None else str(output))
    if values_path is None:
        session.write_config()
        result = session.select()
        clusters = session.cluster()
        values = session.value()
        cluster_values, stderr = values.cluster_values, values.stderr
    else:
        clusters_path = session.path("clusters.npz")
        if not clusters_path.is_file():
            raise PipelineError(f"{clusters_path}: not found; run `shed cluster` into this run directory first")
        arrays = _load_npz(clusters_path)
        clusters = ClusterResult(arrays["centroids"], arrays["labels"], arrays["proxy_index"], "", True, 0.0)
        n = len(session.dataset)
        if clusters.labels.shape[0] != n:
            raise PipelineError(f"{clusters_path}: clustered {clusters.labels.shape[0]} records but "
                                f"{config.data} has {n}")
        payload = _read_values_file(values_path)
        cluster_values = np.asarray(payload["cluster_values"], dtype=np.float64)
        if cluster_values.shape[0] != clusters.n_clusters:
            raise _data.DataError(f"{cluster_values.shape[0]} cluster values but clusters.npz has "
                                  f"{clusters.n_clusters} clusters", path=str(values_path), field="cluster_values")
        stored_proxies = payload.get("proxy_index")
        if isinstance(stored_proxies, list) and stored_proxies != [int(i) for i in clusters.proxy_index]:
            raise _data.DataError(f"these values belong to another clustering (proxy_index differs from "
                                  f"{clusters_path})", path=str(values_path), field="proxy_index")
        raw_stderr = payload.get("stderr") or [None] * cluster_values.shape[0]
        if len(raw_stderr) != cluster_values.shape[0]:
            raise _data.DataError("stderr and cluster_values differ in length", path=str(values_path), field="stderr")
        stderr = np.asarray([np.nan if s is None else s for s in raw_stderr], dtype=np.float64)
        start = time.perf_counter()
        from shed_jax import select as _select

        n_labelled = int((clusters.labels >= 0).sum())
        if config.size is not None:
            _data.check_budget(n_labelled, config.size, path=str(clusters_path))
        budget = int(_select.budget(n_labelled, size=config.size, ratio=config.ratio))
        indices = select_indices(clusters.labels, cluster_values, budget, sampler=config.sampler,
                                 beta=config.beta, seed=config.seed)
        session.log(f"select: {budget} of {session.n_candidates} candidate records with {config.sampler}")
        session.stages.invalidate("select")  # selection.json is no longer the pipeline's own selection
        _data.atomic_write_json(session.path("selection.json"), {
            "sampler": config.sampler, "budget": budget, "beta": float(config.beta), "seed": config.seed,
            "ratio": config.ratio, "size": config.size, "values": str(values_path),
            "indices": [int(i) for i in indices]})
        _data.write_jsonl(session.path("scores.jsonl"),
                          score_rows(session.dataset, clusters, cluster_values, stderr, indices))
        result = SelectResult(indices, config.sampler, budget, session.n_candidates,
                              _hash({"values": _sha256_file(values_path), "config": config.to_dict()}), False,
                              time.perf_counter() - start)
    if output is not None:
        scores = score_rows(session.dataset, clusters, cluster_values, stderr, result.indices)
        _data.write_selection(output, session.dataset, result.indices,
                              scores=[scores[int(i)] for i in result.indices])
    return result


def refine(config: RefineConfig, *, progress: bool = True, log: Log | None = None, resume: bool = False,
           report: bool = True) -> RefineResult:
    """Run the whole SHED pipeline (embed -> cluster -> value -> select -> report) in ``config.run_dir``.

    Every input is read and checked before the first stage starts (a user error raises
    :class:`shed_jax.data.DataError` or :class:`PipelineError`, both ``ValueError``). Up-to-date stages are
    loaded, not recomputed. Writes ``config.json``, the stage outputs, ``summary.json``, ``report.html``
    (when :mod:`shed_jax.report` is available) and, last, ``config.output`` (the selected records exactly
    as in the data, plus a ``.scores.jsonl`` sidecar) -- so a failure never leaves a partial output.

    Args:
      config: the run's options; ``valid`` and exactly one of ``ratio``/``size`` are required.
      progress: show tqdm progress bars (stderr).
      log: callable receiving one-line progress messages (default: the ``shed_jax.pipeline`` logger).
      resume: continue an interrupted Shapley valuation from ``RUN_DIR/shapley_ckpt``.
      report: write ``RUN_DIR/report.html`` (a failure to write it is logged, never raised).

    Returns:
      A :class:`RefineResult`.
    """
    wall = time.perf_counter()
    session = _session(config, progress, log, resume)
    session.preflight(need_valid=True, need_budget=True, output=config.output)
    session.write_config()
    session.log(f"run directory: {session.run_dir}")
    embed_result = None
    if not (session.stages.is_done("cluster", session.fingerprints["cluster"])
            and session.path("clusters.npz").is_file()):
        embed_result = session.embed()
    clusters = session.cluster()
    values = session.value()
    selection = session.select()
    stages = {"embed": "skipped" if embed_result is None or embed_result.skipped else "computed",
              "cluster": "skipped" if clusters.skipped else "computed",
              "value": "skipped" if values.skipped else "computed",
              "select": "skipped" if selection.skipped else "computed"}
    summary = _refine_summary(session, clusters, values, selection, stages, time.perf_counter() - wall)
    _data.atomic_write_json(session.path("summary.json"), summary)
    report_path = None
    if report:
        try:
            report_path = write_report(session.run_dir, log=session.log)
        except Exception as exc:  # the selection is done; a broken plot must not lose it
            session.log(f"report: failed ({type(exc).__name__}: {exc}); the selection is unaffected")
            logger.debug("report failure", exc_info=True)
    output = None
    if config.output is not None:
        scores = score_rows(session.dataset, clusters, values.cluster_values, values.stderr, selection.indices)
        _data.write_selection(config.output, session.dataset, selection.indices,
                              scores=[scores[int(i)] for i in selection.indices])
        output = Path(config.output)
        session.log(f"wrote {selection.budget} records to {output}")
    summary["report"] = str(report_path) if report_path is not None else None
    summary["seconds_total"] = round(time.perf_counter() - wall, 3)
    _data.atomic_write_json(session.path("summary.json"), summary)
    return RefineResult(session.run_dir, output, selection.indices, clusters.labels, values.cluster_values,
                        values.stderr, summary, report_path, stages)


def _refine_summary(session: _Session, clusters: ClusterResult, values: ValueResult, selection: SelectResult,
                    stages: dict, seconds: float) -> dict:
    cfg = session.config
    n = len(session.dataset)
    return {"data": str(cfg.data), "valid": str(cfg.valid), "output": cfg.output, "run_dir": str(session.run_dir),
            "n_examples": n, "n_candidates": session.n_candidates, "n_duplicates": n - session.n_candidates
            if cfg.duplicates == "drop" else 0,
            "n_clusters": clusters.n_clusters, "sampler": selection.sampler, "budget": selection.budget,
            "ratio": cfg.ratio, "size": cfg.size, "seed": cfg.seed,
            "cluster": clusters.summary(), "value": values.summary(), "select": selection.summary(),
            "stages": stages, "seconds_total": round(seconds, 3)}


# --------------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------------

DEMO_SIZES = {"small": {"n_examples": 600, "n_topics": 16, "n_clusters": 16, "n_validation": 120},
              "default": {"n_examples": 3000, "n_topics": 32, "n_clusters": 48, "n_validation": 300}}


def demo(run_dir: str | os.PathLike | None = None, *, size: str = "small", seed: int = 0, ratio: float = 0.2,
         n_permutations: int | None = None, progress: bool = True, log: Log | None = None,
         model: str = DEFAULT_MODEL) -> DemoResult:
    """Refine a generated data set with known junk (:func:`shed_jax.synthetic.make_demo`) and measure it.

    Writes the data under ``RUN_DIR/demo_data/`` (20% of the records, in whole topics, are junk: responses
    that do not answer their instruction), runs :func:`refine` with QOCS at ``ratio``, then, from the same
    cluster values and budget, QWCS and a uniformly random selection. ``size``: "small" (600 records,
    16 topics, K=16) or "default" (3000 records, 32 topics, K=48).

    Returns:
      :class:`DemoResult` with ``junk_rate_input`` and ``junk_rate[sampler]`` for qocs, qwcs and random.
    """
    from shed_jax import synthetic as _synthetic

    if size not in DEMO_SIZES:
        raise PipelineError(f"demo size must be one of {', '.join(DEMO_SIZES)}, got {size!r}")
    spec = DEMO_SIZES[size]
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(f"demo-{size}")
    data_dir = run_dir / "demo_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = _synthetic.make_demo(data_dir, n_examples=spec["n_examples"], n_topics=spec["n_topics"],
                                 n_validation=spec["n_validation"], seed=seed)
    junk = np.zeros(spec["n_examples"], dtype=bool)
    junk[np.asarray(paths.junk_indices, dtype=np.int64)] = True
    config = RefineConfig(data=str(paths.train), valid=str(paths.valid), output=str(run_dir / "selected.jsonl"),
                          run_dir=str(run_dir), n_clusters=spec["n_clusters"], ratio=ratio, sampler="qocs",
                          seed=seed, model=model,
                          **({"n_permutations": n_permutations} if n_permutations is not None else {}))
    result = refine(config, progress=progress, log=log)
    if junk.shape[0] != result.labels.shape[0]:
        raise RuntimeError(f"demo data has {result.labels.shape[0]} records, expected {junk.shape[0]}")
    candidates = result.labels >= 0
    budget = int(result.indices.shape[0])
    rates = {"qocs": float(junk[result.indices].mean())}
    for sampler in ("qwcs", "random"):
        picks = select_indices(result.labels, result.cluster_values, budget, sampler=sampler, seed=seed)
        rates[sampler] = float(junk[picks].mean())
    out = DemoResult(run_dir, Path(paths.train), Path(paths.valid), budget, float(junk[candidates].mean()), rates,
                     result)
    summary = dict(result.summary)
    summary["demo"] = out.summary()
    _data.atomic_write_json(run_dir / "summary.json", summary)
    try:  # again, so that the report can show the junk rates
        write_report(run_dir, log=log)
    except Exception as exc:
        (log or _default_log)(f"report: failed ({type(exc).__name__}: {exc})")
    return out
