"""Embedded validation sets for :mod:`shed_jax.proxies.embedding`: :class:`ValidationEmbeddings` (multiple
choice or instruction format) and :func:`embed_validation`, which embeds a set read by
:func:`shed_jax.data.read_validation`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np


def _as_float_matrix(name: str, value, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be floating point, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values")
    return array


def _paired_matrices(prompt_name: str, prompt_emb, response_name: str, response_emb
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 ``(n, d)`` matrices of the same shape (checked as by ``_as_float_matrix``)."""
    prompts = _as_float_matrix(prompt_name, prompt_emb, 2)
    responses = _as_float_matrix(response_name, response_emb, 2)
    if prompts.shape != responses.shape:
        raise ValueError(f"{prompt_name} {prompts.shape} and {response_name} {responses.shape} differ in shape")
    return prompts, responses


@dataclass(frozen=True, eq=False)
class ValidationEmbeddings:
    """Embedded validation set; build it with :meth:`multiple_choice` or :meth:`instruction`.

    Attributes:
        kind: ``"multiple_choice"`` or ``"instruction"``.
        query_emb: ``(V, d)`` float32: question (multiple choice) or held-out prompt (instruction).
        choice_emb: ``(V, C, d)`` float32, choices padded to the largest count ``C`` (multiple choice), else None.
        choice_mask: ``(V, C)`` bool, True for real choices (multiple choice), else None.
        answers: ``(V,)`` int64 index of the right choice (multiple choice), else None.
        response_emb: ``(V, d)`` float32 held-out responses (instruction), else None.
    """

    kind: str
    query_emb: np.ndarray
    choice_emb: np.ndarray | None = None
    choice_mask: np.ndarray | None = None
    answers: np.ndarray | None = None
    response_emb: np.ndarray | None = None

    @classmethod
    def multiple_choice(cls, question_emb, choice_emb, answers, choice_mask=None) -> "ValidationEmbeddings":
        """Multiple-choice validation.

        Args:
            question_emb: ``(V, d)`` question embeddings.
            choice_emb: ``(V, C, d)`` choice embeddings (padding rows are ignored where ``choice_mask`` is False).
            answers: ``(V,)`` integer index of the right choice, a real (unmasked) choice.
            choice_mask: ``(V, C)`` bool, default all True. Every question needs >= 2 real choices.
        """
        question = _as_float_matrix("question_emb", question_emb, 2)
        choices = _as_float_matrix("choice_emb", choice_emb, 3)
        n_items, dim = question.shape
        if choices.shape[0] != n_items or choices.shape[2] != dim:
            raise ValueError(f"choice_emb must have shape ({n_items}, C, {dim}), got {choices.shape}")
        mask = np.ones(choices.shape[:2], bool) if choice_mask is None else np.asarray(choice_mask)
        if mask.shape != choices.shape[:2] or mask.dtype != np.bool_:
            raise ValueError(f"choice_mask must be bool of shape {choices.shape[:2]}, got {mask.dtype} {mask.shape}")
        answer_index = np.asarray(answers)
        if answer_index.shape != (n_items,) or not np.issubdtype(answer_index.dtype, np.integer):
            raise ValueError(f"answers must be an integer array of shape ({n_items},), got "
                             f"{answer_index.dtype} {answer_index.shape}")
        if n_items == 0:
            raise ValueError("validation set is empty")
        if np.any(mask.sum(axis=1) < 2):
            raise ValueError(f"every question needs >= 2 choices; item {int(np.argmin(mask.sum(axis=1)))} has fewer")
        bad = (answer_index < 0) | (answer_index >= choices.shape[1])
        bad[~bad] = ~mask[np.flatnonzero(~bad), answer_index[~bad]]
        if np.any(bad):
            raise ValueError(f"answers[{int(np.flatnonzero(bad)[0])}] does not index a real choice")
        return cls("multiple_choice", question, choice_emb=choices, choice_mask=mask,
                   answers=answer_index.astype(np.int64))

    @classmethod
    def instruction(cls, prompt_emb, response_emb) -> "ValidationEmbeddings":
        """Instruction-format validation: ``(V, d)`` held-out prompts and their own responses."""
        prompts, responses = _paired_matrices("prompt_emb", prompt_emb, "response_emb", response_emb)
        if prompts.shape[0] < 2:
            raise ValueError("instruction validation needs >= 2 items (distractors are other items' responses)")
        return cls("instruction", prompts, response_emb=responses)

    @property
    def n_items(self) -> int:
        """Number of validation items ``V``."""
        return int(self.query_emb.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension ``d``."""
        return int(self.query_emb.shape[1])


def _accepts_label(function) -> bool:
    """Whether ``function`` takes a ``label=`` keyword (our embedders do; a user's callable may not)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "label" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def embed_validation(validation_set, *, model: str | None = None, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True, batch_size: int = 64, embed=None) -> ValidationEmbeddings:
    """Embeds a validation set read by ``shed_jax.data.read_validation``.

    A ``MultipleChoiceSet`` (attributes ``questions``, ``choices``, ``answers``) gives question
    embeddings ``(V, d)`` and choice embeddings padded to ``(V, C_max, d)`` with a mask; an
    ``InstructionSet`` (attributes ``prompts``, ``responses``) gives prompt and response embeddings
    ``(V, d)``. Distractors for the instruction format are drawn later, by
    :meth:`EmbeddingProxyUtility.from_arrays` (seeded). Uses ``embed(texts, progress=...)`` when given (e.g.
    :attr:`ProxyInputs.embed`), else ``shed_jax.embed.embed_texts`` (imported here, lazily) with ``model``,
    ``batch_size`` and its on-disk cache in ``cache_dir``.
    """
    if embed is None:
        from shed_jax import embed as embed_module  # lazy: loads torch/sentence-transformers only when used

        model_name = embed_module.DEFAULT_MODEL if model is None else model
        embed = partial(embed_module.embed_texts, model=model_name, cache_dir=cache_dir, batch_size=batch_size)
    labelled = _accepts_label(embed)

    def kwargs(what: str, n: int) -> dict:
        return dict(progress=progress, **({"label": f"embedding {n:,} validation {what}"} if labelled else {}))

    if hasattr(validation_set, "questions") and hasattr(validation_set, "choices"):
        questions = list(validation_set.questions)
        choices = [list(c) for c in validation_set.choices]
        if len(questions) == 0:
            raise ValueError("validation set is empty")
        question_emb = embed(questions, **kwargs("questions", len(questions)))
        flat = [text for item in choices for text in item]
        flat_emb = embed(flat, **kwargs("answer choices", len(flat)))
        n_choices_max = max(len(item) for item in choices)
        choice_emb = np.zeros((len(questions), n_choices_max, flat_emb.shape[1]), np.float32)
        choice_mask = np.zeros((len(questions), n_choices_max), bool)
        start = 0
        for item_index, item in enumerate(choices):  # host-side packing, once per run
            choice_emb[item_index, : len(item)] = flat_emb[start : start + len(item)]
            choice_mask[item_index, : len(item)] = True
            start += len(item)
        return ValidationEmbeddings.multiple_choice(question_emb, choice_emb, np.asarray(validation_set.answers),
                                                    choice_mask)
    if hasattr(validation_set, "prompts") and hasattr(validation_set, "responses"):
        prompts, responses = list(validation_set.prompts), list(validation_set.responses)
        if len(prompts) == 0:
            raise ValueError("validation set is empty")
        return ValidationEmbeddings.instruction(embed(prompts, **kwargs("prompts", len(prompts))),
                                                embed(responses, **kwargs("responses", len(responses))))
    raise TypeError(f"expected a MultipleChoiceSet or an InstructionSet, got {type(validation_set).__name__}")
