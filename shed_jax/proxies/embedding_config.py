"""The embedding proxy's options (:class:`EmbeddingProxyConfig`), apart from the proxy so that reading or checking
them imports no JAX (``shed proxies``, ``--proxy-option``; the registry records this module).

See :mod:`shed_jax.proxies.embedding` for the model, the objectives and the metrics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from shed_jax.options import option, proxy_option_label, validate_fields

__all__ = ["EmbeddingProxyConfig", "METRICS", "OBJECTIVES", "OPTIMIZERS"]

METRICS = ("accuracy", "logprob", "prob", "margin")
OBJECTIVES = ("infonce", "spectral")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class EmbeddingProxyConfig:
    """Settings of the embedding-space proxy utility (hashable; used as a static jit argument).

    Defaults are sized for SHED's CPU budget (K = 1,000 proxies, ~5,000 coalition fine-tunes in about
    10 minutes on 2 cores, i.e. ~50-100 ms per utility evaluation including ~1,500 4-choice MMLU items).
    Each field is declared with :func:`shed_jax.options.option` (its help is what ``shed proxies embedding``
    shows) and checked by :func:`shed_jax.options.validate_fields`; a bad value raises
    :class:`shed_jax.errors.PipelineError` (a ``ValueError``) naming ``--proxy-option NAME``.
    """

    objective: str = option(
        "infonce", "Training loss: infonce (cost per step grows as n^2) or spectral (cost per step independent of "
                   "the coalition size; it does not calibrate the score scale, so pair it with metric=accuracy).",
        choices=OBJECTIVES)
    rank: int = option(0, "Rank of the trainable factors U, V (d x rank); 0 means no low-rank term: only the weight "
                          "of the cosine term is fine-tuned.", minimum=0)
    steps: int = option(40, "Optimiser steps per coalition (full batch).", minimum=0)
    learning_rate: float = option(0.5, "Learning rate of the factors U, V (for sgd; with adam use ~0.01: adam moves "
                                       "each weight by about lr per step).", minimum=0.0, exclusive_minimum=True)
    optimizer: str = option("sgd", "sgd (a step is proportional to the gradient, so members the scorer already fits "
                                   "move it little) or adam.", choices=OPTIMIZERS)
    scale_learning_rate: float = option(0.01, "Learning rate of log_scale, the log of the learned weight of the "
                                              "cosine term (0 freezes it at alpha).", minimum=0.0)
    max_grad_norm: float | None = option(1.0, "Clip the gradient of U, V to this global norm per step (none: no "
                                              "clipping); keeps plain SGD stable on small coalitions.",
                                         minimum=0.0, exclusive_minimum=True)
    temperature: float = option(0.05, "Softmax temperature T of the InfoNCE loss and of metric=logprob/prob (the "
                                      "spectral loss has none).", minimum=0.0, exclusive_minimum=True)
    alpha: float = option(1.0, "Weight of the frozen cosine term p.r.", minimum=0.0)
    init_scale: float = option(0.02, "Standard deviation of the initial V entries (U starts at 0).", minimum=0.0,
                               exclusive_minimum=True)
    n_distractors: int = option(9, "Distractor responses per held-out prompt (instruction-format validation).",
                                minimum=1)
    metric: str = option(
        "prob", "accuracy (right candidate ranked first; ties go to the lowest index), logprob (mean log-probability "
                "of the right candidate under softmax(s / T)), prob (its mean probability: bounded like accuracy but "
                "smooth, and it sees the learned cosine weight) or margin (right candidate's score minus the best "
                "wrong one's).", choices=METRICS)
    weight_decay: float = option(0.0, "L2 penalty weight_decay / 2 * (|U|^2 + |V|^2) added to the training loss "
                                      "(the same under adam and sgd); keeps the learned term small next to the cosine "
                                      "prior.", minimum=0.0)
    bucket_ratio: float = option(2.0, "Growth factor of the ladder of padded coalition sizes (> 1). Smaller means "
                                      "less padding but more compiled branches.", minimum=1.0, exclusive_minimum=True)
    min_bucket: int = option(16, "Smallest non-empty bucket.", minimum=1)
    chunk_size: int | None = option(None, "Coalitions trained together under vmap (none: 1 on CPU, else as many as "
                                          "accelerator_memory_bytes allows for the largest bucket, at most 256).",
                                    minimum=1)
    accelerator_memory_bytes: int = option(2 << 30, "Memory budget for one chunk off-CPU.", minimum=1)
    gram_max_players: int = option(4096, "Precompute the frozen K x K cosine Gram matrix when K is at most this "
                                         "(4 K^2 bytes); above it the cosine term is recomputed per coalition.",
                                   minimum=0)

    def __post_init__(self):
        validate_fields(self, label=proxy_option_label)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)
