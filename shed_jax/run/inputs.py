"""The inputs of a run, read once and checked before any stage starts; stage fingerprints.

:class:`RunInputs` reads the data and validation files lazily (each at most once), resolves the options left
to the run (K, the removal step, the budget) and runs :meth:`RunInputs.preflight`, which raises a
:class:`shed_jax.errors.UserError` for anything wrong with the input before any heavy work starts.

Fingerprints. Each stage's fingerprint is the sha256 of its inputs: the hash of the data's records (their
content, :func:`shed_jax.data.records_sha256`, so the same records from JSON Lines, parquet or the hub hash
alike), the configuration fields the stage reads (resolved: ``--embed-dtype auto`` counts as the dtype it
resolves to on this machine), and the upstream stage's fingerprint. A stage whose
fingerprint matches the one in ``stages.json`` is loaded instead of recomputed; changing an option recomputes
exactly the stages downstream.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np

from shed_jax import data as _data
from shed_jax import select as _select
from shed_jax.config import RefineConfig, check_budget, check_removal_step
from shed_jax.data._json import check_input_file
from shed_jax.errors import DataError, PipelineError, UserError

__all__ = ["RunInputs", "STAGES", "estimate_enabled", "resolved_embed_dtype", "sha256_file", "stage_fingerprints"]

STAGES = ("embed", "cluster", "value", "select")


def estimate_enabled() -> bool:
    """Whether a real run logs its estimate when it starts (``SHED_ESTIMATE=0`` turns it off)."""
    return os.environ.get("SHED_ESTIMATE", "1").strip().lower() not in ("0", "false", "no", "off")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def resolved_proxy_options(config: RefineConfig) -> Any:
    """The proxy's full configuration (defaults filled in), so that a change of a default between versions
    invalidates stored values; the raw options where they are invalid (preflight reports those)."""
    from shed_jax.proxies import registry

    try:
        return sorted(registry.config_dict(registry.make_config(config.proxy, dict(config.proxy_options))).items())
    except UserError:
        return list(config.proxy_options)


def resolved_embed_dtype(config: RefineConfig) -> str:
    """The dtype the embed stage computes in (``--embed-dtype`` with ``auto`` resolved on this machine:
    ``float32`` or ``bfloat16``); the raw option where it is invalid (the option's own check reports that)."""
    from shed_jax import embed as _embed

    try:
        return _embed.resolve_dtype(config.embed_dtype)
    except ValueError:
        return str(config.embed_dtype)


def stage_fingerprints(config: RefineConfig, *, data_sha256: str, n_candidates: int,
                       valid_sha256: str | None = None) -> dict[str, str]:
    """Fingerprint (hex sha256) of each stage's inputs; a stage's includes its upstream stage's.

    Returns ``{"embed": ..., "cluster": ..., "value": ..., "select": ...}``.
    """
    embed_inputs = {"stage": "embed", "data": data_sha256, "format": config.format,
                    "field_map": sorted(config.field_map), "duplicates": config.duplicates,
                    "text": config.text, "model": config.model}
    dtype = resolved_embed_dtype(config)
    if dtype != "float32":  # float32 adds nothing: the fingerprints of runs made before the option stay valid
        embed_inputs["embed_dtype"] = dtype
    embed_fp = _hash(embed_inputs)
    n_clusters = config.resolved_n_clusters(n_candidates)
    per_cluster = config.resolved_proxies_per_cluster(n_clusters, n_candidates)
    cluster_fp = _hash({"stage": "cluster", "up": embed_fp, "n_clusters": n_clusters,
                        "max_iter": config.kmeans_max_iter, "seed": config.seed})
    value_fp = _hash({"stage": "value", "up": cluster_fp, "valid": valid_sha256,
                      "valid_format": config.valid_format, "proxy": config.proxy,
                      "proxy_options": resolved_proxy_options(config), "model": config.model,
                      "proxies_per_cluster": per_cluster,
                      "n_permutations": config.n_permutations,
                      "removal_step": config.resolved_removal_step(n_clusters, per_cluster),
                      "shapley_batch_size": config.shapley_batch_size, "seed": config.seed,
                      # auto: the time budget may lower M at the start of the value stage (cost-estimating proxies)
                      **({"auto_time_budget": float(config.value_time_budget)}
                         if config.proxies_per_cluster == "auto" else {})})
    select_fp = _hash({"stage": "select", "up": value_fp, "sampler": config.sampler,
                       "beta": float(config.beta), "ratio": config.ratio, "size": config.size,
                       "seed": config.seed})
    return {"embed": embed_fp, "cluster": cluster_fp, "value": value_fp, "select": select_fp}


class RunInputs:
    """The data and validation sets of one configuration, read lazily, and what follows from them."""

    def __init__(self, config: RefineConfig):
        self.config = config
        self._memo: dict[str, Any] = {}

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def dataset(self) -> _data.InstructionSet:
        cfg = self.config
        return self._once("dataset", lambda: _data.read_instructions(
            cfg.data, format=cfg.format, field_map=dict(cfg.field_map) or None, duplicates=cfg.duplicates,
            split=cfg.split, revision=cfg.revision))

    @property
    def data_sha256(self) -> str:
        """sha256 of the data's records (content, not file bytes)."""
        return self._once("data_sha", lambda: _data.records_sha256(self.dataset.records))

    @property
    def from_stdin(self) -> bool:
        """True when the data was read from standard input (DATA ``-``)."""
        return self.config.data == "-"

    @property
    def candidate_mask(self) -> np.ndarray:
        """(N,) bool: records that may be clustered and selected."""
        dup = np.asarray(self.dataset.duplicate_of, dtype=np.int64)
        return dup < 0 if self.config.duplicates == "drop" else np.ones(len(self.dataset), dtype=bool)

    @property
    def n_candidates(self) -> int:
        return int(self.candidate_mask.sum())

    @property
    def validation(self):
        def read():
            if not self.config.valid:
                raise PipelineError("the value stage needs a validation file", field="--valid")
            if self.config.valid == "-":
                raise PipelineError("the validation set cannot be read from stdin; give a file or hf:OWNER/NAME",
                                    field="--valid")
            validation = _data.read_validation(self.config.valid, format=self.config.valid_format,
                                               split=self.config.valid_split)
            if len(validation) == 0:
                raise DataError("validation set is empty", path=self.config.valid)
            return validation

        return self._once("validation", read)

    @property
    def valid_sha256(self) -> str | None:
        if not self.config.valid:
            return None
        return self._once("valid_sha", lambda: _data.records_sha256(self.validation.records))

    @property
    def fingerprints(self) -> dict[str, str]:
        return self._once("fingerprints", lambda: stage_fingerprints(
            self.config, data_sha256=self.data_sha256, n_candidates=self.n_candidates,
            valid_sha256=self.valid_sha256))

    @property
    def n_clusters(self) -> int:
        return self.config.resolved_n_clusters(self.n_candidates)

    @property
    def proxies_per_cluster(self) -> int:
        """M, with ``auto`` resolved under the player budget (the value stage may lower it under the time
        budget for a proxy that estimates its cost; see :func:`shed_jax.run.value.run_stage`)."""
        return self.config.resolved_proxies_per_cluster(self.n_clusters, self.n_candidates)

    @property
    def removal_step(self) -> int:
        return self.config.resolved_removal_step(self.n_clusters, self.proxies_per_cluster)

    def proxy_config(self):
        """The proxy's typed configuration (``config.proxy_options`` applied); :class:`UserError` if invalid."""
        from shed_jax.proxies import registry

        return self._once("proxy_config", lambda: registry.make_config(self.config.proxy,
                                                                      dict(self.config.proxy_options)))

    def budget(self, n_candidates: int | None = None, *, path: str | None = None) -> int:
        """The number of records to select (``--ratio``/``--size`` against the candidates)."""
        cfg = self.config
        check_budget(cfg.ratio, cfg.size, required=True)
        n = self.n_candidates if n_candidates is None else int(n_candidates)
        if cfg.size is not None:
            try:
                _data.check_budget(n, cfg.size, path=path or cfg.data)
            except DataError as exc:  # name the option, as the other option checks do
                raise DataError(exc.message, path=exc.path, field="--size") from None
        return int(_select.budget(n, size=cfg.size, ratio=cfg.ratio))

    def resolved(self, run_dir) -> dict:
        return {"run_dir": str(run_dir), "data_source": self.dataset.source.kind if self.dataset.source else "json",
                "n_examples": len(self.dataset), "n_candidates": self.n_candidates,
                "n_clusters": self.n_clusters, "proxies_per_cluster": self.proxies_per_cluster,
                "removal_step": self.removal_step, "data_sha256": self.data_sha256,
                "valid_sha256": self.valid_sha256}

    # -- checks before any heavy work ---------------------------------------------------------------
    def preflight(self, *, need_valid: bool, need_budget: bool) -> None:
        """Read and check every input; raise a :class:`UserError` before any stage starts."""
        cfg = self.config
        if _data.is_local_path(cfg.data) and not _data.is_dataset_dir(cfg.data):
            check_input_file(cfg.data)  # not found, a directory, a FIFO (would block), a symbolic-link loop
        n = self.n_candidates  # reads + validates the data
        if n == 0:
            raise DataError("no candidate examples (every record is a duplicate?)", path=cfg.data)
        if cfg.n_clusters is not None:
            try:
                _data.check_clusters(n, cfg.n_clusters, path=cfg.data)
            except DataError as exc:
                raise DataError(exc.message, path=exc.path, field="--clusters") from None
        k = self.n_clusters
        check_removal_step(self.removal_step, k * self.proxies_per_cluster)
        if cfg.text not in ("all", "prompt", "response") and len(self.dataset):
            self.dataset.texts(cfg.text)  # raises a DataError naming a record without the key
        if need_valid:
            if not cfg.valid:
                raise PipelineError("the value stage needs a validation file", field="--valid")
            if _data.is_local_path(cfg.valid) and not _data.is_dataset_dir(cfg.valid):
                check_input_file(cfg.valid, what="validation file")
            from shed_jax.proxies import registry

            proxy_config = self.proxy_config()
            check = registry.get(cfg.proxy).check
            if check is not None:
                check(self.validation, proxy_config)
            else:
                self.validation  # noqa: B018  (reads and validates the file)
        if need_budget:
            self.budget()

    def check_output(self, output) -> str:
        """Check that every candidate record can be written in the output's format (before any work);
        return the format (:func:`shed_jax.data.selection_format`)."""
        return _data.check_selection_writable(output, self.dataset, np.flatnonzero(self.candidate_mask))
