"""Scoring a stack of LoRA adapters on a validation set, batched over adapters (coalition slots).

Every score is computed for ``S`` adapters at once: the adapters carry a leading slot axis and are
``jax.vmap``-ped, the frozen base weights enter with ``in_axes=None`` (shared, never copied). The
validation sequences are sorted by length, cut into chunks of ``eval_batch_size`` rows, and each chunk is
padded to a width from a fixed ladder (:func:`shed_jax.lm.prompts.length_buckets`); chunks of one width run
under one ``lax.map`` inside one jitted call. The set is fixed, so every width compiles once and later
calls never retrace.

Two kernels:

* :func:`target_logprob_sums`: ``sum_t w_t log p(target_t | prefix)`` per sequence, computed over chunks
  of ``logits_chunk`` positions (``jax.checkpoint``-ed inside ``lax.scan``), so the full-vocabulary logits of
  a whole sequence are never held at once, in the forward or the backward pass;
* :func:`last_position_logits`: the logits of a few token ids (the answer letters) at each sequence's last
  real position.

and the metrics built on them (host-side, float64, once per batch of slots):

* ``"mc_prob"`` / ``"mc_accuracy"``: a question with its lettered choices (MMLU style,
  Hendrycks et al. 2021); the softmax over the answer letters' logits gives the mean probability of the
  right letter, or the accuracy of its argmax (ties: lowest letter);
* ``"mc_full_choice"``: the log-likelihood of each choice text as the answer, summed or averaged over its
  tokens (``choice_score``); the mean probability of the right choice under the softmax over choices;
* ``"loss"``: minus the mean next-token loss over all response tokens of instruction-format data
  (token-weighted), so higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shed_jax.lm.prompts import TokenTable, bucket_for, length_buckets

__all__ = [
    "METRICS",
    "target_logprob_sums",
    "last_position_logits",
    "StackScorer",
    "letter_metric",
    "full_choice_metric",
    "loss_metric",
]

METRICS = ("mc_prob", "mc_accuracy", "mc_full_choice", "loss")


def target_logprob_sums(model, hidden: jax.Array, targets: jax.Array, weights: jax.Array, *,
                        logits_chunk: int = 16) -> jax.Array:
    """``(B,)`` float32: ``sum_t weights[b, t] * log softmax(unembed(hidden[b, t]))[targets[b, t]]``.

    Args:
        model: a :class:`shed_jax.lm.model.Decoder` (only ``unembed`` is used).
        hidden: ``(B, T, H)`` final hidden states.
        targets: ``(B, T)`` int32 next-token ids.
        weights: ``(B, T)`` float32 weights (0 for padding and uncounted tokens).
        logits_chunk: positions per chunk; ``B x logits_chunk x vocab`` float32 logits live at a time, and
            the backward pass recomputes them chunk by chunk.
    """
    batch, length, width = hidden.shape
    chunk = max(1, min(int(logits_chunk), length))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    hidden_c = hidden.reshape(batch, n_chunks, chunk, width).swapaxes(0, 1)
    targets_c = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)
    weights_c = weights.reshape(batch, n_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_logprob(hidden_chunk, target_chunk, weight_chunk):
        logits = model.unembed(hidden_chunk).astype(jnp.float32)                     # (B, c, V)
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, target_chunk[..., None], axis=-1)[..., 0]
        return jnp.sum((picked - log_norm) * weight_chunk, axis=-1)                  # (B,)

    def body(total, xs):
        return total + chunk_logprob(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((batch,), jnp.float32), (hidden_c, targets_c, weights_c))
    return total


def last_position_logits(model, hidden: jax.Array, lengths: jax.Array, token_ids: jax.Array) -> jax.Array:
    """``(B, K)`` float32 logits of ``token_ids`` ``(K,)`` at position ``lengths[b] - 1`` of ``hidden`` (B, T, H)."""
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]      # (B, H)
    return model.unembed(last)[:, token_ids]


@dataclass(frozen=True)
class _Group:
    width: int
    rows: np.ndarray        # (n_chunks, E) int32 rows of the table
    valid: np.ndarray       # (n_chunks, E) bool, False for padding rows


def _plan(lengths: np.ndarray, *, eval_batch_size: int, buckets) -> list[_Group]:
    """Rows sorted by length, cut into chunks of ``eval_batch_size``, grouped by padded width."""
    order = np.argsort(lengths, kind="stable")
    n = order.size
    n_chunks = -(-n // eval_batch_size)
    padded = np.concatenate([order, np.full(n_chunks * eval_batch_size - n, order[-1])]).astype(np.int32)
    valid = np.arange(n_chunks * eval_batch_size) < n
    rows = padded.reshape(n_chunks, eval_batch_size)
    valid = valid.reshape(n_chunks, eval_batch_size)
    widths = np.array([bucket_for(int(lengths[r].max()), buckets) for r in rows])
    return [_Group(int(w), rows[widths == w], valid[widths == w]) for w in np.unique(widths)]


class StackScorer:
    """Per-example scores of ``S`` stacked adapters on a fixed tokenised set (jitted once per width).

    Args:
        graphdef, base_state: ``nnx.split`` of the :class:`~shed_jax.lm.model.Decoder` (base weights).
        table: the tokenised validation :class:`~shed_jax.lm.prompts.TokenTable` (N rows).
        mode: ``"targets"`` (per-row :func:`target_logprob_sums`) or ``"letters"`` (per-row
            :func:`last_position_logits` of ``letter_ids``).
        letter_ids: ``(K,)`` token ids for ``mode="letters"``.
        lora_scale: adapters' multiplier (``alpha / rank``).
        eval_batch_size: rows per chunk.
        logits_chunk: positions per logits chunk (``mode="targets"``).
        max_length: the widest bucket (default: the table's width).

    ``scorer(lora_stack)`` returns ``(S, N)`` float32 (targets) or ``(S, N, K)`` float32 (letters), rows in
    the table's order.
    """

    def __init__(self, graphdef, base_state, table: TokenTable, *, mode: str, letter_ids=None,
                 lora_scale: float = 1.0, eval_batch_size: int = 16, logits_chunk: int = 16,
                 max_length: int | None = None):
        if mode not in ("targets", "letters"):
            raise ValueError(f"mode: unknown {mode!r}, allowed 'targets', 'letters'")
        if mode == "letters" and letter_ids is None:
            raise ValueError("letter_ids: required for mode='letters'")
        self.graphdef, self.base_state = graphdef, base_state
        self.mode = mode
        self.n_rows = len(table)
        self.lora_scale = float(lora_scale)
        self.eval_batch_size = int(min(eval_batch_size, max(self.n_rows, 1)))
        self.buckets = length_buckets(max_length or table.width)
        self.groups = _plan(table.lengths, eval_batch_size=self.eval_batch_size, buckets=self.buckets)
        top = max(g.width for g in self.groups)
        pad = top - table.width
        self._ids = jnp.asarray(np.pad(table.ids, ((0, 0), (0, max(pad, 0))))[:, :top])
        self._targets = jnp.asarray(np.pad(table.targets, ((0, 0), (0, max(pad, 0))))[:, :top])
        self._weights = jnp.asarray(np.pad(table.target_weights, ((0, 0), (0, max(pad, 0))))[:, :top])
        self._lengths = jnp.asarray(table.lengths)
        letters = jnp.zeros((1,), jnp.int32) if letter_ids is None else jnp.asarray(np.asarray(letter_ids, np.int32))
        self._data = (self._ids, self._targets, self._weights, self._lengths, letters)
        self._group_rows = [(g.width, jnp.asarray(g.rows)) for g in self.groups]
        self.n_traces = 0
        self._score_group = jax.jit(self._score_group_impl, static_argnames=("width",))
        self.logits_chunk = int(logits_chunk)

    def _score_group_impl(self, base_state, lora_stack, data, rows, *, width: int):
        self.n_traces += 1  # trace-time only
        graphdef, mode, scale, chunk = self.graphdef, self.mode, self.lora_scale, self.logits_chunk
        ids_all, targets_all, weights_all, lengths_all, letters = data

        def one_slot(state, lora, ids, targets, weights, lengths):
            model = nnx.merge(graphdef, state)
            mask = jnp.arange(width)[None, :] < lengths[:, None]
            hidden = model(ids, attention_mask=mask, lora=lora, lora_scale=scale)
            if mode == "targets":
                return target_logprob_sums(model, hidden, targets, weights, logits_chunk=chunk)
            return last_position_logits(model, hidden, lengths, letters)

        def one_chunk(chunk_rows):
            ids = ids_all[chunk_rows, :width]
            targets = targets_all[chunk_rows, :width]
            weights = weights_all[chunk_rows, :width]
            lengths = lengths_all[chunk_rows]
            return jax.vmap(one_slot, in_axes=(None, 0, None, None, None, None))(
                base_state, lora_stack, ids, targets, weights, lengths)

        return jax.lax.map(one_chunk, rows)    # (n_chunks, S, E[, K])

    def __call__(self, lora_stack) -> jax.Array:
        n_slots = jax.tree_util.tree_leaves(lora_stack)[0].shape[0]
        parts, order = [], []
        for (width, rows), group in zip(self._group_rows, self.groups):
            out = self._score_group(self.base_state, lora_stack, self._data, rows, width=width)
            out = jnp.moveaxis(out, 1, 0)                                  # (S, n_chunks, E[, K])
            out = out.reshape((n_slots, -1) + out.shape[3:])
            keep = group.valid.reshape(-1)
            parts.append(out[:, np.flatnonzero(keep)])
            order.append(group.rows.reshape(-1)[keep])
        stacked = jnp.concatenate(parts, axis=1)
        inverse = np.empty(self.n_rows, np.int64)
        inverse[np.concatenate(order)] = np.arange(self.n_rows)
        return stacked[:, inverse]


# ------------------------------------------------------------------------------------------ metrics
def letter_metric(letter_logits, answers, choice_mask, metric: str) -> np.ndarray:
    """``(S,)`` float64 from ``(S, Q, K)`` letter logits, ``(Q,)`` answers and ``(Q, K)`` bool real choices.

    ``"mc_prob"``: mean softmax probability (over the real choices' letters) of the right letter;
    ``"mc_accuracy"``: fraction of questions whose right letter has the largest logit (ties: lowest letter).
    """
    logits = np.asarray(letter_logits, np.float64)
    answers = np.asarray(answers)
    logits = np.where(np.asarray(choice_mask)[None], logits, -np.inf)
    if metric == "mc_accuracy":
        return (np.argmax(logits, axis=-1) == answers[None]).mean(axis=1)
    if metric != "mc_prob":
        raise ValueError(f"metric: {metric!r} is not a letter metric")
    log_norm = np.logaddexp.reduce(logits, axis=-1)
    right = np.take_along_axis(logits, answers[None, :, None], axis=-1)[..., 0]
    return np.exp(right - log_norm).mean(axis=1)


def full_choice_metric(choice_logprob_sums, question_index, choice_position, n_tokens, answers, *,
                       n_choices_max: int, choice_score: str = "sum") -> np.ndarray:
    """``(S,)`` float64 mean probability of the right choice under the softmax of choice scores.

    Args:
        choice_logprob_sums: ``(S, R)`` summed log-likelihood of each (question, choice) row.
        question_index, choice_position: ``(R,)`` which question and which choice each row is.
        n_tokens: ``(R,)`` counted tokens per row (for ``choice_score="mean"``).
        answers: ``(Q,)`` right choice per question.
        choice_score: ``"sum"`` (log-likelihood of the choice text) or ``"mean"`` (per token).
    """
    sums = np.asarray(choice_logprob_sums, np.float64)
    if choice_score == "mean":
        sums = sums / np.maximum(np.asarray(n_tokens, np.float64), 1.0)[None]
    n_slots, n_questions = sums.shape[0], int(np.asarray(answers).shape[0])
    scores = np.full((n_slots, n_questions, n_choices_max), -np.inf)
    scores[:, question_index, choice_position] = sums
    log_norm = np.logaddexp.reduce(scores, axis=-1)
    right = np.take_along_axis(scores, np.asarray(answers)[None, :, None], axis=-1)[..., 0]
    return np.exp(right - log_norm).mean(axis=1)


def loss_metric(target_logprob_sums_rows, n_tokens) -> np.ndarray:
    """``(S,)`` float64: minus the token-weighted mean loss, ``sum log p / sum tokens`` (higher is better)."""
    sums = np.asarray(target_logprob_sums_rows, np.float64)
    return sums.sum(axis=1) / max(float(np.sum(n_tokens)), 1.0)
