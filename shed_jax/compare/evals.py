"""Held-out test sets of a comparison and their per-item scores.

A test set is read by :func:`shed_jax.data.read_validation` (any format it reads) and gives one or two metrics:

* multiple choice: ``mc_letter_accuracy`` (the question with its lettered choices; right when the right
  letter's logit is the largest among the choices' letters, ties to the lowest letter) and
  ``mc_choice_accuracy`` (each choice text's summed log-likelihood as the answer; right when the right
  choice's is the largest), both higher-is-better; ``shots`` solved examples from a separate file can be put
  before each question (k-shot);
* instruction data: ``loss``, the token-weighted mean next-token loss on the held-out responses (lower is
  better).

Tokenisation reuses the LM proxy's (:func:`shed_jax.proxies.lm.tokenize_validation`), so prompts are built as
they are when valuing data. Per item and slot the scores become ``(num, den)`` for :mod:`shed_jax.compare.stats`:
accuracy ``(right, 1)``, loss ``(summed response loss, response tokens)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shed_jax.errors import DataError, UserError

__all__ = ["METRIC_NAMES", "EvalSet", "PreparedMetric", "read_eval", "prepare_metrics", "shots_prefix"]

METRIC_NAMES = ("loss", "mc_letter_accuracy", "mc_choice_accuracy")


@dataclass(frozen=True, eq=False)
class EvalSet:
    """A test set: ``name``, ``kind`` (``"multiple_choice"`` / ``"instruction"``) and its items."""

    name: str
    path: str
    kind: str
    prompts: list[str]                    # the question / the instruction prompt (what overlap compares)
    responses: list[str] | None = None    # instruction
    choices: list[list[str]] | None = None
    answers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, keep: np.ndarray) -> "EvalSet":
        keep = np.asarray(keep, np.int64)
        pick = lambda values: None if values is None else [values[i] for i in keep]  # noqa: E731
        return EvalSet(self.name, self.path, self.kind, pick(self.prompts), pick(self.responses), pick(self.choices),
                       None if self.answers is None else np.asarray(self.answers)[keep])


def _name_of(path: str) -> str:
    base = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet", ".csv", ".tsv"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base or path


def read_eval(spec: str, *, format: str = "auto", split: str | None = None) -> EvalSet:
    """A test set from ``[NAME=]PATH``; raises :class:`DataError` when unreadable or empty."""
    from shed_jax.compare.sets import parse_train_spec
    from shed_jax.data import read_validation

    name, path = parse_train_spec(spec)
    data = read_validation(path, format=format, split=split)
    if len(data) == 0:
        raise DataError("the test set is empty", path=path)
    name = name or _name_of(os.fspath(path))
    if hasattr(data, "choices"):
        return EvalSet(name, os.fspath(path), "multiple_choice", list(data.questions),
                       choices=[list(c) for c in data.choices], answers=np.asarray(data.answers, np.int64))
    return EvalSet(name, os.fspath(path), "instruction", list(data.prompts), responses=list(data.responses))


def shots_prefix(shots: EvalSet, k: int, seed: int) -> str:
    """``k`` solved questions drawn (seeded) from a multiple-choice set, one block each:
    ``question / A. ... / Answer: X``, separated by blank lines."""
    from shed_jax.lm.prompts import LETTERS

    if shots.kind != "multiple_choice":
        raise UserError("the k-shot examples must be a multiple-choice set", path=shots.path, field="--shots-from")
    if k > len(shots):
        raise UserError(f"--shots {k} but the file has {len(shots)} questions", path=shots.path, field="--shots")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5407]))
    blocks = []
    for i in np.sort(rng.choice(len(shots), size=k, replace=False)):
        lines = [shots.prompts[i]] + [f"{LETTERS[j]}. {c}" for j, c in enumerate(shots.choices[i])]
        blocks.append("\n".join(lines) + f"\nAnswer: {LETTERS[int(shots.answers[i])]}")
    return "\n\n".join(blocks) + "\n\n"


@dataclass(frozen=True, eq=False)
class PreparedMetric:
    """One metric of one test set, tokenised: ``validation`` is the LM proxy's tokenised set."""

    metric: str
    higher_is_better: bool
    validation: object
    n_items: int

    def num_den(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """``(num, den)``, each ``(S, n_items)`` float64, from a scorer's ``(S, N[, K])`` output."""
        v = self.validation
        rows = np.asarray(rows, np.float64)
        if self.metric == "loss":
            tokens = np.asarray(v.table.n_target_tokens, np.float64)
            return -rows, np.broadcast_to(tokens, rows.shape).copy()
        answers = np.asarray(v.answers)
        if self.metric == "mc_letter_accuracy":
            logits = np.where(np.asarray(v.choice_mask)[None], rows, -np.inf)
        else:
            logits = np.full((rows.shape[0], v.n_items, v.n_choices_max), -np.inf)
            logits[:, v.question_index, v.choice_position] = rows
        right = (np.argmax(logits, axis=-1) == answers[None]).astype(np.float64)
        return right, np.ones_like(right)


class _Items:
    """The attributes :func:`shed_jax.proxies.lm.tokenize_validation` reads."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __len__(self):
        return len(self.prompts if hasattr(self, "prompts") else self.questions)


def prepare_metrics(eval_set: EvalSet, tokenizer, *, prompt_format: str, max_length: int, prefix: str = ""
                    ) -> list[PreparedMetric]:
    """Tokenise ``eval_set`` for its metrics (two for multiple choice, one for instruction data)."""
    from shed_jax.proxies.lm import LMProxyConfig, tokenize_validation

    def tokenized(metric, items):
        config = LMProxyConfig(metric=metric, prompt_format=prompt_format, max_length=max_length)
        return tokenize_validation(items, tokenizer, config, seed=0)

    if eval_set.kind == "instruction":
        items = _Items(prompts=eval_set.prompts, responses=eval_set.responses)
        return [PreparedMetric("loss", False, tokenized("loss", items), len(eval_set))]
    items = _Items(questions=[prefix + q for q in eval_set.prompts], choices=eval_set.choices,
                   answers=eval_set.answers)
    try:
        letters = PreparedMetric("mc_letter_accuracy", True, tokenized("mc_accuracy", items), len(eval_set))
    except ValueError as exc:  # letters sharing a first token: only the full-choice metric is possible
        raise UserError(f"{exc}", path=eval_set.path, field="--eval") from None
    return [letters, PreparedMetric("mc_choice_accuracy", True, tokenized("mc_full_choice", items), len(eval_set))]


def subset_for(n: int, limit: int | None, seed: int) -> np.ndarray:
    """A seeded subset of ``limit`` of ``n`` items, sorted (all of them when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE7A1]))
    return np.sort(rng.choice(n, size=int(limit), replace=False))


def check_names(evals: Sequence[EvalSet]) -> None:
    names = [e.name for e in evals]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"two test sets are named {name!r}; name them with NAME=PATH", field="--eval")
