"""The LM proxy's validation set, tokenised for its metric, and the turn of per-row scores into that metric."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shed_jax.lm import prompts as prompt_lib
from shed_jax.lm.scoring import full_choice_metric, letter_metric, loss_metric
from shed_jax.proxies.lm_config import LMProxyConfig, resolve_metric

__all__ = ["tokenize_validation"]

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
