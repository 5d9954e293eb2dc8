"""Scoring a stack of LoRA adapters on a validation set, batched over adapters (coalition slots).

Every score is computed for ``S`` adapters at once: the adapters carry a leading slot axis and are
``jax.vmap``-ped, the frozen base weights enter with ``in_axes=None`` (shared, never copied). The
validation sequences are packed (the default, as in training: :mod:`shed_jax.lm.packing`) into rows of the widest
bucket with segment ids, cut into chunks of ``eval_batch_size`` rows, and only the positions that carry a weight
(or each sequence's last position, for answer letters) are gathered from the hidden states and unembedded: no
logits of prompt or padding positions. Unpacked (``pack=False``), they are sorted by length, cut into chunks of
``eval_batch_size`` rows, and each chunk is padded to a width from a fixed ladder
(:func:`shed_jax.lm.prompts.length_buckets`). Chunks of one width run under one ``lax.map`` inside one jitted
call. The set is fixed, so every width compiles once and later calls never retrace.

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

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shed_jax.lm.prompts import TokenTable, bucket_for, length_buckets

__all__ = [
    "METRICS",
    "target_logprob_sums",
    "target_logprobs",
    "head_dtype",
    "picked_log_softmax",
    "last_position_logits",
    "StackScorer",
    "letter_metric",
    "full_choice_metric",
    "loss_metric",
]

METRICS = ("mc_prob", "mc_accuracy", "mc_full_choice", "loss")


def head_dtype(model):
    """The dtype of full-vocabulary logits in the loss head: bfloat16 when the model computes in bfloat16 (half the
    memory and bandwidth of a logits chunk), else float32. The log-sum-exp is float32 either way
    (:func:`picked_log_softmax`)."""
    return jnp.bfloat16 if jnp.dtype(getattr(model, "dtype", jnp.float32)) == jnp.dtype(jnp.bfloat16) else jnp.float32


def picked_log_softmax(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``log softmax(logits)[..., targets]`` as float32, for float32 or bfloat16 ``logits`` ``(..., V)`` (targets
    ``(...)``). bfloat16 logits are never rounded further: the maximum is exact, and ``exp(logit - max)``, its sum and
    its log are float32 (the subtraction happens after the upcast, which XLA fuses: no float32 copy is stored)."""
    if logits.dtype == jnp.float32:
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)).astype(jnp.float32)
    total = jnp.sum(jnp.exp(logits.astype(jnp.float32) - peak), axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(jnp.float32)
    return picked - (jnp.log(total) + peak[..., 0])


def target_logprob_sums(model, hidden: jax.Array, targets: jax.Array, weights: jax.Array, *,
                        logits_chunk: int = 16, groups: jax.Array | None = None,
                        n_groups: int | None = None) -> jax.Array:
    """``(B,)`` float32: ``sum_t weights[b, t] * log softmax(unembed(hidden[b, t]))[targets[b, t]]``; with
    ``groups`` ``(B, T)`` int32 in ``0..n_groups-1``: ``(n_groups,)``, the same terms summed by each position's
    group instead of its row (rows that hold sequences of several coalitions).

    Args:
        model: a :class:`shed_jax.lm.model.Decoder` (only ``unembed`` is used).
        hidden: ``(B, T, H)`` final hidden states.
        targets: ``(B, T)`` int32 next-token ids.
        weights: ``(B, T)`` float32 weights (0 for padding and uncounted tokens).
        logits_chunk: positions per chunk; ``B x logits_chunk x vocab`` logits live at a time, and
            the backward pass recomputes them chunk by chunk. Logits are bfloat16 when the model computes in
            bfloat16 (:func:`head_dtype`), with a float32 log-sum-exp; float32 otherwise.
    """
    batch, length, width = hidden.shape
    chunk = max(1, min(int(logits_chunk), length))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
        if groups is not None:
            groups = jnp.pad(groups, ((0, 0), (0, pad)))
    by_row = groups is None
    if by_row:
        groups, n_groups = jnp.zeros((batch, n_chunks * chunk), jnp.int32), batch   # unused
    elif n_groups is None:
        raise ValueError("groups: needs n_groups")
    hidden_c = hidden.reshape(batch, n_chunks, chunk, width).swapaxes(0, 1)
    targets_c = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)
    weights_c = weights.reshape(batch, n_chunks, chunk).swapaxes(0, 1)
    groups_c = groups.reshape(batch, n_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_logprob(hidden_chunk, target_chunk, weight_chunk, group_chunk):
        logits = model.unembed(hidden_chunk, head_dtype(model))                       # (B, c, V)
        terms = picked_log_softmax(logits, target_chunk) * weight_chunk               # (B, c)
        if by_row:
            return jnp.sum(terms, axis=-1)                                            # (B,)
        return jax.ops.segment_sum(terms.reshape(-1), group_chunk.reshape(-1), num_segments=n_groups)

    def body(total, xs):
        return total + chunk_logprob(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((n_groups,), jnp.float32), (hidden_c, targets_c, weights_c, groups_c))
    return total


def target_logprobs(model, hidden: jax.Array, targets: jax.Array, *, positions_chunk: int = 256) -> jax.Array:
    """``(P,)`` float32 ``log softmax(unembed(hidden[p]))[targets[p]]`` of gathered positions ``hidden`` ``(P, H)``,
    ``positions_chunk`` positions of full-vocabulary logits at a time (a ``lax.scan``; forward only)."""
    n_positions, width = hidden.shape
    chunk = max(1, min(int(positions_chunk), n_positions))
    n_chunks = -(-n_positions // chunk)
    pad = n_chunks * chunk - n_positions
    hidden_c = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(n_chunks, chunk, width)
    targets_c = jnp.pad(targets, (0, pad)).reshape(n_chunks, chunk)

    def body(_, xs):
        hidden_chunk, target_chunk = xs
        logits = model.unembed(hidden_chunk, head_dtype(model))                       # (c, V)
        return None, picked_log_softmax(logits, target_chunk)

    _, out = jax.lax.scan(body, None, (hidden_c, targets_c))
    return out.reshape(-1)[:n_positions]


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


@dataclass(frozen=True)
class _PackedPlan:
    """Validation sequences packed into rows of ``width`` (first-fit decreasing), cut into chunks of rows; per chunk
    the flat positions (``row_in_chunk * width + column``) that are unembedded ("picks", padded to a common count
    with weight 0 and sequence ``N``)."""

    width: int
    source: np.ndarray        # (C, E, W) int32 flat table index per position (pad_index for padding)
    segment: np.ndarray       # (C, E, W) int32 segment ids (0: padding)
    pick_position: np.ndarray  # (C, K) int32
    pick_sequence: np.ndarray  # (C, K) int32 table row of each pick (N: padding)
    pick_weight: np.ndarray    # (C, K) float32 (targets mode: the target weight; letters: 1)


def _packed_plan(table: TokenTable, *, mode: str, width: int, rows_per_chunk: int,
                 positions_multiple: int) -> _PackedPlan:
    from shed_jax.lm.packing import first_fit_decreasing, packed_layout

    n, lengths = len(table), np.minimum(table.lengths, width).astype(np.int64)
    placement = first_fit_decreasing(lengths[None, :], width)
    n_rows = int(placement.n_rows[0])
    n_chunks = -(-n_rows // rows_per_chunk)
    pad_index = n * width
    source, segment = packed_layout(np.arange(n)[None, :], lengths[None, :], placement,
                                    n_rows=n_chunks * rows_per_chunk, width=width, table_width=width,
                                    pad_index=pad_index)
    source = source.reshape(n_chunks, rows_per_chunk, width)
    segment = segment.reshape(n_chunks, rows_per_chunk, width)
    flat_rows = np.minimum(source // width, n)                                  # (C, E, W) table row (n: pad)
    flat_columns = source % width
    if mode == "targets":
        weights = np.pad(table.target_weights, ((0, 0), (0, max(width - table.width, 0))))[:, :width]
        weight_at = np.where(source < pad_index, np.concatenate([weights.reshape(-1), [0.0]])[
            np.minimum(source, pad_index)], 0.0).reshape(n_chunks, -1)
        picked = weight_at != 0
    else:  # letters: each sequence's last real position
        last = (flat_columns == (lengths[np.minimum(flat_rows, n - 1)] - 1)) & (source < pad_index)
        weight_at = last.reshape(n_chunks, -1).astype(np.float32)
        picked = weight_at != 0
    counts = picked.sum(axis=1)
    n_picks = max(int(counts.max(initial=0)), 1)
    n_picks = -(-n_picks // positions_multiple) * positions_multiple
    order = np.argsort(~picked, axis=1, kind="stable")[:, :n_picks]              # picked positions first
    keep = np.arange(n_picks)[None, :] < counts[:, None]
    sequence = np.take_along_axis(flat_rows.reshape(n_chunks, -1), order, axis=1)
    return _PackedPlan(width, source.astype(np.int32), segment.astype(np.int32),
                       np.where(keep, order, 0).astype(np.int32), np.where(keep, sequence, n).astype(np.int32),
                       np.where(keep, np.take_along_axis(weight_at, order, axis=1), 0.0).astype(np.float32))


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
        pack: pack the sequences into rows of the widest bucket (``max_length``; segment ids, positions restarting per
            sequence, as in training; :mod:`shed_jax.lm.packing`), ``eval_batch_size`` packed rows per chunk, and
            unembed only the positions that carry a weight (targets) or each sequence's last position (letters):
            one width, fewer rows, no logits of prompt or padding positions. False: the padded path (chunks of
            ``eval_batch_size`` sequences sorted by length, one jitted program per width bucket).

    ``scorer(lora_stack)`` returns ``(S, N)`` float32 (targets) or ``(S, N, K)`` float32 (letters), rows in
    the table's order. Packed and padded give the same values up to float32 rounding (tested).
    """

    def __init__(self, graphdef, base_state, table: TokenTable, *, mode: str, letter_ids=None,
                 lora_scale: float = 1.0, eval_batch_size: int = 16, logits_chunk: int = 16,
                 max_length: int | None = None, pack: bool = True):
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
        self.packing = bool(pack)
        self.logits_chunk = int(logits_chunk)
        self.n_traces = 0
        self._score_group = jax.jit(self._score_group_impl, static_argnames=("width",))
        if self.packing:
            self._init_packed(table, letter_ids)
            return
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

    def _init_packed(self, table: TokenTable, letter_ids) -> None:
        width = self.buckets[-1]  # rows of the widest bucket, as in training: short sequences share rows
        positions_chunk = self.eval_batch_size * self.logits_chunk   # logits live at a time, as the padded path
        self.plan = _packed_plan(table, mode=self.mode, width=width, rows_per_chunk=self.eval_batch_size,
                                 positions_multiple=positions_chunk if self.mode == "targets" else 1)
        n_chunks = self.plan.source.shape[0]
        # the estimate (proxies/lm.py) times one chunk of a group: one group, its "rows" are chunk numbers
        self.groups = [_Group(width, np.arange(n_chunks, dtype=np.int32)[:, None], np.ones((n_chunks, 1), bool))]
        columns = np.broadcast_to(np.arange(width, dtype=np.int32), (len(table), width))

        def flat(a):
            a = np.pad(a, ((0, 0), (0, max(width - a.shape[1], 0))))[:, :width]
            return np.concatenate([a.reshape(-1), np.zeros(1, a.dtype)])

        letters = np.zeros((1,), np.int32) if letter_ids is None else np.asarray(letter_ids, np.int32)
        self._data = tuple(jnp.asarray(a) for a in (
            flat(table.ids), flat(table.targets), flat(columns), letters, self.plan.source, self.plan.segment,
            self.plan.pick_position, self.plan.pick_sequence, self.plan.pick_weight))
        self._group_rows = [(width, jnp.asarray(self.groups[0].rows))]

    def _score_packed_impl(self, base_state, lora_stack, data, chunks, width: int):
        graphdef, mode, scale = self.graphdef, self.mode, self.lora_scale
        positions_chunk = self.eval_batch_size * self.logits_chunk
        ids_flat, targets_flat, columns_flat, letters, source, segment, pick_position, _, pick_weight = data

        def one_chunk(chunk):
            chunk_source, chunk_segment = source[chunk[0]], segment[chunk[0]]              # (E, W)
            picks, weights = pick_position[chunk[0]], pick_weight[chunk[0]]                # (K,)
            ids, positions = ids_flat[chunk_source], columns_flat[chunk_source]
            picked_targets = targets_flat[chunk_source].reshape(-1)[picks]

            def one_slot(lora):
                model = nnx.merge(graphdef, base_state)
                hidden = model(ids, positions=positions, segment_ids=chunk_segment, lora=lora, lora_scale=scale)
                picked = hidden.reshape(-1, hidden.shape[-1])[picks]                     # (K, H): gather first
                if mode == "targets":
                    return target_logprobs(model, picked, picked_targets, positions_chunk=positions_chunk) * weights
                return model.unembed(picked)[:, letters]                                 # (K, L)

            return jax.vmap(one_slot)(lora_stack)

        return jax.lax.map(one_chunk, chunks)    # (n_chunks, S, K[, L])

    def _score_group_impl(self, base_state, lora_stack, data, rows, *, width: int):
        self.n_traces += 1  # trace-time only
        if self.packing:
            return self._score_packed_impl(base_state, lora_stack, data, rows, width)
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
        if self.packing:
            width, chunks = self._group_rows[0]
            out = self._score_group(self.base_state, lora_stack, self._data, chunks, width=width)
            return _scatter_picks(out, self._data[7], n_rows=self.n_rows, letters=self.mode == "letters")
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


@functools.partial(jax.jit, static_argnames=("n_rows", "letters"))
def _scatter_picks(out, pick_sequence, *, n_rows: int, letters: bool):
    """Per-pick scores ``(C, S, K[, L])`` -> per-sequence ``(S, N[, L])``: targets summed per sequence, letters placed
    (one pick per sequence); padding picks (sequence N) dropped."""
    out = jnp.moveaxis(out, 1, 0)                                          # (S, C, K[, L])
    n_slots = out.shape[0]
    out = out.reshape((n_slots, -1) + out.shape[3:])
    sequence = pick_sequence.reshape(-1)
    total = jnp.zeros((n_slots, n_rows + 1) + out.shape[2:], out.dtype)
    total = total.at[:, sequence].set(out) if letters else total.at[:, sequence].add(out)
    return total[:, :n_rows]


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
