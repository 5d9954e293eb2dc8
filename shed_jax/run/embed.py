"""Embed stage: every record's text as a sentence embedding, in the run's content-addressed cache.

The artifact is the (N, d) float32 matrix itself; it lives in the embedding cache shared by every run
directory (:func:`shed_jax.embed.embedding_cache_dir`: ``$SHED_CACHE``, else ``$XDG_CACHE_HOME/shed_jax``,
else ``~/.cache/shed_jax``; keyed by model and text hashes), so a second run on the same data, in any run
directory, embeds nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from shed_jax.progress import format_duration
from shed_jax.run.stage import Run, StageResult

__all__ = ["Embeddings", "embedder", "run_stage"]


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
                   cache_dir=_embed.embedding_cache_dir())


def run_stage(run: Run) -> StageResult:
    from shed_jax import embed as _embed

    fp = run.inputs.fingerprints["embed"]
    skipped = run.stages.is_done("embed", fp)
    start = time.perf_counter()
    texts = run.inputs.dataset.texts(run.config.text)
    if skipped:
        run.log(f"embed: up to date ({len(texts)} records); loading from the embedding cache")
    else:
        run.log(f"embed: {len(texts):,} records with {run.config.model}")
        run.stages.started("embed", fp)
    embeddings = np.asarray(embedder(run)(texts, progress=run.progress, label=f"embedding {len(texts):,} records"),
                            dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise RuntimeError(f"embed_texts returned shape {embeddings.shape} for {len(texts)} texts")
    seconds = time.perf_counter() - start
    if skipped:
        run.stages.skipped("embed", fp)
    else:
        run.log(f"embed: done in {format_duration(seconds)}")
        run.stages.finished("embed", fp, seconds, n_examples=len(texts), dim=int(embeddings.shape[1]),
                            cache_key=_embed.embedding_cache_key(texts, run.config.model))
    return StageResult("embed", Embeddings(embeddings), fp, skipped, seconds)
