"""Embed stage: every record's text as a sentence embedding, in the run's content-addressed cache.

The artifact is the (N, d) float32 matrix itself; it lives in the embedding cache shared by every run
directory (:func:`shed_jax.embed.embedding_cache_dir`: ``$SHED_CACHE``, else ``$XDG_CACHE_HOME/shed_jax``,
else ``~/.cache/shed_jax``; keyed by model and text hashes), so a second run on the same data, in any run
directory, embeds nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from shed_jax.run.stage import Computed, Run, Stage, Started

__all__ = ["Embeddings", "STAGE", "embedder"]


@dataclass(frozen=True, eq=False)
class Embeddings:
    """``embeddings`` (N, d) float32 with L2-normalised rows, one per record."""

    embeddings: np.ndarray

    def summary(self) -> dict:
        return {"n_examples": int(self.embeddings.shape[0]), "dim": int(self.embeddings.shape[1])}


def embedder(run: Run):
    """``embed(texts, progress=...) -> (n, d) float32`` with the run's model, batch size and cache."""
    from shed_jax import embed as _embed

    return partial(_embed.embed_texts, model=run.config.model, batch_size=run.config.batch_size,
                   cache_dir=_embed.embedding_cache_dir(), dtype=run.config.embed_dtype)


def _texts(run: Run) -> list[str]:
    return run.inputs.dataset.texts(run.config.text)


def _embed(run: Run, texts: list[str]) -> Embeddings:
    embeddings = np.asarray(embedder(run)(texts, progress=run.progress, label=f"embedding {len(texts):,} records"),
                            dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise RuntimeError(f"embed_texts returned shape {embeddings.shape} for {len(texts)} texts")
    return Embeddings(embeddings)


def _load(run: Run) -> tuple[Embeddings, str]:
    texts = _texts(run)
    return _embed(run, texts), f"{len(texts)} records"


def _prepare(run: Run) -> Started:
    texts = _texts(run)
    run.log(f"embed: {len(texts):,} records with {run.config.model}")
    return Started(texts)


def _compute(run: Run, texts: list[str]) -> Computed:
    from shed_jax import embed as _embed_module

    embedded = _embed(run, texts)  # written to the embedding cache, not to the run directory
    dtype = _embed_module.resolve_dtype(run.config.embed_dtype)
    return Computed(embedded, record={"n_examples": len(texts), "dim": int(embedded.embeddings.shape[1]),
                                      "dtype": dtype,
                                      "cache_key": _embed_module.embedding_cache_key(texts, run.config.model, dtype)})


STAGE = Stage("embed", load=_load, prepare=_prepare, compute=_compute,
              source="loading from the embedding cache", timed_load=True)
