"""Prompt formats and tokenisation for LM fine-tuning and scoring: texts -> padded token tables.

Three prompt formats (:data:`PROMPT_FORMATS`) turn a user-side text (an instruction, with its input) into
the text that precedes the response:

* ``"chat"``: the tokenizer's own chat template (``apply_chat_template`` with one user turn and the
  generation prompt). The response is followed by whatever the template puts after an assistant turn
  (e.g. ``<|im_end|>``), found by rendering the whole conversation and taking what follows the prompt.
* ``"alpaca"``: the Stanford Alpaca template (Taori et al., 2023), "Below is an instruction ...
  ### Instruction: ... ### Response:"; the response is followed by the EOS token.
* ``"vicuna"``: the Vicuna v1.1 template (Chiang et al., 2023), "A chat between a curious user ...
  USER: ... ASSISTANT:"; the response starts with a space and is followed by the EOS token.

A prompt and its continuation are tokenised *separately* (no special tokens added to the continuation) and
concatenated, so the boundary between the prompt and the response is exact and the same in training and
scoring. Sequences longer than ``max_length`` lose the start of the prompt first (the response keeps at
least ``max_length // 2`` tokens, or all of them when shorter), then the end of the response.

The result is a :class:`TokenTable`: right-padded ``int32`` ids, lengths, and per position the *next*
token (``targets``) with a weight that says whether predicting it counts (``target_weights``: response
tokens only, or every token). Scoring and training compute ``log p(targets[t] | ids[:t+1])`` at every
position ``t`` and weight it, so no shifting happens on the device.

Example:
    >>> from shed_jax.lm.prompts import format_prompt
    >>> print(format_prompt("Name a colour.", "vicuna", None))  # doctest: +NORMALIZE_WHITESPACE
    A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
    detailed, and polite answers to the user's questions. USER: Name a colour. ASSISTANT:
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "PROMPT_FORMATS",
    "TokenTable",
    "format_prompt",
    "response_affixes",
    "encode_pairs",
    "encode_instructions",
    "multiple_choice_prompt",
    "letter_token_ids",
    "length_buckets",
    "bucket_for",
]

PROMPT_FORMATS = ("chat", "alpaca", "vicuna")

ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n")
VICUNA_TEMPLATE = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the user's questions. USER: {prompt} ASSISTANT:")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _check_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format: unknown format {prompt_format!r}, allowed {', '.join(PROMPT_FORMATS)}")


def _chat_render(tokenizer, messages, *, add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("prompt_format: 'chat' needs a tokenizer with a chat template; use 'alpaca' or 'vicuna'")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def format_prompt(prompt: str, prompt_format: str, tokenizer) -> str:
    """The text that precedes the response to ``prompt`` in ``prompt_format`` (``tokenizer`` only for "chat")."""
    _check_format(prompt_format)
    if prompt_format == "alpaca":
        return ALPACA_TEMPLATE.format(prompt=prompt)
    if prompt_format == "vicuna":
        return VICUNA_TEMPLATE.format(prompt=prompt)
    return _chat_render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def response_affixes(prompt_format: str, tokenizer) -> tuple[str, str]:
    """``(before, after)``: the text put before and after a response in ``prompt_format``.

    "alpaca": ``("", eos)``; "vicuna": ``(" ", eos)``; "chat": what the template writes around an assistant
    message after the generation prompt (found by rendering a probe conversation); when the template does not
    extend its own generation prompt, ``("", eos)``. ``eos`` is ``tokenizer.eos_token`` or ``""``.
    """
    _check_format(prompt_format)
    eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
    if prompt_format == "alpaca":
        return "", eos
    if prompt_format == "vicuna":
        return " ", eos
    probe_user, probe_answer = "Q\u2400probe", "R\u2400probe"
    prefix = _chat_render(tokenizer, [{"role": "user", "content": probe_user}], add_generation_prompt=True)
    full = _chat_render(tokenizer, [{"role": "user", "content": probe_user},
                                    {"role": "assistant", "content": probe_answer}], add_generation_prompt=False)
    if not full.startswith(prefix) or probe_answer not in full[len(prefix):]:
        return "", eos
    tail = full[len(prefix):]
    before, after = tail.split(probe_answer, 1)
    return before, after


@dataclass(frozen=True, eq=False)
class TokenTable:
    """Tokenised sequences, right-padded to a common width ``W``.

    Attributes:
        ids: ``(N, W)`` int32 token ids, ``pad_id`` after each sequence's end.
        lengths: ``(N,)`` int32 number of real tokens (>= 1).
        targets: ``(N, W)`` int32, ``targets[n, t] = ids[n, t + 1]`` (``pad_id`` past the end).
        target_weights: ``(N, W)`` float32, 1 where predicting ``targets[n, t]`` counts (a continuation
            token), else 0 (prompt tokens, padding, the last position).
        prompt_lengths: ``(N,)`` int32 number of prompt tokens (the continuation starts there).
        pad_id: the padding id.
    """

    ids: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    target_weights: np.ndarray
    prompt_lengths: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def n_target_tokens(self) -> np.ndarray:
        """``(N,)`` float32 number of counted targets per sequence."""
        return self.target_weights.sum(axis=1)

    def take(self, index) -> "TokenTable":
        """Rows ``index`` (a 1-D integer array), trimmed to their widest length."""
        index = np.asarray(index)
        width = max(int(self.lengths[index].max(initial=1)), 1)
        return TokenTable(self.ids[index, :width], self.lengths[index], self.targets[index, :width],
                          self.target_weights[index, :width], self.prompt_lengths[index], self.pad_id)


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _truncate(prompt_ids: list[int], cont_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Drop prompt tokens from the start, then continuation tokens from the end, to fit ``max_length``."""
    if len(prompt_ids) + len(cont_ids) <= max_length:
        return prompt_ids, cont_ids
    keep_cont = min(len(cont_ids), max(max_length - len(prompt_ids), max_length // 2))
    cont_ids = cont_ids[:keep_cont]
    keep_prompt = max_length - len(cont_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:] if keep_prompt > 0 else []
    return prompt_ids, cont_ids


def encode_pairs(tokenizer, prompt_texts: Sequence[str], continuation_texts: Sequence[str], *, max_length: int,
                 add_bos: bool = True, train_on_prompt: bool = False) -> TokenTable:
    """Tokenise ``prompt + continuation`` pairs (already formatted text) into a :class:`TokenTable`.

    Args:
        tokenizer: a transformers tokenizer (``__call__`` with ``add_special_tokens``).
        prompt_texts, continuation_texts: N strings each; the continuation is what is scored/learned.
        max_length: the most tokens per sequence (see the module docstring for what is dropped).
        add_bos: prepend ``tokenizer.bos_token_id`` to the prompt (when the tokenizer has one and the prompt
            does not already start with it).
        train_on_prompt: weight every predicted token, not only the continuation's.

    Returns:
        TokenTable of N rows, width = the longest sequence. Every row has at least one token; a row whose
        continuation is empty (or fully truncated) has no counted target.
    """
    if len(prompt_texts) != len(continuation_texts):
        raise ValueError(f"{len(prompt_texts)} prompts but {len(continuation_texts)} continuations")
    if max_length < 2:
        raise ValueError(f"max_length: must be >= 2, got {max_length}")
    n = len(prompt_texts)
    prompts = tokenizer(list(prompt_texts), add_special_tokens=False)["input_ids"] if n else []
    conts = tokenizer(list(continuation_texts), add_special_tokens=False)["input_ids"] if n else []
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    rows = []
    for prompt_ids, cont_ids in zip(prompts, conts):  # host-side, once per data set
        prompt_ids = list(prompt_ids)
        if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
            prompt_ids = [int(bos)] + prompt_ids
        prompt_ids, cont_ids = _truncate(prompt_ids, list(cont_ids), max_length)
        if not prompt_ids and not cont_ids:
            prompt_ids = [_pad_id(tokenizer)]
        rows.append((prompt_ids, cont_ids))
    pad = _pad_id(tokenizer)
    width = max([len(p) + len(c) for p, c in rows], default=1)
    ids = np.full((n, width), pad, np.int32)
    targets = np.full((n, width), pad, np.int32)
    weights = np.zeros((n, width), np.float32)
    lengths = np.zeros(n, np.int32)
    prompt_lengths = np.zeros(n, np.int32)
    for row, (prompt_ids, cont_ids) in enumerate(rows):
        sequence = prompt_ids + cont_ids
        length = len(sequence)
        ids[row, :length] = sequence
        targets[row, : length - 1] = sequence[1:]
        first_counted = 0 if train_on_prompt else max(len(prompt_ids) - 1, 0)
        weights[row, first_counted: length - 1] = 1.0
        lengths[row] = length
        prompt_lengths[row] = len(prompt_ids)
    return TokenTable(ids, lengths, targets, weights, prompt_lengths, pad)


def encode_instructions(tokenizer, prompts: Sequence[str], responses: Sequence[str], *, prompt_format: str,
                        max_length: int, train_on_prompt: bool = False) -> TokenTable:
    """Instruction/response pairs in ``prompt_format``; the continuation is ``before + response + after``
    (:func:`response_affixes`), so the model also learns to end its turn."""
    before, after = response_affixes(prompt_format, tokenizer)
    prompt_texts = [format_prompt(p, prompt_format, tokenizer) for p in prompts]
    continuations = [before + r + after for r in responses]
    return encode_pairs(tokenizer, prompt_texts, continuations, max_length=max_length,
                        add_bos=prompt_format != "chat", train_on_prompt=train_on_prompt)


def multiple_choice_prompt(question: str, choices: Sequence[str]) -> str:
    """The user-side text of a lettered multiple-choice question (MMLU style).

    >>> print(multiple_choice_prompt("2 + 2 =", ["3", "4"]))
    2 + 2 =
    A. 3
    B. 4
    Answer with the letter of the correct choice.
    """
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices, got {len(choices)}")
    lines = [question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer with the letter of the correct choice."


def letter_token_ids(tokenizer, n_letters: int, prompt_format: str) -> np.ndarray:
    """``(n_letters,)`` int32: the token that starts the answer "A", "B", ... in ``prompt_format``.

    The answer is tokenised as a continuation (``before + letter``, see :func:`response_affixes`); its first
    token must be distinct across letters.

    Raises:
        ValueError: two letters start with the same token.
    """
    before, _ = response_affixes(prompt_format, tokenizer)
    ids = []
    for letter in LETTERS[:n_letters]:
        tokens = tokenizer(before + letter, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"the tokenizer gives no token for the answer letter {letter!r}")
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"answer letters share first tokens {ids}: letter scoring is not possible with this "
                         "tokenizer and prompt format; use metric 'mc_full_choice'")
    return np.asarray(ids, np.int32)


def length_buckets(max_length: int, *, min_bucket: int = 16, multiple: int = 8) -> tuple[int, ...]:
    """Padded sequence widths: ``min_bucket`` then steps of about x1.5/x1.33 (16, 24, 32, 48, 64, ...),
    rounded up to ``multiple``, the last one ``max_length`` (also rounded up to ``multiple``).

    >>> length_buckets(128)
    (16, 24, 32, 48, 64, 96, 128)
    >>> length_buckets(100)
    (16, 24, 32, 48, 64, 96, 104)
    """
    top = int(math.ceil(max_length / multiple) * multiple)
    sizes = []
    size = float(min(min_bucket, top))
    while True:
        rounded = min(int(math.ceil(size / multiple) * multiple), top)
        if not sizes or rounded > sizes[-1]:
            sizes.append(rounded)
        if rounded >= top:
            return tuple(sizes)
        power = 2 ** math.floor(math.log2(rounded))
        size = power * 1.5 if rounded < power * 1.5 else power * 2


def bucket_for(width: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ``>= width`` (the largest bucket when none is)."""
    for size in buckets:
        if size >= width:
            return int(size)
    return int(buckets[-1])
