"""Typed artifacts of a run directory: what each stage produces, with ``save(run_dir)`` and ``load(run_dir)``.

=================== ==================== ======================================================================
artifact            file                 written by
=================== ==================== ======================================================================
:class:`Clusters`   ``clusters.npz``     cluster stage: centroids, labels (-1 = not a candidate), proxies
:class:`Examples`   ``examples.json``    cluster stage: a few example records per cluster, record categories
:class:`Values`     ``values.json``      value stage: value and standard error per cluster (and per member)
:class:`Convergence` ``convergence.npz`` value stage: per-cluster values and stderr along the permutations
:class:`Selection`  ``selection.json``   select stage: the chosen record indices and how they were chosen
:class:`GroundTruth` ``ground_truth.json`` ``shed demo``: which records are known junk
=================== ==================== ======================================================================

Everything that reads a run directory (the report, ``shed select``, ``--resume``, the scores sidecar) reads
these types; nothing else parses the files. A missing file raises ``FileNotFoundError``; a malformed one
raises :class:`shed_jax.errors.DataError` naming the file and field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shed_jax.errors import DataError
from shed_jax.io import atomic_write_json, atomic_write_npz, finite_or_none

__all__ = ["Clusters", "Convergence", "Examples", "GroundTruth", "MemberValues", "Selection", "Values"]


def _dir(run_dir) -> Path:
    return Path(getattr(run_dir, "path", run_dir))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(2, "not found", str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not valid JSON: {exc}", path=path) from None


def _read_object_with_list(path: Path, key: str) -> dict:
    """The JSON object in ``path``, which must hold a list under ``key`` (else :class:`DataError` naming it)."""
    payload = _read_json(path)
    if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
        article = "an" if key[0] in "aeiou" else "a"
        raise DataError(f"expected an object with {article} '{key}' list", path=path, field=key)
    return payload


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(2, "not found", str(path))
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"missing arrays {missing}", path=path)
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable .npz ({exc})", path=path) from None


def _floats(values, path: Path, name: str) -> np.ndarray:
    """(n,) float64 from a JSON list of numbers or nulls (null -> NaN)."""
    if not isinstance(values, list):
        raise DataError("must be a list of numbers", path=path, field=name)
    try:
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError("must be a list of numbers", path=path, field=name) from None


@dataclass(frozen=True, eq=False)
class Clusters:
    """k-means over the candidate records: ``centroids`` (K, d) float32; ``labels`` (N,) int32 with -1 for
    records that are not candidates (dropped duplicates); ``proxy_index`` (K,) int64 record index of each
    cluster's proxy (its member nearest the centroid)."""

    centroids: np.ndarray
    labels: np.ndarray
    proxy_index: np.ndarray
    inertia: float | None = None
    n_iter: int | None = None
    converged: bool | None = None

    FILENAME = "clusters.npz"

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        """(K,) int64 candidate records per cluster."""
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_clusters)[: self.n_clusters]

    def summary(self) -> dict:
        sizes = self.sizes()
        return {"n_clusters": self.n_clusters, "n_candidates": int((self.labels >= 0).sum()),
                "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()), "inertia": self.inertia}

    def save(self, run_dir) -> None:
        atomic_write_npz(_dir(run_dir) / self.FILENAME, centroids=self.centroids, labels=self.labels,
                         proxy_index=self.proxy_index)

    @classmethod
    def load(cls, run_dir, *, inertia: float | None = None) -> "Clusters":
        path = _dir(run_dir) / cls.FILENAME
        arrays = _read_npz(path, ("centroids", "labels", "proxy_index"))
        labels, proxy_index = arrays["labels"].reshape(-1), arrays["proxy_index"].reshape(-1)
        if arrays["centroids"].ndim != 2 or proxy_index.shape[0] != arrays["centroids"].shape[0]:
            raise DataError("centroids and proxy_index disagree on the number of clusters", path=path)
        return cls(arrays["centroids"], labels, proxy_index, inertia)


@dataclass(frozen=True, eq=False)
class Examples:
    """What a report shows of the records, so that it never re-reads the data file.

    ``members[k]``: up to ``per_cluster`` ``{"index", "prompt", "response"}`` of cluster ``k`` (the proxy
    first, then the members nearest the centroid), texts cut to ``text_limit`` characters;
    ``categories``: the distinct values of the records' ``category`` field and ``category_codes`` (N,) the
    index of each record's category, or both None when the records have none.
    """

    members: list[list[dict]]
    categories: list[str] | None = None
    category_codes: list[int] | None = None

    FILENAME = "examples.json"

    def save(self, run_dir) -> None:
        atomic_write_json(_dir(run_dir) / self.FILENAME, {"members": self.members, "categories": self.categories,
                                                          "category_codes": self.category_codes})

    @classmethod
    def load(cls, run_dir) -> "Examples":
        path = _dir(run_dir) / cls.FILENAME
        payload = _read_object_with_list(path, "members")
        return cls(payload["members"], payload.get("categories"), payload.get("category_codes"))

    def record_categories(self) -> list[str] | None:
        if self.categories is None or self.category_codes is None:
            return None
        return [self.categories[c] for c in self.category_codes]


@dataclass(frozen=True, eq=False)
class MemberValues:
    """Per-player values when a cluster is valued by several members: record ``index``, owning ``cluster``,
    ``value`` and ``stderr``, each (P,)."""

    index: np.ndarray
    cluster: np.ndarray
    value: np.ndarray
    stderr: np.ndarray

    def to_json(self) -> dict:
        return {"index": [int(i) for i in self.index], "cluster": [int(c) for c in self.cluster],
                "value": [float(v) for v in self.value], "stderr": [finite_or_none(float(s)) for s in self.stderr]}


@dataclass(frozen=True, eq=False)
class Values:
    """Shapley values per cluster: ``cluster_values`` (K,) and ``stderr`` (K,) float64 (NaN = unknown).

    ``proxy_index`` (K,) ties the values to a clustering; ``members`` holds every player's value when
    ``proxies_per_cluster > 1``; ``utility`` is the proxy's ``describe()``.
    """

    cluster_values: np.ndarray
    stderr: np.ndarray
    n_permutations: int = 0
    n_evaluations: int = 0
    removal_step: int = 0
    seed: int | None = None
    utility: dict = field(default_factory=dict)
    u_full: float | None = None
    u_empty: float | None = None
    proxy_index: np.ndarray | None = None
    proxies_per_cluster: int = 1
    members: MemberValues | None = None

    FILENAME = "values.json"

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_values.shape[0])

    def summary(self) -> dict:
        order = np.argsort(-self.cluster_values)
        return {"n_clusters": self.n_clusters, "n_permutations": self.n_permutations,
                "n_evaluations": self.n_evaluations, "removal_step": self.removal_step,
                "u_full": self.u_full, "u_empty": self.u_empty, "value_sum": float(self.cluster_values.sum()),
                "top_clusters": [int(k) for k in order[:5]], "bottom_clusters": [int(k) for k in order[::-1][:5]],
                "mean_stderr": finite_or_none(float(np.mean(self.stderr))) if self.stderr.size else None}

    def to_json(self) -> dict:
        payload = {"cluster_values": [float(v) for v in self.cluster_values],
                   "stderr": [finite_or_none(float(s)) for s in self.stderr],
                   "n_permutations": int(self.n_permutations), "n_evaluations": int(self.n_evaluations),
                   "removal_step": int(self.removal_step), "seed": self.seed, "utility": self.utility,
                   "u_full": self.u_full, "u_empty": self.u_empty,
                   "proxy_index": None if self.proxy_index is None else [int(i) for i in self.proxy_index],
                   "proxies_per_cluster": int(self.proxies_per_cluster)}
        if self.members is not None:
            payload["members"] = self.members.to_json()
        return payload

    def save(self, run_dir) -> None:
        atomic_write_json(_dir(run_dir) / self.FILENAME, self.to_json())

    @classmethod
    def load(cls, run_dir) -> "Values":
        return cls.from_file(_dir(run_dir) / cls.FILENAME)

    @classmethod
    def from_file(cls, path) -> "Values":
        """Values from a JSON file; only ``cluster_values`` (finite numbers) is required (``shed select
        --values`` accepts hand-made files)."""
        path = Path(path)
        if not path.is_file():
            raise DataError("values file not found", path=path)
        payload = _read_object_with_list(path, "cluster_values")
        values = _floats(payload["cluster_values"], path, "cluster_values")
        if not np.all(np.isfinite(values)):
            raise DataError("cluster_values must be a flat list of finite numbers", path=path, field="cluster_values")
        raw_stderr = payload.get("stderr")
        stderr = np.full_like(values, np.nan) if raw_stderr is None else _floats(raw_stderr, path, "stderr")
        if stderr.shape != values.shape:
            raise DataError("stderr and cluster_values differ in length", path=path, field="stderr")
        proxy_index = payload.get("proxy_index")
        if proxy_index is not None:
            if not isinstance(proxy_index, list) or len(proxy_index) != values.shape[0]:
                raise DataError("must list one record index per cluster", path=path, field="proxy_index")
            proxy_index = np.asarray(proxy_index, np.int64)
        members = payload.get("members")
        if isinstance(members, dict):
            members = MemberValues(np.asarray(members.get("index", []), np.int64),
                                   np.asarray(members.get("cluster", []), np.int64),
                                   _floats(members.get("value", []), path, "members.value"),
                                   _floats(members.get("stderr", []), path, "members.stderr"))
        else:
            members = None

        def number(name):
            value = payload.get(name)
            return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

        return cls(values, stderr, int(payload.get("n_permutations") or 0), int(payload.get("n_evaluations") or 0),
                   int(payload.get("removal_step") or 0), payload.get("seed"),
                   payload.get("utility") if isinstance(payload.get("utility"), dict) else {},
                   number("u_full"), number("u_empty"), proxy_index, int(payload.get("proxies_per_cluster") or 1),
                   members)


@dataclass(frozen=True, eq=False)
class Convergence:
    """Per-cluster estimates along the run: ``n_permutations`` (T,), ``values`` and ``stderr`` (T, K)."""

    n_permutations: np.ndarray
    values: np.ndarray
    stderr: np.ndarray

    FILENAME = "convergence.npz"

    def save(self, run_dir) -> None:
        atomic_write_npz(_dir(run_dir) / self.FILENAME, n_permutations=self.n_permutations, values=self.values,
                         stderr=self.stderr)

    @classmethod
    def load(cls, run_dir) -> "Convergence":
        path = _dir(run_dir) / cls.FILENAME
        arrays = _read_npz(path, ("n_permutations", "values", "stderr"))
        t = arrays["n_permutations"].reshape(-1)
        values, stderr = arrays["values"], arrays["stderr"]
        if values.ndim != 2 or values.shape != stderr.shape or values.shape[0] != t.shape[0] or t.shape[0] == 0:
            raise DataError("arrays have inconsistent shapes", path=path)
        return cls(t, values, stderr)


@dataclass(frozen=True, eq=False)
class Selection:
    """The selected record indices ``indices`` (budget,) int64 in the sampler's order, and how."""

    indices: np.ndarray
    sampler: str
    budget: int
    beta: float
    seed: int
    ratio: float | None = None
    size: int | None = None
    values: str | None = None  # a values file given to `shed select --values`, else None (the run's own)
    n_candidates: int | None = None

    FILENAME = "selection.json"

    def summary(self) -> dict:
        return {"sampler": self.sampler, "budget": int(self.budget), "n_candidates": self.n_candidates}

    def to_json(self) -> dict:
        payload = {"sampler": self.sampler, "budget": int(self.budget), "beta": float(self.beta), "seed": self.seed,
                   "ratio": self.ratio, "size": self.size}
        if self.values is not None:
            payload["values"] = self.values
        if self.n_candidates is not None:
            payload["n_candidates"] = int(self.n_candidates)
        payload["indices"] = [int(i) for i in self.indices]
        return payload

    def save(self, run_dir) -> None:
        atomic_write_json(_dir(run_dir) / self.FILENAME, self.to_json())

    @classmethod
    def load(cls, run_dir) -> "Selection":
        path = _dir(run_dir) / cls.FILENAME
        payload = _read_object_with_list(path, "indices")
        try:
            indices = np.asarray(payload["indices"], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError("indices must be integers", path=path, field="indices") from None
        return cls(indices, str(payload.get("sampler")), int(payload.get("budget", indices.shape[0])),
                   float(payload.get("beta", 1.0)), payload.get("seed"), payload.get("ratio"), payload.get("size"),
                   payload.get("values"), payload.get("n_candidates"))


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Known junk records of generated data (``shed demo``): ``junk`` (N,) bool, and where it came from."""

    junk: np.ndarray
    source: str = ""

    FILENAME = "ground_truth.json"

    def save(self, run_dir) -> None:
        atomic_write_json(_dir(run_dir) / self.FILENAME, {"source": self.source, "n_records": int(self.junk.shape[0]),
                                                          "junk_indices": np.flatnonzero(self.junk).tolist()})

    @classmethod
    def load(cls, run_dir) -> "GroundTruth":
        path = _dir(run_dir) / cls.FILENAME
        payload = _read_json(path)
        try:
            junk = np.zeros(int(payload["n_records"]), dtype=bool)
            junk[np.asarray(payload["junk_indices"], dtype=np.int64)] = True
        except (TypeError, KeyError, ValueError, IndexError):
            raise DataError("expected n_records and in-range junk_indices", path=path) from None
        return cls(junk, str(payload.get("source", "")))
