"""Batched LoRA fine-tunes: many coalitions fine-tuned at once, one adapter per *slot*.

SHED's utility of a coalition ``S`` is the validation score of a model fine-tuned on ``S`` (He et al.,
NeurIPS 2024). Here the model is a frozen :class:`~shed_jax.lm.model.Decoder` plus a LoRA adapter (Hu et al.,
2021), and ``n_slots`` coalitions are fine-tuned together:

* only the adapters carry the slot axis: ``{target: {"a": (S, L, d_in, r), "b": (S, L, r, d_out)}}`` in
  float32, with float32 AdamW state from ``jax.vmap(tx.init)``; the base weights are split off once
  (``nnx.split``) and enter the vmapped step with ``in_axes=None``: shared, never copied, never
  differentiated (the gradient is taken with respect to the adapter only);
* one optimiser step of all slots is one jitted call: ``jax.vmap`` over slots of (gather the slot's minibatch
  rows from the token table on the device, forward with ``remat`` per block, loss over chunks of positions,
  ``value_and_grad``, ``optax`` update). Inactive slots keep their state (``jnp.where``); one slot at a time (the
  CPU default) they skip their forward and backward (``lax.cond``), and packed across slots they have no rows;
* shapes are fixed: ``n_slots`` is fixed; by default (``recipe.pack``) each slot's minibatch at a step is packed
  into rows of the widest bucket with segment ids (:mod:`shed_jax.lm.packing`), and the step's row count is the
  smallest of :func:`shed_jax.lm.packing.row_buckets` that holds the most rows any slot needs (packed across slots,
  the default on one device: the step's rows are all active slots' rows together, bucketed by
  :func:`shared_row_buckets`, each row's adapter gathered by its slot); unpacked, a step's
  sequence width is the smallest bucket of a fixed ladder (:func:`shed_jax.lm.prompts.length_buckets`) that holds
  the longest row any slot draws at that step.
  Each width (row count) compiles once; new coalitions never retrace (tested by counting traces);
* slots are refilled in place: the stacked state is donated to a jitted ``where(reset, fresh, current)``.

One fine-tune is a fixed recipe (:class:`FinetuneRecipe`): ``steps`` AdamW steps (linear warm-up over
``warmup_steps``, then constant, linear or cosine decay), each on ``batch_size`` sequences drawn from the
coalition's own members by epochs of random permutations, from a NumPy generator seeded by the run's seed and
a hash of the member indices (:func:`coalition_rng`): a coalition's minibatches, and so its adapter, do not
depend on which slot, batch or call it lands in. The loss is the token-mean next-token loss over the
continuation (response) tokens of the minibatch (:class:`~shed_jax.lm.prompts.TokenTable` weights);
full-vocabulary logits are produced ``logits_chunk`` positions at a time
(:func:`shed_jax.lm.scoring.target_logprob_sums`).

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from flax import nnx
    >>> from shed_jax.lm.model import Decoder, DecoderConfig, init_lora
    >>> from shed_jax.lm.prompts import TokenTable
    >>> cfg = DecoderConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
    ...                     num_heads=2, num_kv_heads=1, head_dim=8)
    >>> graphdef, state = nnx.split(Decoder(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    >>> ids = np.arange(24, dtype=np.int32).reshape(3, 8) % 32
    >>> table = TokenTable(ids, np.full(3, 8, np.int32), np.roll(ids, -1, 1), np.ones((3, 8), np.float32),
    ...                    np.zeros(3, np.int32), 0)
    >>> trainer = SlotTrainer(graphdef, state, table, FinetuneRecipe(steps=2, batch_size=2), n_slots=2,
    ...                       lora_init=init_lora(cfg, rank=2, key=jax.random.key(0)))
    >>> trainer.train([np.array([0, 1]), np.array([2])], seed=0).lora["q_proj"]["a"].shape
    (2, 1, 16, 2)
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shed_jax import interrupt
from shed_jax._faults import fault_point
from shed_jax.lm.model import REMAT_POLICIES
from shed_jax.lm import slot_sharding
from shed_jax.lm.packing import first_fit_decreasing, first_fit_mixed, packed_layout, row_buckets
from shed_jax.lm.prompts import TokenTable, bucket_for, length_buckets
from shed_jax.lm.scoring import target_logprob_sums

__all__ = [
    "FinetuneRecipe",
    "SharedStep",
    "SlotState",
    "SlotTrainer",
    "coalition_rng",
    "default_slot_batch",
    "learning_rate_schedule",
    "make_optimizer",
    "minibatch_schedule",
    "recipe_for_memory",
    "sequence_loss",
    "shared_row_buckets",
    "stack_adapters",
]

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class FinetuneRecipe:
    """One fine-tune's fixed recipe (hashable).

    Attributes:
        steps: optimiser steps.
        learning_rate: peak AdamW learning rate.
        warmup_steps: linear warm-up from 0 to ``learning_rate`` over this many steps.
        batch_size: sequences per step, drawn from the coalition's members.
        lr_schedule: after warm-up: ``"constant"``, ``"linear"`` (to 0 at ``steps``) or ``"cosine"`` (to 0).
        weight_decay: AdamW decoupled weight decay on the adapters.
        max_grad_norm: clip each adapter's gradient to this global norm (None: no clipping).
        lora_scale: the adapter's multiplier (peft's ``alpha / rank``).
        logits_chunk: positions per chunk of full-vocabulary logits in the loss.
        remat: what the backward pass recomputes: ``"none"``, ``"block"`` (True) or ``"dots_saveable"``
            (:func:`shed_jax.lm.model.remat_body`).
        pack: pack each slot-step's sequences into rows of the widest bucket with segment ids (block-diagonal
            attention, positions restarting per sequence; :mod:`shed_jax.lm.packing`) instead of padding them all
            to the longest one's width. The loss is the same token mean over the same tokens.
    """

    steps: int = 20
    learning_rate: float = 1e-3
    warmup_steps: int = 2
    batch_size: int = 4
    lr_schedule: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    lora_scale: float = 2.0
    logits_chunk: int = 16
    remat: bool | str = True
    pack: bool = True

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps: must be an int >= 1, got {self.steps!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size: must be an int >= 1, got {self.batch_size!r}")
        if not (isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.steps):
            raise ValueError(f"warmup_steps: must be an int in [0, steps={self.steps}], got {self.warmup_steps!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: unknown {self.lr_schedule!r}, allowed {', '.join(LR_SCHEDULES)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate!r}")
        if not (isinstance(self.remat, bool) or self.remat in REMAT_POLICIES):
            raise ValueError(f"remat: unknown {self.remat!r}, allowed {', '.join(REMAT_POLICIES)}")


def learning_rate_schedule(recipe: FinetuneRecipe) -> optax.Schedule:
    """Linear warm-up over ``warmup_steps`` (the first step uses ``lr / warmup_steps``), then the decay."""
    peak, warmup, steps = recipe.learning_rate, recipe.warmup_steps, recipe.steps
    warm = optax.linear_schedule(peak / max(warmup, 1), peak, max(warmup - 1, 1))
    rest = max(steps - warmup, 1)
    if recipe.lr_schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif recipe.lr_schedule == "linear":
        decay = optax.linear_schedule(peak, 0.0, rest)
    else:
        decay = optax.cosine_decay_schedule(peak, rest)
    if warmup == 0:
        return decay
    return optax.join_schedules([warm, decay], [warmup])


def make_optimizer(recipe: FinetuneRecipe) -> optax.GradientTransformation:
    """AdamW on :func:`learning_rate_schedule`, after global-norm clipping (when ``max_grad_norm``)."""
    adamw = optax.adamw(learning_rate_schedule(recipe), b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=recipe.weight_decay)
    if recipe.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(recipe.max_grad_norm), adamw)


def sequence_loss(lora, graphdef, base_state, ids, lengths, targets, weights, *, lora_scale: float,
                  logits_chunk: int = 16, remat: bool | str = False, positions=None, segment_ids=None) -> jax.Array:
    """Token-mean next-token loss of a batch under base model + adapter: scalar float32.

    Args:
        lora: one adapter ``{target: {"a": (L, d_in, r), "b": (L, r, d_out)}}`` (the differentiated argument).
        graphdef, base_state: ``nnx.split`` of the decoder.
        ids, targets: ``(B, T)`` int32; ``lengths``: ``(B,)`` int32 real tokens per row (right padding).
        weights: ``(B, T)`` float32 per-target weights.
        positions, segment_ids: packed rows instead (``lengths`` None): ``(B, T)`` int32 RoPE positions and
            segment ids (see :class:`~shed_jax.lm.model.Decoder`).

    Returns:
        ``- sum(weights * log p(targets)) / max(sum(weights), 1)``.
    """
    model = nnx.merge(graphdef, base_state)
    if segment_ids is None:
        mask = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
        hidden = model(ids, attention_mask=mask, lora=lora, lora_scale=lora_scale, remat=remat)
    else:
        hidden = model(ids, positions=positions, segment_ids=segment_ids, lora=lora, lora_scale=lora_scale,
                       remat=remat)
    total = jnp.sum(target_logprob_sums(model, hidden, targets, weights, logits_chunk=logits_chunk))
    return -total / jnp.maximum(jnp.sum(weights), 1.0)


class SharedStep(NamedTuple):
    """One step's rows packed across slots (:meth:`SlotTrainer.shared_plan`), int32: ``source``, ``segment``
    ``(n_rows, T)`` (see :mod:`shed_jax.lm.packing`), ``row_slot`` ``(n_rows, K)`` the slots whose sequences each row
    holds, ``choice`` ``(n_rows, T)`` the index in ``row_slot`` of each token's slot."""

    source: np.ndarray
    segment: np.ndarray
    row_slot: np.ndarray
    choice: np.ndarray


class SlotState(NamedTuple):
    """Stacked per-slot training state: adapters and optimiser state, leading axis ``n_slots``."""

    lora: Any
    opt_state: Any


def stack_adapters(lora, n_slots: int):
    """``n_slots`` copies of one adapter on a new leading axis."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_slots,) + x.shape), lora)


def coalition_rng(members: np.ndarray, seed: int) -> np.random.Generator:
    """A NumPy generator determined by ``seed`` and the set of player indices ``members`` (order-free)."""
    members = np.unique(np.asarray(members, np.int64))
    digest = hashlib.blake2b(members.tobytes(), digest_size=16, person=b"shed-lm-coal").digest()
    words = np.frombuffer(digest, np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, *words]))


def minibatch_schedule(members: np.ndarray, *, steps: int, batch_size: int, rng: np.random.Generator
                       ) -> np.ndarray:
    """``(steps, batch_size)`` int32 player indices: epochs of random permutations of ``members``.

    Every member is drawn once per epoch (an epoch may straddle two steps), so a coalition smaller than a
    batch repeats its members within a step.
    """
    members = np.unique(np.asarray(members, np.int64))
    if members.size == 0:
        raise ValueError("members: a fine-tune needs at least one member")
    need = steps * batch_size
    n_epochs = -(-need // members.size)
    draws = np.concatenate([members[rng.permutation(members.size)] for _ in range(n_epochs)])[:need]
    return draws.reshape(steps, batch_size).astype(np.int32)


class SlotTrainer:
    """Fine-tunes up to ``n_slots`` coalitions at once on a token table (see the module docstring).

    Args:
        graphdef, base_state: ``nnx.split(decoder)``; the base weights are never modified.
        table: the players' tokenised texts, one row per player.
        recipe: the :class:`FinetuneRecipe`.
        n_slots: coalitions per batch (fixed; fewer are padded with inactive slots).
        lora_init: the initial adapter (one, unstacked), the same for every coalition.
        max_length: the widest sequence bucket (default: the table's width).
        buckets: the sequence widths to pad a step to (default :func:`~shed_jax.lm.prompts.length_buckets` up to
            ``max_length``); each one used compiles the step once. With packing, rows are the widest bucket and
            a step's row count is padded to :func:`~shed_jax.lm.packing.row_buckets` of ``batch_size``.
        packing: override ``recipe.pack`` (None: the recipe's).
        slot_batch: slots computed together inside a step (``jax.vmap``); the step runs ``ceil(n_slots /
            slot_batch)`` such groups one after another (``lax.map``), still one dispatch. None:
            :func:`default_slot_batch` (all slots on accelerators, 1 on a CPU), all slots when they are split over
            several devices (:mod:`shed_jax.lm.slot_sharding`). Values do not depend on it.
        pack_across_slots: with packing, put the packed rows of all active slots of a step together (one batch of
            rows, each row's adapter gathered by its slot: :meth:`shared_plan`), so that a step's cost follows the
            total rows of its slots instead of ``n_slots`` x the most rows any one slot needs. Each slot's loss is
            still its own token mean over its own rows (no cross-slot term); the rows run in chunks of
            :attr:`row_chunk` rows (``slot_batch``: one row at a time on a CPU; all at once where all slots are
            vmapped, as on accelerators) with gradients accumulated. None: on when the slots are on one device (off
            when they are split over several: :mod:`shed_jax.lm.slot_sharding`). Values do not depend on it (to
            float round-off).
        slots_per_row: packed across slots, the most slots whose sequences may share one row (rows that mix
            coalitions: each token uses its own slot's adapter, ``Decoder(lora_choice=)``, and attention stays
            within its sequence). 2 (the default) leaves padding only in a step's last rows (dolly, 8 slots x 4
            sequences of at most 256 tokens: 5,441 tokens computed per step for 4,879 real, against 6,184 with 1 and
            8,192 padded, on a CPU's row buckets) for twice the LoRA FLOPs of one adapter per row (a few % of a step on SmolLM2); 1: each
            row holds one slot's sequences.

    Attributes:
        n_traces: times the step function was traced (one per sequence-width or row-count bucket used).
        lr_scale: multiplier of the learning rate, an argument of the compiled step (a retry at a lower rate
            reuses the compiled step; see :meth:`with_learning_rate`).
        last_losses: ``(steps, n_slots)`` float32 training losses of the last :meth:`train` (device array).
        skip_inactive: with one slot at a time inside a step (``slot_batch == 1``, the CPU default) and slots not
            packed together, inactive slots skip their forward and backward (``lax.cond``; see :meth:`_over_slots`).
            Read when the step is traced; False only to measure what the skip saves.
    """

    def __init__(self, graphdef, base_state, table: TokenTable, recipe: FinetuneRecipe, *, n_slots: int,
                 lora_init, max_length: int | None = None, buckets: Sequence[int] | None = None,
                 packing: bool | None = None, slot_batch: int | None = None,
                 pack_across_slots: bool | None = None, slots_per_row: int = 2):
        if n_slots < 1:
            raise ValueError(f"n_slots: must be >= 1, got {n_slots}")
        if slot_batch is not None and not (isinstance(slot_batch, int) and slot_batch >= 1):
            raise ValueError(f"slot_batch: must be an int >= 1 or None, got {slot_batch!r}")
        # over several devices (a sharded slot axis) every slot is vmapped: a lax.map over groups would walk the
        # sharded axis one group at a time
        if slot_batch is None and slot_sharding.slot_mesh(int(n_slots)) is not None:
            slot_batch = int(n_slots)
        self.slot_batch = min(int(slot_batch or default_slot_batch(n_slots)), int(n_slots))
        self.graphdef, self.base_state = graphdef, base_state
        self.recipe, self.n_slots = recipe, int(n_slots)
        self.optimizer = make_optimizer(recipe)
        self.buckets = (tuple(sorted(int(b) for b in buckets)) if buckets is not None
                        else length_buckets(max_length or table.width))
        top = self.buckets[-1]
        pad = max(top - table.width, 0)
        self._lengths_host = np.minimum(table.lengths, top)
        self.packing = bool(recipe.pack if packing is None else packing)
        self.row_buckets = row_buckets(recipe.batch_size)
        # packing across slots: one step's rows are all active slots' packed rows together (row_slot says whose)
        self.across_slots = bool(self.packing and (pack_across_slots is None or pack_across_slots)
                                 and slot_sharding.slot_mesh(self.n_slots) is None)
        if pack_across_slots and not self.packing:
            raise ValueError("pack_across_slots: needs packing (recipe.pack or packing=True)")
        if not (isinstance(slots_per_row, int) and slots_per_row >= 1):
            raise ValueError(f"slots_per_row: must be an int >= 1, got {slots_per_row!r}")
        self.slots_per_row = int(slots_per_row)
        most_rows = self.n_slots * recipe.batch_size
        # rows per chunk: all at once where every slot is vmapped (accelerators), else slot_batch rows (one row at a
        # time on a CPU: a small working set, and no rows padded to round a step up to a multiple of the chunk)
        self.row_chunk = most_rows if self.slot_batch >= self.n_slots else self.slot_batch
        self.shared_row_buckets = shared_row_buckets(most_rows, self.row_chunk)
        padded = [np.pad(a, ((0, 0), (0, pad)))[:, :top] for a in (table.ids, table.targets, table.target_weights)]
        if self.packing:  # flat tables, one padding token (weight 0) appended at index N * top
            self._pad_index = len(table) * top
            columns = np.broadcast_to(np.arange(top, dtype=np.int32), (len(table), top))
            self._data = tuple(jnp.asarray(np.concatenate([a.reshape(-1), np.zeros(1, a.dtype)]))
                               for a in (padded[0], padded[1], padded[2], columns))
        else:
            self._data = tuple(jnp.asarray(a) for a in padded) + (jnp.asarray(self._lengths_host),)
        lora_stack = stack_adapters(lora_init, self.n_slots)
        self._fresh = SlotState(lora_stack, jax.vmap(self.optimizer.init)(lora_stack))
        # slots over the devices, every process's in a multi-process run (shed_jax.lm.slot_sharding; nothing
        # changes on one device)
        self.mesh = slot_sharding.slot_mesh(self.n_slots)
        self.base_state = slot_sharding.place_replicated(self.base_state, self.mesh)
        self._data = slot_sharding.place_replicated(self._data, self.mesh)
        self._fresh = slot_sharding.place_slots(self._fresh, self.mesh)
        self._store = {"slots": jax.tree_util.tree_map(jnp.copy, self._fresh)}  # shared with with_learning_rate
        self.lr_scale = 1.0
        self._compiled_learning_rate = float(recipe.learning_rate)  # the rate the compiled steps' schedule has
        self.n_traces = 0
        self.skip_inactive = True  # one slot at a time (CPU): inactive slots skip their step (_over_slots)
        self.last_losses = None
        self._step = jax.jit(self._step_impl, static_argnames=("width",), donate_argnums=(1,))
        self._packed_step = jax.jit(self._packed_step_impl, static_argnames=("n_rows",), donate_argnums=(1,))
        self._shared_step = jax.jit(self._shared_step_impl, static_argnames=("n_rows",), donate_argnums=(1,))
        self._refill = jax.jit(_refill, donate_argnums=(0,))

    @property
    def _slots(self) -> SlotState:
        return self._store["slots"]

    @_slots.setter
    def _slots(self, value: SlotState) -> None:
        self._store["slots"] = value

    def _update(self, loss_fn, lora, opt_state, is_active, lr_scale):
        """One AdamW step of one slot on ``loss_fn(lora)``; the update is scaled by ``lr_scale`` (exactly a
        learning rate times ``lr_scale``: AdamW's update, weight decay included, is linear in the rate)."""
        loss, grads = jax.value_and_grad(loss_fn)(lora)
        new_lora, new_opt_state = self._apply(grads, lora, opt_state, is_active, lr_scale)
        return new_lora, new_opt_state, loss

    def _apply(self, grads, lora, opt_state, is_active, lr_scale):
        """The AdamW update of one slot from its gradient (inactive: unchanged)."""
        updates, new_opt_state = self.optimizer.update(grads, opt_state, lora)
        updates = jax.tree_util.tree_map(lambda u: u * lr_scale.astype(u.dtype), updates)
        new_lora = optax.apply_updates(lora, updates)

        def keep(new, old):
            return jnp.where(is_active, new, old)

        return (jax.tree_util.tree_map(keep, new_lora, lora),
                jax.tree_util.tree_map(keep, new_opt_state, opt_state))

    def _step_impl(self, base_state, slots: SlotState, data, rows, active, lr_scale, *, width: int):
        self.n_traces += 1  # trace-time only
        graphdef, recipe = self.graphdef, self.recipe
        ids_all, targets_all, weights_all, lengths_all = data

        def one_slot(state, lora, opt_state, slot_rows, is_active):
            ids, targets = ids_all[slot_rows, :width], targets_all[slot_rows, :width]
            weights, lengths = weights_all[slot_rows, :width], lengths_all[slot_rows]

            def loss_fn(lora):
                return sequence_loss(lora, graphdef, state, ids, lengths, targets, weights,
                                     lora_scale=recipe.lora_scale, logits_chunk=recipe.logits_chunk,
                                     remat=recipe.remat)

            return self._update(loss_fn, lora, opt_state, is_active, lr_scale)

        lora, opt_state, losses = self._over_slots(lambda xs: one_slot(base_state, *xs),
                                                   (slots.lora, slots.opt_state, rows, active), skip=True)
        return SlotState(lora, opt_state), losses

    def _packed_step_impl(self, base_state, slots: SlotState, data, source, segment, active, lr_scale, *,
                          n_rows: int):
        self.n_traces += 1  # trace-time only
        graphdef, recipe = self.graphdef, self.recipe
        ids_flat, targets_flat, weights_flat, columns_flat = data

        def one_slot(state, lora, opt_state, slot_source, slot_segment, is_active):
            ids, targets = ids_flat[slot_source], targets_flat[slot_source]              # (n_rows, T)
            weights, positions = weights_flat[slot_source], columns_flat[slot_source]

            def loss_fn(lora):
                return sequence_loss(lora, graphdef, state, ids, None, targets, weights,
                                     lora_scale=recipe.lora_scale, logits_chunk=recipe.logits_chunk,
                                     remat=recipe.remat, positions=positions, segment_ids=slot_segment)

            return self._update(loss_fn, lora, opt_state, is_active, lr_scale)

        lora, opt_state, losses = self._over_slots(lambda xs: one_slot(base_state, *xs),
                                                   (slots.lora, slots.opt_state, source, segment, active), skip=True)
        return SlotState(lora, opt_state), losses

    def _shared_step_impl(self, base_state, slots: SlotState, data, source, segment, row_slot, choice, active,
                          lr_scale, *, n_rows: int):
        """One step of every slot on packed rows shared by all slots: ``source``/``segment`` ``(n_rows, T)``,
        ``row_slot`` ``(n_rows, K)`` the slots whose sequences each row holds and ``choice`` ``(n_rows, T)`` which of
        them each token belongs to (:class:`SharedStep`; padding: segment 0, weight 0). Each slot's loss is its own
        token mean (its weighted log-probabilities over its tokens, divided by its own weight total); attention is
        block-diagonal by sequence and each token uses its own slot's adapter, so the gradient of the sum over slots
        is, per slot, exactly its separate fine-tune's gradient. Rows run in chunks of ``row_chunk`` (a scan
        accumulating gradients; one chunk on accelerators)."""
        self.n_traces += 1  # trace-time only
        graphdef, recipe, n_slots = self.graphdef, self.recipe, self.n_slots
        ids_flat, targets_flat, weights_flat, columns_flat = data
        token_slot = jnp.take_along_axis(row_slot, choice, axis=1)                                 # (n_rows, T)
        totals = jax.ops.segment_sum(weights_flat[source].reshape(-1), token_slot.reshape(-1), num_segments=n_slots)
        inverse = 1.0 / jnp.maximum(totals, 1.0)                                                     # (S,)
        by_layer = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), slots.lora)  # (L, S, ...) for the scan
        mixed = row_slot.shape[1] > 1

        def chunk_loss(lora_by_layer, chunk_source, chunk_segment, chunk_slot, chunk_choice):
            model = nnx.merge(graphdef, base_state)
            ids, targets = ids_flat[chunk_source], targets_flat[chunk_source]
            weights, positions = weights_flat[chunk_source], columns_flat[chunk_source]
            hidden = model(ids, positions=positions, segment_ids=chunk_segment, lora=lora_by_layer,
                           lora_index=chunk_slot if mixed else chunk_slot[:, 0],
                           lora_choice=chunk_choice if mixed else None,
                           lora_scale=recipe.lora_scale, remat=recipe.remat)
            chunk_token_slot = jnp.take_along_axis(chunk_slot, chunk_choice, axis=1)
            sums = target_logprob_sums(model, hidden, targets, weights, logits_chunk=recipe.logits_chunk,
                                       groups=chunk_token_slot, n_groups=n_slots)
            per_slot = -sums * inverse                                                                 # (S,)
            return jnp.sum(per_slot), per_slot

        grad_fn = jax.value_and_grad(chunk_loss, has_aux=True)
        n_chunks = n_rows // self.row_chunk if n_rows > self.row_chunk else 1
        if n_chunks == 1:
            (_, losses), grads = grad_fn(by_layer, source, segment, row_slot, choice)
        else:
            def body(carry, xs):
                (_, part), g = grad_fn(by_layer, *xs)
                return jax.tree_util.tree_map(jnp.add, carry, (g, part)), None

            zero = (jax.tree_util.tree_map(jnp.zeros_like, by_layer), jnp.zeros(n_slots, jnp.float32))
            chunks = tuple(a.reshape((n_chunks, self.row_chunk) + a.shape[1:])
                           for a in (source, segment, row_slot, choice))
            (grads, losses), _ = jax.lax.scan(body, zero, chunks)
        grads = jax.tree_util.tree_map(lambda g: jnp.swapaxes(g, 0, 1), grads)                    # (S, L, ...)
        lora, opt_state = jax.vmap(lambda g, l, o, a: self._apply(g, l, o, a, lr_scale))(
            grads, slots.lora, slots.opt_state, active)
        return SlotState(lora, opt_state), losses

    def shared_plan(self, rows: np.ndarray, active: np.ndarray) -> list["SharedStep"]:
        """Per step, the :class:`SharedStep` of the active slots' minibatches ``rows`` ``(n_slots, steps,
        batch_size)`` packed together: first-fit decreasing over all their sequences, a row holding sequences of at
        most :attr:`slots_per_row` slots (:func:`~shed_jax.lm.packing.first_fit_mixed`), so that only the step's
        last rows are partly padding. ``n_rows`` is the :attr:`shared_row_buckets` entry that holds the step's rows
        (padding rows: slot 0, segment 0, weight 0). A step's cost follows the total tokens of its slots."""
        n_slots, steps, batch = rows.shape
        top, k = self.buckets[-1], self.slots_per_row
        items = np.ascontiguousarray(rows.transpose(1, 0, 2)).reshape(steps, n_slots * batch)      # slot-major
        lengths = self._lengths_host[items] * np.repeat(np.asarray(active, bool), batch)[None, :]
        kinds = np.broadcast_to(np.repeat(np.arange(n_slots, dtype=np.int64), batch), lengths.shape)
        placement, row_kinds = first_fit_mixed(lengths, kinds, top, k)
        n_items = n_slots * batch
        source, segment = packed_layout(items, lengths, placement, n_rows=n_items, width=top, table_width=top,
                                        pad_index=self._pad_index)
        # each item's index among its row's slots, then each position's (a loop over the items of a step)
        item_choice = np.argmax(row_kinds[np.arange(steps)[:, None], placement.row] == kinds[:, :, None], axis=2)
        choice = np.zeros((steps, n_items, top), np.int32)
        column = np.arange(top)[None, :]
        for item in range(n_items):
            inside = (column >= placement.offset[:, item][:, None]) & (
                column < (placement.offset[:, item] + lengths[:, item])[:, None])
            at = (np.arange(steps), placement.row[:, item])
            choice[at] = np.where(inside, item_choice[:, item][:, None], choice[at])
        row_slot = np.maximum(row_kinds, 0)
        plan = []
        for step in range(steps):
            count = int(placement.n_rows[step])
            n_rows = bucket_for(max(count, 1), self.shared_row_buckets)
            step_slot = np.zeros((n_rows, k), np.int32)
            step_slot[:count] = row_slot[step, :count]
            step_source = np.full((n_rows, top), self._pad_index, np.int32)
            step_segment = np.zeros((n_rows, top), np.int32)
            step_choice = np.zeros((n_rows, top), np.int32)
            step_source[:count], step_segment[:count] = source[step, :count], segment[step, :count]
            step_choice[:count] = choice[step, :count]
            plan.append(SharedStep(step_source, step_segment, step_slot, step_choice))
        return plan

    def _over_slots(self, one_slot, per_slot, *, skip: bool = False):
        """``one_slot`` over the leading slot axis of ``per_slot``: ``jax.vmap`` of all slots at once, or, with
        ``slot_batch < n_slots``, ``lax.map`` over groups of ``slot_batch`` vmapped slots (one dispatch either
        way; a smaller working set per group).

        ``skip``: ``per_slot`` is ``(lora, opt_state, ..., is_active)`` and ``one_slot`` returns ``(lora, opt_state,
        loss)``. With one slot at a time (``slot_batch == 1``, the CPU default) an inactive slot (an empty coalition,
        or a slot past the round's coalitions) then skips its forward and backward (``lax.cond``): it keeps its
        state and its loss is 0, as when it computes (its update is discarded) but without the cost, so a round of
        one coalition on 8 slots costs one fine-tune, not 8 (``bench/lm_empty_slots_bench.py``). Under ``vmap`` a
        ``cond`` would run both branches, so vmapped groups still compute every slot."""
        if self.slot_batch >= self.n_slots:
            return jax.vmap(one_slot)(per_slot)
        if skip and self.slot_batch == 1 and self.skip_inactive:
            def idle(xs):
                loss = jax.eval_shape(one_slot, xs)[2]
                return xs[0], xs[1], jnp.zeros(loss.shape, loss.dtype)

            return jax.lax.map(lambda xs: jax.lax.cond(xs[-1], one_slot, idle, xs), per_slot)
        return jax.lax.map(one_slot, per_slot, batch_size=self.slot_batch)

    def packed_plan(self, rows: np.ndarray, active: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per step, ``(source, segment)`` ``(n_slots, n_rows, T)`` int32 of the packed minibatches ``rows``
        ``(n_slots, steps, batch_size)``; ``n_rows`` is the row bucket of the most rows an active slot needs at
        that step (inactive slots pack too; their rows are cut, which is harmless: they do not update)."""
        n_slots, steps, batch = rows.shape
        top = self.buckets[-1]
        lengths = self._lengths_host[rows].reshape(n_slots * steps, batch)
        placement = first_fit_decreasing(lengths, top)
        need = placement.n_rows.reshape(n_slots, steps)
        need = np.where(active[:, None], need, 1).max(axis=0)                                     # (steps,)
        source, segment = packed_layout(rows.reshape(n_slots * steps, batch), lengths, placement, n_rows=batch,
                                        width=top, table_width=top, pad_index=self._pad_index)
        source = source.reshape(n_slots, steps, batch, top)
        segment = segment.reshape(n_slots, steps, batch, top)
        plan = []
        for step in range(steps):
            n_rows = bucket_for(int(need[step]), self.row_buckets)
            plan.append((source[:, step, :n_rows], segment[:, step, :n_rows]))
        return plan

    def schedules(self, member_lists: Sequence[np.ndarray], seed: int) -> np.ndarray:
        """``(n_slots, steps, batch_size)`` int32 rows: each coalition's minibatches; empty coalitions and padding
        slots get row 0 (they are inactive)."""
        recipe = self.recipe
        rows = np.zeros((self.n_slots, recipe.steps, recipe.batch_size), np.int32)
        for slot, members in enumerate(member_lists):  # host: one small permutation draw per coalition
            if len(members) == 0:
                continue
            rows[slot] = minibatch_schedule(members, steps=recipe.steps, batch_size=recipe.batch_size,
                                            rng=coalition_rng(members, seed))
        return rows

    def train(self, member_lists: Sequence[np.ndarray], seed: int, *, on_step=None) -> SlotState:
        """Fine-tune ``len(member_lists) <= n_slots`` coalitions (player indices) from the initial adapter.

        Returns the stacked state after ``recipe.steps`` steps: slot ``i`` holds coalition ``i``; an empty
        coalition (no members: the untuned model) and the slots past ``len(member_lists)`` hold the initial
        adapter. The returned arrays stay owned by the trainer until the next call (they are donated and refilled
        in place then). ``on_step(1)`` is called after each step is under way (for a progress bar).
        """
        if not 1 <= len(member_lists) <= self.n_slots:
            raise ValueError(f"member_lists: need 1..{self.n_slots} coalitions, got {len(member_lists)}")
        rows = self.schedules(member_lists, seed)
        active = np.zeros(self.n_slots, bool)
        active[: len(member_lists)] = [len(m) > 0 for m in member_lists]
        slots = self._refill(self._slots, self._fresh, jnp.ones(self.n_slots, bool))
        active_device = slot_sharding.place_slots(active, self.mesh)
        lr_scale = jnp.float32(self.lr_scale)
        losses = []
        def after_step(slots, loss):
            losses.append(loss)
            self._slots = slots  # the previous state was donated: keep the live one if a Ctrl-C stops here
            _after_step(losses)
            if on_step is not None:
                on_step(1)

        if not active.any():
            pass
        elif self.across_slots:
            for step in self.shared_plan(rows, active):  # one dispatch per step; no host sync
                slots, loss = self._shared_step(self.base_state, slots, self._data, *step, active_device, lr_scale,
                                                n_rows=step.source.shape[0])
                after_step(slots, loss)
        elif self.packing:
            for source, segment in self.packed_plan(rows, active):  # one dispatch per step; no host sync
                source, segment = slot_sharding.place_slots((source, segment), self.mesh)
                slots, loss = self._packed_step(self.base_state, slots, self._data, source, segment, active_device,
                                                lr_scale, n_rows=source.shape[1])
                after_step(slots, loss)
        else:
            longest = self._lengths_host[rows[active]].max(axis=(0, 2))               # (steps,)
            for step, longest_row in enumerate(longest):  # one dispatch per step for all slots; no host sync
                slots, loss = self._step(self.base_state, slots, self._data,
                                         slot_sharding.place_slots(rows[:, step], self.mesh), active_device,
                                         lr_scale, width=bucket_for(int(longest_row), self.buckets))
                after_step(slots, loss)
        self._slots = slots
        self.last_losses = jnp.stack(losses) if losses else None
        return slots

    def diverged(self, slots: SlotState) -> np.ndarray:
        """``(n_slots,)`` bool: the slots whose last :meth:`train` had a non-finite loss at some step or ended with
        a non-finite adapter entry (a diverged fine-tune). One host sync; call before the next :meth:`train`."""
        losses = self.last_losses if self.last_losses is not None else jnp.zeros((0, self.n_slots), jnp.float32)
        return slot_sharding.to_host(_non_finite_slots(slots.lora, losses))  # every process's slots

    def with_learning_rate(self, learning_rate: float) -> "SlotTrainer":
        """A trainer with the same base weights, data, initial adapter and compiled steps whose updates follow
        ``learning_rate`` instead of the recipe's (for retrying diverged fine-tunes): the rate enters the compiled
        step as the scale :attr:`lr_scale`, so nothing recompiles. The two trainers share their slot storage:
        a :meth:`train` of either reuses (donates) the state the other returned last."""
        other = copy.copy(self)
        other.lr_scale = float(learning_rate) / self._compiled_learning_rate
        other.recipe = dataclasses.replace(self.recipe, learning_rate=float(learning_rate))
        other.last_losses = None
        return other

    def compiled_step(self, *, width: int | None = None, n_rows: int | None = None):
        """The compiled step (``jax.stages.Compiled``) at sequence ``width`` (padded trainer; default the widest
        bucket) or at ``n_rows`` packed rows (packing; default ``batch_size``), e.g. for its
        ``memory_analysis()``; compiling it also fills the jit cache when the shapes match a later call."""
        lr_scale = jnp.float32(1.0)
        active = jnp.ones(self.n_slots, bool)
        if self.across_slots:
            n_rows = self.shared_row_buckets[-1] if n_rows is None else int(n_rows)
            shape = jax.ShapeDtypeStruct((n_rows, self.buckets[-1]), jnp.int32)
            slot_shape = jax.ShapeDtypeStruct((n_rows, self.slots_per_row), jnp.int32)
            return self._shared_step.lower(self.base_state, self._fresh, self._data, shape, shape, slot_shape, shape,
                                           active, lr_scale, n_rows=n_rows).compile()
        if self.packing:
            n_rows = self.recipe.batch_size if n_rows is None else int(n_rows)
            shape = jax.ShapeDtypeStruct((self.n_slots, n_rows, self.buckets[-1]), jnp.int32)
            return self._packed_step.lower(self.base_state, self._fresh, self._data, shape, shape, active,
                                           lr_scale, n_rows=n_rows).compile()
        width = self.buckets[-1] if width is None else width
        rows = jnp.zeros((self.n_slots, self.recipe.batch_size), jnp.int32)
        return self._step.lower(self.base_state, self._fresh, self._data, rows, active, lr_scale,
                                width=width).compile()

    def compiled_memory(self, width: int | None = None, n_rows: int | None = None) -> dict[str, int]:
        """XLA's memory analysis of the step (see :meth:`compiled_step`): bytes of arguments, outputs,
        temporaries, aliased buffers and generated code, as reported by the compiled executable."""
        analysis = self.compiled_step(width=width, n_rows=n_rows).memory_analysis()
        names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "alias_size_in_bytes", "generated_code_size_in_bytes")
        return {name: int(getattr(analysis, name, 0) or 0) for name in names}


def recipe_for_memory(graphdef, base_state, table: TokenTable, recipe: FinetuneRecipe, *, n_slots: int, lora_init,
                      budget_bytes: int, ladder=None, key=None,
                      **trainer_options) -> tuple[FinetuneRecipe, dict | None]:
    """``recipe`` with the remat policy and loss-head chunk chosen by the compiled memory of the real step at
    ``n_slots`` slots: the least recomputation and widest logits chunk whose step fits ``budget_bytes`` according to
    ``compiled.memory_analysis()`` (:func:`shed_jax.lm._slots.recompute_from_compiler`; ``ladder`` default
    :data:`~shed_jax.lm._slots.RECOMPUTE_LADDER`; ``key``: remember the choice for this process). Values do not
    depend on the choice (to float round-off); only time and memory do. Returns ``(recipe, choice)``; ``choice`` is
    None (and ``recipe`` unchanged) where the backend gives no memory analysis. ``trainer_options``: further
    :class:`SlotTrainer` arguments (``max_length``, ``buckets``, ``slot_batch``, ...)."""
    from shed_jax.lm._slots import RECOMPUTE_LADDER, recompute_from_compiler

    def make_trainer(remat, chunk):
        trial = dataclasses.replace(recipe, remat=remat, logits_chunk=int(chunk))
        return SlotTrainer(graphdef, base_state, table, trial, n_slots=n_slots, lora_init=lora_init,
                           **trainer_options)

    choice = recompute_from_compiler(make_trainer, int(budget_bytes),
                                     ladder=RECOMPUTE_LADDER if ladder is None else tuple(ladder), key=key)
    if choice is None:
        return recipe, None
    return dataclasses.replace(recipe, remat=choice["remat"], logits_chunk=choice["logits_chunk"]), choice


def shared_row_buckets(max_rows: int, chunk: int) -> tuple[int, ...]:
    """Row counts of a step packed across slots: a ladder at most 1/8 apart (1..8, then 9, 10, .. 16, 18, .. 32,
    36, ..), each rounded up to a multiple of ``chunk`` when ``chunk < max_rows`` (the rows then run in chunks),
    the last ``max_rows`` (rounded likewise). The total rows of many slots vary little from step to step, so few of
    them are used (each compiles once).

    >>> shared_row_buckets(32, 32)
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 26, 28, 30, 32)
    >>> shared_row_buckets(32, 4)
    (4, 8, 12, 16, 20, 24, 28, 32)
    """
    ladder, size = [], 1
    while size < max_rows:
        ladder.append(size)
        size += max(1, 2 ** int(math.floor(math.log2(size))) // 8)
    ladder.append(int(max_rows))
    if chunk >= max_rows:
        return tuple(ladder)
    return tuple(sorted({-(-b // chunk) * chunk for b in ladder}))


def default_slot_batch(n_slots: int, backend: str | None = None) -> int:
    """Slots vmapped together in a step: all of them on GPUs and TPUs (wider matmuls use the device), 1 on a CPU.

    On a CPU a vmapped group of slots brings no matmul efficiency (a step of one slot already has ``batch_size x
    max_length`` rows per matmul) but multiplies the working set: on the 2-core development CPU (4 MiB L2 per core)
    one 8-slot vmapped step of the tiny Llama took 1.6x the time of 8 one-slot steps of the same shapes, so there
    the slots run one after another inside the step (one dispatch, the loop's working set).

    >>> default_slot_batch(32, "gpu"), default_slot_batch(32, "cpu")
    (32, 1)
    """
    backend = jax.default_backend() if backend is None else backend
    return 1 if backend == "cpu" else int(n_slots)


def _after_step(losses: list) -> None:
    """Keep at most two steps queued (wait for the step before last; the device stays busy) and stop between
    steps on Ctrl-C (:func:`shed_jax.interrupt.check`: the step in flight finishes first), not after the whole
    queue of a fine-tune."""
    if len(losses) >= 2:
        losses[-2].block_until_ready()
    fault_point("lm_step")  # testing hook (shed_jax._faults)
    if interrupt.requested():
        losses[-1].block_until_ready()
        interrupt.check()


@jax.jit
def _non_finite_slots(lora, losses) -> jax.Array:
    """``(S,)`` bool: any non-finite loss ``(steps, S)`` or adapter entry (leaves ``(S, ...)``) per slot."""
    bad = jnp.any(~jnp.isfinite(losses), axis=0)
    for leaf in jax.tree_util.tree_leaves(lora):
        bad = bad | jnp.any(~jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
    return bad


def _refill(slots: SlotState, fresh: SlotState, reset: jax.Array) -> SlotState:
    """Slots where ``reset`` (S,) is True get the fresh state; the others keep theirs (in place)."""
    def pick(current, initial):
        flags = reset.reshape((-1,) + (1,) * (current.ndim - 1))
        return jnp.where(flags, initial, current)

    return jax.tree_util.tree_map(pick, slots, fresh)
