"""Embedding-space proxy utility: a small contrastive scorer fine-tuned per coalition, in JAX + optax.

SHED (He et al., NeurIPS 2024, "SHED: Shapley-Based Automated Dataset Refinement for Instruction
Fine-Tuning") values a cluster by the Shapley value of its proxy example under a utility ``U(S)`` = quality
of a model fine-tuned on the proxies in coalition ``S``, measured on a validation set. Fine-tuning an LLM
per coalition is far too slow on a CPU, so this module uses a proxy *model* in sentence-embedding space:

* every example is represented by two frozen, L2-normalised embeddings (e.g. all-MiniLM-L6-v2, d=384):
  its prompt ``p`` and its response ``r``;
* the scorer is bilinear, ``s(p, r) = alpha * exp(log_scale) * p.r + (p U) . (r V)`` with a trainable
  log-weight ``log_scale`` of the cosine term (starts at 0) and trainable low-rank ``U, V`` of shape
  ``(d, rank)`` (``rank`` may be 0). ``U`` starts at zero and ``V`` at a small deterministic random matrix
  (the same for every coalition), so the untuned scorer is exactly ``alpha`` times the cosine similarity,
  and gradients are non-zero from the first step (LoRA-style initialisation);
* a coalition's scorer is trained full-batch for ``steps`` optax steps on a contrastive loss over the
  coalition's members, in which member ``i``'s prompt must score its own response above the other members'
  responses. Two objectives (``EmbeddingProxyConfig.objective``):

  - ``"infonce"``: ``loss = mean_i [logsumexp_j s(p_i, r_j)/T - s(p_i, r_i)/T]`` over members ``i, j``.
    A step touches the ``n x n`` score matrix (softmax), so it costs ``O(n^2 rank)`` plus ``n^2``
    exponentials: on a 2-core CPU that is several ms per step at ``n = 1000``.
  - ``"spectral"`` (default): the spectral contrastive loss of HaoChen et al. (NeurIPS 2021),
    ``loss = -2/n sum_i s_ii + 1/n^2 sum_{i,j} s_ij^2``. It depends on the members only through three
    ``d x d`` sums (``sum p p^T``, ``sum r r^T``, ``sum p r^T``: one GEMM pass over the members), after which
    a step costs ``O(d^2 rank)`` whatever ``n``: this is what meets SHED's CPU budget at ``K = 1000``;
* the trained scorer ranks candidate responses on the validation set: the right choice of a
  multiple-choice question, or a held-out prompt's own response among ``n_distractors`` other validation
  responses (drawn once, with a fixed seed). ``U(S)`` is the accuracy of ranking the right candidate first
  (``metric="accuracy"``), its mean log-probability or mean probability under ``softmax(s / T)``
  (``metric="logprob"`` / ``"prob"``), or its mean score margin over the best wrong candidate
  (``metric="margin"``). An optional L2 penalty (``weight_decay``) pulls ``U, V`` towards zero.
  ``U(empty set)`` is the untuned (cosine) scorer's value.

Default (since 2026-11-29): InfoNCE, plain SGD, ``rank = 0``, ``metric = "prob"``. The fine-tune then learns
one thing from a coalition: how far to trust prompt-response similarity. Members whose response matches their
own prompt better than the other members' responses raise the cosine weight (sharper, more confident
validation rankings); members whose response does not answer their prompt lower it (flatter rankings), and
SGD moves it in proportion to the evidence. ``U(S)`` is the mean probability of the right validation
candidate, which rises with a sharper scorer where the untuned ranking is mostly right. Measured on generated
data with 20% junk in whole topics (``shed_jax.synthetic``, K = 32, 20 permutations): QOCS at ratio 0.2 kept
0-12.5% junk over six seeds (0% on four), against 0-39% for the former default (spectral loss on rank-16
factors, adam, accuracy), which scored learning backwards (U(full) < U(empty)). Low-rank factors
(``rank > 0``) learn prompt-to-response mappings; on that data they made junk detection less reliable.

Batching. Many coalitions are valued per call (``masks (B, K) -> values (B,)``). Each coalition trains only
on its members: member indices are gathered (``argsort`` of ``~mask``: members first) and padded to a
*bucket* size (a geometric ladder up to ``K``), with padded rows/columns masked out of the loss, so the
cost follows the coalition size, not ``K``. Inside one jitted call the coalitions are sorted by size and
split into chunks of ``chunk_size``; ``lax.map`` runs the chunks one after the other and, per chunk,
``lax.switch`` picks the bucket that fits the chunk's largest coalition; the chunk's coalitions are trained
together under ``jax.vmap``. All shapes are static, so a new batch of masks never retraces. On a CPU one
coalition already keeps every core busy, so the default chunk is 1 (a loop without Python); on a GPU/TPU
the chunk is as wide as a memory budget allows, since width is what feeds the accelerator.

Cost model (``n`` = bucket size, ``d`` = dim, ``r`` = rank), see :func:`training_flops`: ``"infonce"``
``8 n d r + 6 n^2 r`` FLOPs per step (the frozen cosine part ``P R^T`` is precomputed once as a ``K x K``
Gram matrix and gathered); ``"spectral"`` ``6 n d^2`` once plus ``12 d^2 r`` per step.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    >>> prompts, responses = unit(rng.normal(size=(6, 8))), unit(rng.normal(size=(6, 8)))
    >>> val = ValidationEmbeddings.instruction(unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(5, 8))))
    >>> utility = EmbeddingProxyUtility.from_arrays(
    ...     prompts, responses, val, EmbeddingProxyConfig(rank=2, steps=3, n_distractors=2))
    >>> utility(np.array([[True] * 6, [False] * 6])).shape
    (2,)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shed_jax.errors import UserError
from shed_jax.proxies._bilinear import (
    BilinearParams,
    SpectralStats,
    cosine_weight,
    infonce_grad,
    infonce_loss,
    init_params,
    spectral_grad,
    spectral_loss,
    spectral_stats,
    _MASKED_LOGIT,
    _PARAM_GROUPS,
    _ProxyArrays,
    _coalition_value,
    _coalition_value_jit,
    _optimizer,
    _train,
    _train_jit,
    _validation_scores,
    _validation_value,
)
from shed_jax.proxies._validation import ValidationEmbeddings, _as_float_matrix, _paired_matrices, embed_validation
from shed_jax.proxies.embedding_config import METRICS, EmbeddingProxyConfig  # noqa: F401  (declared there: no JAX)
from shed_jax.proxies.base import ProxyInputs, as_mask_batch, bucket_sizes, chunk_size_for, evaluate_coalitions, trace_count

__all__ = [
    "BilinearParams",
    "EmbeddingProxyConfig",
    "EmbeddingProxyUtility",
    "ValidationEmbeddings",
    "bucket_sizes",
    "cosine_weight",
    "embed_validation",
    "SpectralStats",
    "infonce_grad",
    "infonce_loss",
    "init_params",
    "spectral_grad",
    "spectral_loss",
    "spectral_stats",
    "training_flops",
]


# Importable from here as before the split into _bilinear / _validation (not in ``__all__``).
_REEXPORTED = (_MASKED_LOGIT, _PARAM_GROUPS, _as_float_matrix, _optimizer, _train, _validation_scores,
               _validation_value)


def training_flops(n_members: int, dim: int, rank: int, steps: int, objective: str = "spectral") -> float:
    """Analytic matmul FLOPs to train one coalition padded to ``n_members`` rows for ``steps`` steps.

    ``"infonce"``, per step: projections ``P U``, ``R V`` (``2 * 2 n d r``), low-rank scores ``A B^T``
    (``2 n^2 r``); backward ``dA = dS B``, ``dB = dS^T A`` (``2 * 2 n^2 r``), ``dU = P^T dA``,
    ``dV = R^T dB`` (``2 * 2 n d r``): ``8 n d r + 6 n^2 r``. Elementwise work (the ``n^2`` softmax, Adam)
    is not counted.
    ``"spectral"``: statistics once (three ``n x d x d`` GEMMs, ``6 n d^2``), then per step three
    ``d x d x r`` products forward and three backward (``12 d^2 r``; ``r x r`` terms not counted).
    """
    n = float(n_members)
    if objective == "infonce":
        return steps * (8.0 * n * dim * rank + 6.0 * n * n * rank)
    if objective == "spectral":
        return 6.0 * n * dim * dim + steps * 12.0 * dim * dim * rank
    raise ValueError(f"unknown objective {objective!r}")


def validation_flops(n_queries: int, n_pool: int, n_candidates: int, dim: int, rank: int) -> float:
    """Analytic FLOPs to score the validation set once: ``Q U``, ``pool V`` and the candidate dots."""
    return 2.0 * dim * rank * (n_queries + n_pool) + 2.0 * n_queries * n_candidates * rank


def _per_coalition_bytes(n_bucket: int, dim: int, rank: int) -> int:
    """Rough peak memory of training one coalition: ~8 ``n x n`` float32 buffers + gathered rows."""
    return 4 * (8 * n_bucket * n_bucket + 4 * n_bucket * (dim + rank))


# --------------------------------------------------------------------------------------------------------
# The utility
# --------------------------------------------------------------------------------------------------------
class EmbeddingProxyUtility:
    """SHED utility over ``K`` proxies: coalition -> validation score of a scorer fine-tuned on its members.

    Implements :class:`shed_jax.proxies.base.BatchedUtility`: ``utility(masks)`` maps ``(B, K)`` bool to
    ``(B,)`` float32, is jitted (one compilation per batch shape) and can be called inside ``jax.jit``.
    Deterministic: the same ``seed`` gives the same initial factors and distractors, and training is
    full-batch. Build with :meth:`from_arrays`.

    Attributes:
        n_players: ``K``.
        preferred_batch_size: batch size for the Shapley engine.
        config: the :class:`EmbeddingProxyConfig`.
        seed: seed of the initial ``V`` and of the distractor draw.
        buckets: padded coalition sizes (see :func:`bucket_sizes`).
        chunk_size: coalitions trained together per ``lax.map`` step.
        n_traces: how many times the batched function was traced for this static setting (retrace tests).
    """

    def __init__(self, data: _ProxyArrays, config: EmbeddingProxyConfig, seed: int, *, backend: str | None = None):
        self._data = data
        self.config = config
        self.seed = int(seed)
        self.n_players = int(data.prompt.shape[0])
        self.dim = int(data.prompt.shape[1])
        self.n_validation = int(data.query.shape[0])
        self.buckets = bucket_sizes(self.n_players, ratio=config.bucket_ratio, min_bucket=config.min_bucket)
        self.backend = jax.default_backend() if backend is None else backend
        if config.chunk_size is not None:
            self.chunk_size = config.chunk_size
        else:
            self.chunk_size = chunk_size_for(self.backend, _per_coalition_bytes(self.buckets[-1], self.dim, config.rank),
                                             config.accelerator_memory_bytes)
        self.preferred_batch_size = 64 if self.chunk_size == 1 else 4 * self.chunk_size

    @property
    def n_traces(self) -> int:
        """Times the batched function was traced for this utility's static setting (config, buckets, chunk).

        Utilities with the same setting share compiled code, and this count. A new batch shape traces once;
        new masks of a seen shape never do.
        """
        return trace_count(_coalition_value, self.config, self.buckets, self.chunk_size)

    @classmethod
    def from_arrays(cls, proxy_prompt_emb, proxy_response_emb, validation: ValidationEmbeddings,
                    config: EmbeddingProxyConfig = EmbeddingProxyConfig(), seed: int = 0
                    ) -> "EmbeddingProxyUtility":
        """Builds the utility from embeddings.

        Args:
            proxy_prompt_emb: ``(K, d)`` float, the proxies' prompt embeddings (L2-normalised expected: the
                untuned scorer is then the cosine similarity).
            proxy_response_emb: ``(K, d)`` float, their response embeddings.
            validation: :class:`ValidationEmbeddings` with the same ``d``.
            config: :class:`EmbeddingProxyConfig`.
            seed: seeds the initial ``V`` (shared by every coalition) and, for instruction-format
                validation, the ``config.n_distractors`` distractors of each item (other items' responses,
                drawn without replacement, once).

        Raises:
            ValueError / TypeError: bad shapes, dtypes, non-finite values, or more distractors than
                other validation items.
        """
        if not isinstance(config, EmbeddingProxyConfig):
            raise TypeError(f"config must be an EmbeddingProxyConfig, got {type(config).__name__}")
        if not isinstance(validation, ValidationEmbeddings):
            raise TypeError(f"validation must be ValidationEmbeddings, got {type(validation).__name__}")
        prompts, responses = _paired_matrices("proxy_prompt_emb", proxy_prompt_emb,
                                              "proxy_response_emb", proxy_response_emb)
        if prompts.shape[0] < 1:
            raise ValueError("need at least one proxy")
        if validation.dim != prompts.shape[1]:
            raise ValueError(f"validation dim {validation.dim} != proxy embedding dim {prompts.shape[1]}")
        n_items = validation.n_items
        if validation.kind == "multiple_choice":
            n_choices = validation.choice_emb.shape[1]
            pool = validation.choice_emb.reshape(n_items * n_choices, validation.dim)
            cand_index = np.arange(n_items * n_choices, dtype=np.int32).reshape(n_items, n_choices)
            cand_mask = validation.choice_mask
            answers = validation.answers.astype(np.int32)
        else:
            if config.n_distractors > n_items - 1:
                raise ValueError(f"n_distractors={config.n_distractors} needs > {config.n_distractors} "
                                 f"validation items, got {n_items}")
            pool = validation.response_emb
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
            # item i's own response first, then n_distractors other items, without replacement
            keys = rng.random((n_items, n_items))
            np.fill_diagonal(keys, np.inf)
            distractors = np.argsort(keys, axis=1, kind="stable")[:, : config.n_distractors]
            cand_index = np.concatenate([np.arange(n_items)[:, None], distractors], axis=1).astype(np.int32)
            cand_mask = np.ones(cand_index.shape, bool)
            answers = np.zeros(n_items, np.int32)
        cand_cosine = np.einsum("vd,vcd->vc", validation.query_emb.astype(np.float64),
                                pool[cand_index].astype(np.float64)).astype(np.float32)
        if validation.kind == "multiple_choice":
            cand_index = None  # pool rows are already the candidates, item by item: no gather needed
        n_players = prompts.shape[0]
        gram = (prompts.astype(np.float64) @ responses.astype(np.float64).T).astype(np.float32) \
            if n_players <= config.gram_max_players and config.objective == "infonce" else None
        params0 = init_params(jax.random.key(seed), prompts.shape[1], config.rank, config.init_scale)
        data = _ProxyArrays(
            prompt=jnp.asarray(prompts), response=jnp.asarray(responses),
            gram=None if gram is None else jnp.asarray(gram),
            query=jnp.asarray(validation.query_emb), pool=jnp.asarray(pool),
            cand_index=None if cand_index is None else jnp.asarray(cand_index), cand_mask=jnp.asarray(cand_mask),
            answers=jnp.asarray(answers), cand_cosine=jnp.asarray(cand_cosine), params0=params0)
        return cls(data, config, seed)

    # -- evaluation ---------------------------------------------------------------------------------------
    def __call__(self, masks) -> jax.Array:
        """``(B, K)`` bool masks -> ``(B,)`` float32 utility values (jitted; traceable)."""
        return evaluate_coalitions(_coalition_value, self._data, as_mask_batch(masks, self.n_players),
                                   config=self.config, buckets=self.buckets, chunk_size=self.chunk_size)

    def evaluate_one(self, mask) -> float:
        """Value of one coalition ``(K,)`` bool, through a per-bucket jitted function (host picks the bucket).

        This is the Python-loop path: the reference for tests and the baseline for benchmarks.
        """
        mask = np.asarray(mask)
        if mask.shape != (self.n_players,):
            raise ValueError(f"mask must have shape ({self.n_players},), got {mask.shape}")
        mask = mask.astype(bool)
        n_members = int(mask.sum())
        n_bucket = next(size for size in self.buckets if size >= n_members)
        return float(_coalition_value_jit(self._data, jnp.asarray(mask), n_bucket=n_bucket, config=self.config))

    def trained_params(self, mask, n_bucket: int | None = None) -> BilinearParams:
        """The factors fine-tuned on the members of ``mask`` ``(K,)``, padded to ``n_bucket`` (default: fit)."""
        mask = np.asarray(mask).astype(bool)
        n_members = int(mask.sum())
        if n_bucket is None:
            n_bucket = next(size for size in self.buckets if size >= n_members)
        if n_bucket < n_members or n_bucket > self.n_players:
            raise ValueError(f"n_bucket={n_bucket} must be in [{n_members}, {self.n_players}]")
        if n_bucket == 0:
            return self._data.params0
        data = self._data
        member_index = np.argsort(~mask, kind="stable")[:n_bucket]
        gram = (None if data.gram is None or self.config.objective != "infonce"
                else data.gram[member_index[:, None], member_index[None, :]])
        return _train_jit(
            data.params0, data.prompt[member_index], data.response[member_index], jnp.asarray(mask[member_index]),
            gram, config=self.config)

    @property
    def initial_params(self) -> BilinearParams:
        """The untuned factors (``U = 0``) shared by every coalition."""
        return self._data.params0

    def flops_per_evaluation(self, n_members: int) -> float:
        """Analytic matmul FLOPs of one evaluation of a coalition with ``n_members`` members (with padding)."""
        n_bucket = next(size for size in self.buckets if size >= n_members)
        data = self._data
        val = validation_flops(data.query.shape[0], data.pool.shape[0], data.cand_mask.shape[1], self.dim,
                               self.config.rank)
        if n_bucket == 0:
            return val
        return training_flops(n_bucket, self.dim, self.config.rank, self.config.steps, self.config.objective) + val

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for run directories)."""
        return {"type": "embedding", "n_players": self.n_players, "dim": self.dim,
                "n_validation": self.n_validation, "seed": self.seed, "buckets": list(self.buckets),
                "chunk_size": self.chunk_size, "backend": self.backend, **self.config.to_dict()}

    def __repr__(self) -> str:
        return (f"EmbeddingProxyUtility(n_players={self.n_players}, dim={self.dim}, n_validation={self.n_validation}, "
                f"chunk_size={self.chunk_size}, config={self.config})")


# --------------------------------------------------------------------------------------------------------
# Registration (shed_jax.proxies.registry)
# --------------------------------------------------------------------------------------------------------
def check_validation(validation_set, config: EmbeddingProxyConfig) -> None:
    """Raises :class:`UserError` when the validation set cannot be scored with ``config`` (checked before any
    stage runs)."""
    if not hasattr(validation_set, "choices") and len(validation_set) <= config.n_distractors:
        raise UserError(f"an instruction-format validation set needs more than n_distractors="
                        f"{config.n_distractors} records, got {len(validation_set)}",
                        path=getattr(validation_set, "path", None))


def _embed_labelled(embed, texts, progress: bool, label: str):
    """``embed(texts)`` with a progress bar saying what it embeds (when ``embed`` takes a label)."""
    from shed_jax.proxies._validation import _accepts_label

    return embed(texts, progress=progress, **({"label": label} if _accepts_label(embed) else {}))


def build_embedding_proxy(inputs: ProxyInputs, config: EmbeddingProxyConfig) -> EmbeddingProxyUtility:
    """The registry factory: embeds the players' prompts and responses and the validation set with the run's
    cached encoder (``inputs.embed``) and builds an :class:`EmbeddingProxyUtility` seeded with ``inputs.seed``."""
    progress = bool(getattr(inputs, "progress", False))
    n = len(inputs.prompts)
    prompt_emb = np.asarray(_embed_labelled(inputs.embed, list(inputs.prompts), progress,
                                            f"embedding the {n:,} players' prompts"), np.float32)
    response_emb = np.asarray(_embed_labelled(inputs.embed, list(inputs.responses), progress,
                                              f"embedding the {n:,} players' responses"), np.float32)
    validation = embed_validation(inputs.validation, embed=inputs.embed, progress=inputs.progress)
    return EmbeddingProxyUtility.from_arrays(prompt_emb, response_emb, validation, config=config, seed=inputs.seed)


PROXY_NAME = "embedding"
CONFIG_CLASS = EmbeddingProxyConfig
FACTORY = build_embedding_proxy
CHECK = check_validation
SUMMARY = "a contrastive scorer fitted in sentence-embedding space (CPU-friendly)"
